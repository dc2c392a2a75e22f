"""``nla evaluate`` end to end on a tiny exported pair: texts or a cache, every check, the report files,
and a rewriter and a judge behind a loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree

import pytest

from nla.commands.cli import main
from nla.data.cache_writer import build_cache
from nla.data.splits import SplitArgs
from tests.fixtures.corpus import cache_args, write_corpus
from tests.fixtures.loopback import answer_body
from tests.fixtures.pairs import LAYER, TRAINING, build_pair, export, write_released_pair
from tests.fixtures.tensorboard import scalars

TEXTS = ["The sailor counts the waves before the storm arrives at night.",
         "Rivers bend around old stones, and the miller listens to the wheel."]
_TAGGED = re.compile(r"<text>\n(.*?)\n</text>", re.DOTALL)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setting(tmp_path_factory, warm_model_dir):
    root = tmp_path_factory.mktemp("evaluate")
    # Taught to answer "<explanation>W W</explanation>", so most explanations parse.
    source = warm_model_dir
    out = export(root / "pair", build_pair(source))
    write_corpus(root, documents=16)
    model, corpus, cache = cache_args(root, source, layer=LAYER)
    build_cache(model, corpus, cache, SplitArgs(av_sft=0.3, ar_sft=0.3, rl=0.2, heldout=0.2))
    return {"pair": str(root / "pair"), "av": str(out["av"]), "ar": str(out["ar"]), "cache": cache.directory,
            "root": root, "source": source}


def evaluate(setting, out, *extra):
    main(["evaluate", "--pair", setting["pair"], "--out", str(out), "--max_new_tokens", "12", "--resamples", "50",
          *extra])


def test_texts_every_check_and_the_report_files(setting, tmp_path, capsys):
    evaluate(setting, tmp_path / "report", "--texts", json.dumps(TEXTS), "--positions", "[-6, -5, -4, -3, -2, -1]")
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["data"]["rows"] == 12 and report["data"]["documents"] == 2
    assert report["settings"]["max_new_tokens"] == 12 and report["settings"]["decoding"] == "greedy"
    assert report["round_trip"]["valid_rate"] > 0.5
    trip = report["round_trip"]
    pair = trip["fve"]["pair (round trip)"]
    assert pair["low"] <= pair["value"] <= pair["high"]
    assert "mean predictor (training split's mean)" not in trip["fve"]  # texts have no training split
    # The detail curve ends where the round trip is: the whole explanation.
    for unit in ("tokens", "sentences"):
        points = report["detail"][unit]
        assert [p["n"] for p in points] == sorted(p["n"] for p in points)
        assert points[-1]["fve"]["value"] == pytest.approx(pair["value"], abs=1e-5)
    assert set(report["transforms"]) == {"reorder_sentences", "reorder_lines", "shuffle_words", "first_sentence",
                                         "replace_content_words"}
    for name, result in report["transforms"].items():
        if result["rows"]:
            difference = result["difference"]["value"]
            assert difference == pytest.approx(result["fve"]["value"] - result["untransformed_fve"]["value"], abs=1e-9)
    splice = report["splice"]
    assert splice["rows"] == 10 and splice["skipped"] == 2  # the last token of each text has no next token
    assert splice["variants"]["clean"]["kl"]["value"] == 0.0
    # Rows without an answer that the splice reads: all of the round trip's but those it skipped.
    invalid = round((1 - trip["valid_rate"]) * 12)
    assert invalid - splice["skipped"] <= splice["without_answer"] <= invalid
    for name in ("nla", "shuffled"):
        assert {"loss_recovered", "kl_recovered"} <= set(splice["variants"][name])
    paired = splice["differences"]["nla - shuffled"]["kl_recovered"]["value"]
    assert paired == pytest.approx(splice["variants"]["nla"]["kl_recovered"]["value"]
                                   - splice["variants"]["shuffled"]["kl_recovered"]["value"], abs=1e-9)
    assert set(splice["valid_only"]) == {"loss_recovered", "kl_recovered"}
    claims = report["claims"]
    assert claims["window"] == 5 and claims["judged"] is False
    files = {path.name for path in (tmp_path / "report").iterdir()}
    assert {"report.json", "report.md", "round_trip.svg", "detail_tokens.svg", "detail_sentences.svg",
            "splice.svg", "tensorboard"} <= files
    for svg in (tmp_path / "report").glob("*.svg"):
        assert ElementTree.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    tags = scalars(tmp_path / "report" / "tensorboard")
    assert tags["evaluate/round_trip/fve/pair (round trip)"] == [(0, pytest.approx(pair["value"], abs=1e-6))]
    assert [step for step, _ in tags["evaluate/detail/tokens_fve"]] == [p["n"] for p in report["detail"]["tokens"]]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Round trip (AV -> AR)" in markdown and "## Causal splice (loss and KL recovered)" in markdown
    assert markdown.strip() in printed


def test_a_frozen_reconstructor_reads_the_same_explanations(setting, tmp_path, capsys):
    # The pair's own AR as the "frozen" one scores exactly as the co-trained one; another AR does not.
    evaluate(setting, tmp_path / "same", "--cache", setting["cache"], "--rows", "9", "--checks", '["round_trip"]',
             "--reconstructor", setting["ar"])
    other = export(tmp_path / "other", build_pair(setting["source"], seed=7))
    evaluate(setting, tmp_path / "other-report", "--cache", setting["cache"], "--rows", "9", "--checks",
             '["round_trip"]', "--reconstructor", str(other["ar"]))
    capsys.readouterr()
    same = json.loads((tmp_path / "same" / "report.json").read_text())["round_trip"]
    frozen = same["fve"]["AV's explanations, frozen reconstructor"]
    assert frozen["value"] == pytest.approx(same["fve"]["pair (round trip)"]["value"], abs=1e-12)
    assert same["differences"]["co-trained - frozen reconstructor"]["value"] == pytest.approx(0, abs=1e-12)
    trip = json.loads((tmp_path / "other-report" / "report.json").read_text())["round_trip"]
    gap = trip["differences"]["co-trained - frozen reconstructor"]["value"]
    assert gap == pytest.approx(trip["fve"]["pair (round trip)"]["value"]
                                - trip["fve"]["AV's explanations, frozen reconstructor"]["value"], abs=1e-9)
    assert abs(gap) > 1e-6


def test_cache_rows_have_the_mean_predictor_and_a_rerun_replaces_the_scalars(setting, tmp_path, capsys):
    for _ in range(2):
        evaluate(setting, tmp_path / "report", "--cache", setting["cache"], "--rows", "9",
                 "--checks", '["round_trip", "splice"]')
    capsys.readouterr()
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["data"]["rows"] == 9 and report["data"]["source"]["split"] == "test"
    assert set(report["round_trip"]["fve"]) == {"pair (round trip)", "mean predictor (training split's mean)",
                                                "shuffled (pair's reconstructions, vectors deranged)"}
    assert "pair - mean predictor" in report["round_trip"]["differences"]
    assert "transforms" not in report and "detail" not in report and "claims" not in report
    assert report["splice"]["rows"] > 0 and report["splice"]["ablation"] == "the training split's mean direction"
    assert len(list((tmp_path / "report" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_rewriter_and_judge_through_an_openai_compatible_server(setting, tmp_path, capsys, fake_api):
    def respond(number, call):
        prompt = call.body["messages"][0]["content"]
        if prompt.startswith("Below is the beginning of a text"):
            return 200, {}, answer_body(call.path, "YES" if "sailor" in prompt.split("<claim>")[0] else "NO")
        # Paraphrase and translation both give the text back unchanged: no row is compared, all are counted.
        return 200, {}, answer_body(call.path, f"<text>{_TAGGED.search(prompt).group(1)}</text>")

    fake_api.respond = respond
    server = ["--rewriter.provider", "openai", "--rewriter.model", "m", "--rewriter.base_url", fake_api.base_url,
              "--judge.provider", "openai", "--judge.model", "j", "--judge.base_url", fake_api.base_url,
              "--judge.temperature", "0"]
    evaluate(setting, tmp_path / "r", "--texts", json.dumps(TEXTS), "--positions", "[-4, -3, -2, -1]",
             "--checks", '["transforms", "claims"]', "--transforms", '["paraphrase", "back_translation"]', *server)
    capsys.readouterr()
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    for name in ("paraphrase", "back_translation"):
        result = report["transforms"][name]
        assert result["kind"] == "meaning-preserving" and result["rows"] == 0
        assert result["unchanged"] > 0 and result["failed"] == 0
    prompts = [call.body["messages"][0]["content"] for call in fake_api.calls]
    assert any("Translate the text below into French" in p for p in prompts)
    assert any("Translate the text below into English" in p for p in prompts)
    claims = report["claims"]
    judged = [call for call in fake_api.calls if call.body["model"] == "j"]
    assert claims["judged"] is True and len(judged) == claims["claims"] and judged[0].body["temperature"] == 0
    # Only the first text mentions the sailor: its four rows' claims, and only they, are supported.
    assert len(claims["examples"]) == claims["claims"] > 0
    assert all(example["supported"] == (example["row"] < 4) for example in claims["examples"])
    first = sum(example["row"] < 4 for example in claims["examples"])
    assert claims["supported"]["all"]["rate"]["value"] == pytest.approx(first / claims["claims"])


def test_the_generation_cap_defaults_to_the_one_the_sidecar_records(setting, tmp_path, capsys):
    main(["evaluate", "--pair", setting["pair"], "--out", str(tmp_path / "r"), "--texts", json.dumps(TEXTS[:1]),
          "--positions", "[-2, -1]", "--checks", '["round_trip"]', "--resamples", "20"])
    capsys.readouterr()
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    recorded = TRAINING["figures"]["round_trip"]
    assert report["settings"]["recorded_generation"] == {"max_new_tokens": recorded["max_new_tokens"],
                                                         "decoding": "greedy"}
    assert report["settings"]["max_new_tokens"] == recorded["max_new_tokens"]


def test_a_released_layout_pair_with_its_target(setting, tiny_model_dir, tmp_path, capsys):
    av, ar = write_released_pair(tmp_path, tiny_model_dir("llama"))
    main(["evaluate", "--av", str(av), "--ar", str(ar), "--target", str(tiny_model_dir("llama")), "--out",
          str(tmp_path / "r"), "--texts", json.dumps(TEXTS[:1]), "--positions", "[-3, -2, -1]",
          "--checks", '["round_trip", "detail"]', "--max_new_tokens", "4", "--resamples", "20"])
    capsys.readouterr()
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["data"]["rows"] == 3 and report["pair"]["layer"] == LAYER
    assert report["settings"]["recorded_generation"] is None and report["settings"]["max_new_tokens"] == 4


@pytest.mark.parametrize("argv, prefix", [
    ([], "nla: error: cache: no data: give --cache DIR"),
    (["--texts", '["a b"]', "--cache", "x"], "nla: error: cache: give the held-out data either"),
    (["--texts", '["a b"]', "--checks", '["round_trip", "vibes"]'], "nla: error: checks: unknown ['vibes']"),
    (["--texts", '["a b"]', "--transforms", '["paraphrase"]'], "nla: error: rewriter: the 'paraphrase' transform"),
    (["--texts", '["a b"]', "--rewriter.provider", "extractive"], "nla: error: rewriter.provider: the extractive"),
    (["--texts", '["a b"]', "--judge.provider", "openai"], "nla: error: judge.model: the openai teacher needs"),
    (["--texts", '["a b"]', "--claim_threshold", "0"], "nla: error: claim_threshold: is 0.0; it must be in (0, 1]"),
    (["--cache", "/nonexistent/cache"], "nla: error: cache: /nonexistent/cache holds no finished cache"),
    (["--av", "x", "--texts", '["a b"]'], "nla: error: pair: names both halves"),
    (["--texts", '["a b"]', "--reconstructor", "/nonexistent/ar"], "nla: error: reconstructor: /nonexistent/ar cannot"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_model_loads(setting, tmp_path, capsys, argv, prefix):
    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--pair", setting["pair"], "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith(prefix) and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
