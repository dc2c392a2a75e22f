"""tools/bench/grpo_robustness.py: what a kept run leaves behind."""

from __future__ import annotations

import importlib.util
from tests.fixtures.paths import ROOT

SCRIPT = ROOT / "tools" / "bench" / "grpo_robustness.py"


def load_script():
    spec = importlib.util.spec_from_file_location("grpo_robustness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_kept_grpo_run_holds_its_exports_and_curves_but_no_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    robustness = load_script()
    files = {robustness.GRPO_EXPORT / "av" / "model.safetensors": "weights",
             robustness.GRPO_BEST / "av" / "model.safetensors": "best weights",
             robustness.GRPO_LOGS / "events.out.tfevents.1": "curves",
             robustness.GRPO_LOGS / "checkpoints" / "last.ckpt": "state"}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    stale = tmp_path / "keep" / "grpo-L-logs" / "events.out.tfevents.0"
    stale.parent.mkdir(parents=True)
    stale.write_text("an earlier run's")

    robustness.keep_grpo_run(tmp_path / "keep", "L")

    assert (tmp_path / "keep" / "grpo-L" / "av" / "model.safetensors").read_text() == "weights"
    assert (tmp_path / "keep" / "grpo-L-best" / "av" / "model.safetensors").read_text() == "best weights"
    assert (tmp_path / "keep" / "grpo-L-logs" / "events.out.tfevents.1").read_text() == "curves"
    assert not (tmp_path / "keep" / "grpo-L-logs" / "checkpoints").exists()
    assert not stale.exists()
