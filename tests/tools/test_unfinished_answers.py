"""tools/bench/unfinished_answers.py: what counts as a loop."""

from __future__ import annotations

import importlib.util
from tests.fixtures.paths import ROOT

BENCH = ROOT / "tools" / "bench"


def test_a_loop_is_a_three_word_sequence_repeated(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("unfinished_answers", BENCH / "unfinished_answers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    looping = "Ends with: the Lord, the Lord, the Lord; the Lord, the Lord"
    assert module.loops(looping, repeats=4)
    assert not module.loops(looping, repeats=5)
    assert not module.loops("About see, covenant; expository prose. Ends with: the eyes of the", repeats=2)
