"""``nla evaluate``'s paraphrase robustness with a real rewriter: the transform check's chat-model path
end to end against an OpenAI-compatible server on the loopback (where a local vLLM or llama.cpp
server would be), answering the paraphrase and translation prompts with deterministic rewrites; and
the claims check's recurrence beside its control, end to end."""

from __future__ import annotations

import json
import re

import pytest

from nla.commands.cli import main
from nla.evaluation.transforms import PARAPHRASE, TRANSLATE
from tests.fixtures.loopback import answer_body
from tests.fixtures.pairs import build_pair, export

TEXTS = ["The sailor counts the waves before the storm arrives at night.",
         "Rivers bend around old stones, and the miller listens to the wheel."]
_TAGGED = re.compile(r"<text>\n(.*?)\n</text>", re.DOTALL)
KEY = "NLA_TEST_REWRITER_KEY"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory, warm_model_dir):
    # The warm llama answers in explanation tags, so most rows have an explanation to rewrite.
    root = tmp_path_factory.mktemp("rewriter") / "pair"
    export(root, build_pair(warm_model_dir))
    return root


REFUSED = 3
"""The first requests, all paraphrases (paraphrase runs before back-translation), answered without tags."""


def rewrite(number: int, prompt: str) -> str:
    """The server's answer: a paraphrase adds a clause; a translation into French is marked, and the one
    back into English gives the original word for word, as a faithful round trip can."""
    text = _TAGGED.search(prompt).group(1)
    if number < REFUSED:
        return "I would rather not rewrite this."
    if prompt.startswith("Rewrite the text below"):
        return f"<text>In other words, {text}</text>"
    if "into French" in prompt:
        return f"<text>[fr] {text}</text>"
    return f"<text>{text.removeprefix('[fr] ')}</text>"


def test_paraphrase_and_back_translation_through_an_openai_compatible_server(pair_dir, tmp_path, capsys, fake_api,
                                                                            monkeypatch):
    monkeypatch.setenv(KEY, "sk-loopback")

    def respond(number, call):
        return 200, {}, answer_body(call.path, rewrite(number, call.body["messages"][0]["content"]))

    fake_api.respond = respond
    main(["evaluate", "--pair", str(pair_dir), "--out", str(tmp_path / "r"), "--texts", json.dumps(TEXTS),
          "--positions", "[-6, -5, -4, -3, -2, -1]", "--checks", '["transforms"]', "--max_new_tokens", "12",
          "--resamples", "50", "--transforms", '["paraphrase", "back_translation"]',
          "--rewriter.provider", "openai", "--rewriter.model", "local-rewriter",
          "--rewriter.base_url", f"{fake_api.base_url}/v1", "--rewriter.api_key_env", KEY])
    capsys.readouterr()
    report = json.loads((tmp_path / "r" / "report.json").read_text())

    prompts = [call.body["messages"][0]["content"] for call in fake_api.calls]
    explanations = [_TAGGED.search(p).group(1) for p in prompts if p.startswith("Rewrite the text below")]
    valid = len(explanations)  # one paraphrase request per row with a valid answer
    assert valid > REFUSED
    # Every call: the chat completions path under /v1, the configured model, the key from the environment.
    assert {call.path for call in fake_api.calls} == {"/v1/chat/completions"}
    assert {call.body["model"] for call in fake_api.calls} == {"local-rewriter"}
    assert {call.headers["authorization"] for call in fake_api.calls} == {"Bearer sk-loopback"}
    # The server saw the PARAPHRASE and TRANSLATE prompts: each explanation paraphrased once, translated
    # into French once, and its French translation back into English once.
    assert sorted(prompts) == sorted([PARAPHRASE.format(text=t) for t in explanations]
                                     + [TRANSLATE.format(text=t, language="French") for t in explanations]
                                     + [TRANSLATE.format(text=f"[fr] {t}", language="English")
                                        for t in explanations])

    paraphrase, back = report["transforms"]["paraphrase"], report["transforms"]["back_translation"]
    assert (paraphrase["kind"], back["kind"]) == ("meaning-preserving", "meaning-preserving")
    # Paraphrases not returned are left out; back-translations identical to the original are too, and
    # with every one of them identical there is nothing to compare.
    assert (paraphrase["rows"], paraphrase["unchanged"], paraphrase["failed"]) == (valid - REFUSED, 0, REFUSED)
    assert back == {"kind": "meaning-preserving", "rows": 0, "unchanged": valid, "failed": 0}
    fve, before = paraphrase["fve"]["value"], paraphrase["untransformed_fve"]["value"]
    assert paraphrase["difference"]["value"] == pytest.approx(fve - before, abs=1e-9)
    if before > 0:
        assert paraphrase["fve_kept"]["value"] == pytest.approx(fve / before)
    else:
        assert paraphrase["fve_kept"]["value"] is None  # no FVE to keep: undefined
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert f"| paraphrase | meaning-preserving | {valid - REFUSED} | 0 | {REFUSED} |" in markdown
    assert f"| back_translation | meaning-preserving | 0 | {valid} | 0 | - | - | - |" in markdown


def test_claims_recurrence_beside_its_control_and_the_diversity(pair_dir, tmp_path, capsys):
    main(["evaluate", "--pair", str(pair_dir), "--out", str(tmp_path / "r"), "--texts", json.dumps(TEXTS),
          "--positions", "[-6, -5, -4, -3, -2, -1]", "--checks", '["claims"]', "--max_new_tokens", "12",
          "--resamples", "50"])
    capsys.readouterr()
    claims = json.loads((tmp_path / "r" / "report.json").read_text())["claims"]
    recurrence, spread = claims["recurrence"], claims["diversity"]
    assert recurrence["claims"] == claims["with_neighbours"] > 0
    assert recurrence["excess"]["value"] == pytest.approx(recurrence["mean"]["value"] - recurrence["control"]["value"])
    assert len(claims["examples"]) == claims["claims"]  # every claim listed, so the means can be checked
    examples = [e for e in claims["examples"] if e["recurrence"] is not None]
    assert recurrence["control"]["value"] == pytest.approx(sum(e["control"] for e in examples) / len(examples))
    assert 0 <= spread["cross_document_overlap"]["value"] <= 1
    assert spread["widest_claim"]["claim"] in {e["claim"] for e in claims["examples"]}
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "| control: positions of other documents |" in markdown and "the most widespread claim" in markdown
    assert (tmp_path / "r" / "claims.svg").is_file()
