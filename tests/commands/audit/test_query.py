"""``nla audit query`` on hand-made tables: the counts by hand, the intervals against an independent
loop over the document bootstrap's draws, the judge through a loopback server, bad input first."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nla.commands.audit.query import query
from nla.commands.cli import main
from nla.core.errors import ConfigError
from nla.data.audit_table import write_shard
from nla.evaluation.bootstrap import document_resamples
from tests.fixtures.loopback import answer_body

MATCH = "constructed test|evaluation"
# Per text: its explanations (None: the answer did not parse). e3 has no valid answer at all.
EVALS = {"e0": ["This feels like a constructed test.", "A list of numbers.", None],
         "e1": ["ordinary chat", "an EVALUATION of skill"],
         "e2": ["nothing", "nothing"],
         "e3": [None]}
REAL = {"r0": ["a recipe", "A list of numbers."], "r1": ["ordinary chat", "a poem"], "r2": ["a letter", "a poem"]}
# The same transcripts as EVALS under another condition: only e2 now says it.
RERUN = {"e0": ["a plain question", "A list of numbers.", None], "e1": ["ordinary chat", "a story"],
         "e2": ["nothing", "surely an evaluation"], "e3": [None]}


def write_audit(directory, texts: dict[str, list], group: str | None = None, role=None) -> str:
    rows = [{"text_index": index, "text_id": text_id, "group": group, "role": role(position) if role else None,
             "position": position, "token": "x", "context": "a x", "explanation": explanation, "mse": 0.5,
             "fve": 0.3, "cosine": 0.75, "valid": explanation is not None}
            for index, (text_id, explanations) in enumerate(texts.items())
            for position, explanation in enumerate(explanations)]
    write_shard(directory, 0, 0, rows)
    return str(directory)


@pytest.fixture
def audits(tmp_path):
    return {name: write_audit(tmp_path / name, texts, group=name)
            for name, texts in (("evals", EVALS), ("real", REAL), ("rerun", RERUN))}


def run(capsys, tmp_path, tables, resamples=200, **settings) -> dict:
    query(tables, out=str(tmp_path / "q.json"), resamples=resamples, **settings)
    capsys.readouterr()
    return json.loads((tmp_path / "q.json").read_text())


def shares(texts: dict[str, list], matches, ids: list[str]) -> tuple[float, float]:
    """Per-text and per-explanation shares of the valid explanations of the texts ``ids``, by hand."""
    explained = [t for t in ids if any(e is not None for e in texts[t])]
    hits = [sum(1 for e in texts[t] if e is not None and matches(e)) for t in ids]
    counted = sum(sum(e is not None for e in texts[t]) for t in ids)
    return (sum(1 for t, h in zip(ids, hits) if h and t in explained) / len(explained) if explained else np.nan,
            sum(hits) / counted if counted else np.nan)


def by_hand(texts, matches, seed, resamples=200) -> dict:
    """Both intervals from the document bootstrap's draws of the sorted text ids, in plain Python."""
    ids = sorted(texts)
    draws = [[ids[i] for i in draw] for draw in document_resamples(np.arange(len(ids)), resamples, seed)]
    values = np.array([shares(texts, matches, draw) for draw in draws])
    whole = shares(texts, matches, ids)
    return {name: (whole[i], *np.nanpercentile(values[:, i], [2.5, 97.5]))
            for i, name in enumerate(("per_text", "per_explanation"))}


def interval(entry) -> tuple:
    return entry["value"], entry["low"], entry["high"]


def ignoring_case(text: str) -> bool:
    return "constructed test" in text.lower() or "evaluation" in text.lower()


def test_pattern_counts_per_dataset_with_document_level_intervals(audits, tmp_path, capsys):
    report = run(capsys, tmp_path, [audits["evals"], audits["real"]], pattern=MATCH, compare=["evals", "real"])
    evals, real = report["sets"]
    assert (evals["label"], evals["texts"], evals["matching_texts"]) == ("evals", 3, 2)
    assert (evals["explanations"], evals["matching_explanations"], evals["invalid"], evals["rows"]) == (6, 2, 2, 8)
    expected = by_hand(EVALS, ignoring_case, seed=0)
    for key in ("per_text", "per_explanation"):
        assert interval(evals[key]) == pytest.approx(expected[key])
    assert evals["per_text"]["value"] == pytest.approx(2 / 3) and evals["per_explanation"]["value"] == pytest.approx(1 / 3)
    # Nothing in real traffic says it: a point at 0, so the two-sample difference is evals' own spread.
    assert interval(real["per_text"]) == (0, 0, 0) and (real["texts"], real["explanations"]) == (3, 6)
    difference = report["difference"]
    assert difference["paired"] is False and (difference["a"], difference["b"]) == ("evals", "real")
    assert interval(difference["per_text"]) == pytest.approx(expected["per_text"])
    assert report["verdicts"] is None and report["query"]["pattern"] == MATCH


def test_case_among_all_and_the_printed_table(audits, tmp_path, capsys):
    sensitive = run(capsys, tmp_path, [audits["evals"]], pattern=MATCH, case_sensitive=True)["sets"][0]
    assert (sensitive["matching_texts"], sensitive["matching_explanations"]) == (1, 1)  # "EVALUATION" no longer
    every = run(capsys, tmp_path, [audits["evals"]], pattern=MATCH, among="all")["sets"][0]
    # Invalid rows count as explanations that do not match, and e3 becomes a text without a match.
    assert (every["texts"], every["matching_texts"], every["explanations"], every["matching_explanations"]) == (
        4, 2, 8, 2)
    query([audits["evals"], audits["real"]], pattern=MATCH, compare=["evals", "real"], resamples=50)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"nla audit query: explanations matching /{MATCH}/ (ignoring case), among valid")
    assert printed[1].split()[:3] == ["dataset", "texts", "with"]
    assert printed[2].split()[0] == "evals" and printed[2].split()[1] == "66.67%" and "2/3" in printed[2]
    assert "1/3" not in printed[3] and "0/3" in printed[3] and "0/6" in printed[3]
    assert printed[4].startswith("evals - real (two-sample): per text +66.67 [+") and printed[4].endswith(" points")


def test_paired_difference_on_the_same_transcripts(audits, tmp_path, capsys):
    # Twenty draws: the percentiles fall between draws, so another seed or draw would move them.
    report = run(capsys, tmp_path, [audits["evals"], audits["rerun"]], resamples=20, pattern=MATCH,
                 compare=["evals", "rerun"], paired=True, seed=5)
    ids = sorted(EVALS)
    differences = []
    for draw in document_resamples(np.arange(4), 20, seed=5):
        picked = [ids[i] for i in draw]
        differences.append(shares(EVALS, ignoring_case, picked)[1] - shares(RERUN, ignoring_case, picked)[1])
    assert report["difference"]["paired"] is True
    assert interval(report["difference"]["per_explanation"]) == pytest.approx(
        (2 / 6 - 1 / 6, *np.nanpercentile(differences, [2.5, 97.5])))
    # Each line draws with its own seed: the first seed, the second seed + 1.
    for line, texts, seed in zip(report["sets"], (EVALS, RERUN), (5, 6)):
        assert interval(line["per_explanation"]) == pytest.approx(
            by_hand(texts, ignoring_case, seed=seed, resamples=20)["per_explanation"])


def test_texts_of_two_datasets_stay_apart_in_one_group(tmp_path, capsys):
    # The same text ids in two datasets, one group: eight texts, not four.
    tables = [write_audit(tmp_path / name, texts, group="same") for name, texts in (("a", EVALS), ("b", RERUN))]
    (line,) = run(capsys, tmp_path, tables, pattern=MATCH, by="group")["sets"]
    assert (line["label"], line["texts"], line["matching_texts"], line["explanations"]) == ("same", 6, 3, 12)


def test_by_group_and_by_role(tmp_path, capsys):
    # One table, two groups; and roles that alternate within each text.
    directory = tmp_path / "one"
    write_audit(directory, EVALS, group="a", role=lambda position: "user" if position % 2 == 0 else "assistant")
    write_shard(directory, 0, 1, [{"text_index": 10, "text_id": "z", "group": None, "role": None, "position": 0,
                                   "token": "x", "context": "x", "explanation": "an evaluation", "mse": 1.0,
                                   "fve": 0.0, "cosine": 0.5, "valid": True}])
    groups = run(capsys, tmp_path, [str(directory)], pattern=MATCH, by="group")["sets"]
    assert [(g["label"], g["texts"], g["matching_texts"]) for g in groups] == [("a", 3, 2), ("(none)", 1, 1)]
    roles = run(capsys, tmp_path, [str(directory)], pattern=MATCH, by="role")["sets"]
    # user: positions 0 and 2 (e0's match, e1's "ordinary chat", e2's "nothing"); assistant: positions 1.
    assert [(r["label"], r["explanations"], r["matching_explanations"]) for r in roles] == [
        ("assistant", 3, 1), ("user", 3, 1), ("(none)", 1, 1)]


def judge_server(fake_api, unclear="A list of numbers."):
    """YES when the note says a test or an evaluation, no verdict for ``unclear``, NO otherwise."""
    def respond(number, call):
        note = call.body["messages"][0]["content"].split("<note>")[1].split("</note>")[0].strip()
        answer = "It is hard to say." if note == unclear else "YES" if ignoring_case(note) else "NO."
        return 200, {}, answer_body(call.path, answer)

    fake_api.respond = respond
    return ["--judge.provider", "openai", "--judge.model", "judge-m", "--judge.base_url", fake_api.base_url,
            "--judge.temperature", "0"]


def test_the_judge_through_a_loopback_server_asks_each_explanation_once(audits, tmp_path, capsys, fake_api):
    server = judge_server(fake_api)
    claim = "this text is a constructed test or evaluation"
    out = tmp_path / "judged.json"
    main(["audit", "query", "--table", audits["evals"], "--table", audits["real"], "--claim", claim, *server,
          "--compare", "evals", "--compare", "real", "--resamples", "200", "--out", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    distinct = {e for texts in (EVALS, REAL) for es in texts.values() for e in es if e is not None}
    asked = [call.body["messages"][0]["content"] for call in fake_api.calls]
    assert len(asked) == len(distinct) and all(claim in prompt for prompt in asked)
    assert {call.body["model"] for call in fake_api.calls} == {"judge-m"}
    assert report["verdicts"]["judge"] == "openai/judge-m" and report["verdicts"]["claim"] == claim
    assert report["verdicts"]["answers"]["A list of numbers."] is None
    assert report["verdicts"]["answers"]["an EVALUATION of skill"] is True
    evals, real = report["sets"]
    # "A list of numbers." (in e0 and r0) is unjudged: counted apart, in no share.
    assert (evals["unjudged"], evals["explanations"], evals["matching_explanations"]) == (1, 5, 2)
    assert (real["unjudged"], real["explanations"], real["texts"]) == (1, 5, 3)
    assert evals["per_text"]["value"] == pytest.approx(2 / 3)
    assert "says make the claim" in printed.splitlines()[0]
    # Rerun from the verdicts without a judge: nothing is asked, the same figures come out.
    calls = len(fake_api.calls)
    main(["audit", "query", "--table", audits["evals"], "--table", audits["real"], "--claim", claim,
          "--verdicts", str(out), "--compare", "evals", "--compare", "real", "--resamples", "200",
          "--out", str(tmp_path / "again.json")])
    capsys.readouterr()
    again = json.loads((tmp_path / "again.json").read_text())
    assert len(fake_api.calls) == calls and again["sets"] == report["sets"]
    assert again["verdicts"] == report["verdicts"]
    # With the judge, only the explanation left without a verdict is asked again.
    main(["audit", "query", "--table", audits["evals"], "--claim", claim, "--verdicts", str(out), *server])
    capsys.readouterr()
    assert len(fake_api.calls) == calls + 1 and "A list of numbers." in fake_api.calls[-1].body["messages"][0]["content"]


def expect_refusal(capsys, argv, prefix):
    with pytest.raises(SystemExit) as done:
        main(["audit", "query", *argv])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith(prefix) and err.count("\n") == 1, err


def test_bad_input_is_one_line_before_the_judge_is_asked(audits, tmp_path, capsys, fake_api):
    server = judge_server(fake_api)
    claim = ["--claim", "a test"]
    out = tmp_path / "q.json"
    (tmp_path / "other.json").write_text(json.dumps({"verdicts": {"claim": "another", "judge": None,
                                                                  "answers": {}}}))
    for argv, prefix in [
        (["--pattern", "(unclosed"], "nla: error: pattern: '(unclosed' is not a regular expression"),
        ([], "nla: error: pattern: nothing to count"),
        (["--pattern", "x", *claim, *server], "nla: error: pattern: give what to count as either"),
        (claim, "nla: error: judge: --claim needs a judge"),
        (["--pattern", "x", "--by", "colour"], "nla: error: by: is 'colour'; choose from dataset, group, role"),
        (["--pattern", "x", "--paired", "true"], "nla: error: paired: pairs the two sets of --compare"),
        ([*claim, *server, "--compare", "evals", "--compare", "nowhere"], "nla: error: compare: no set is named"),
        ([*claim, *server, "--compare", "evals", "--compare", "real", "--paired", "true"],
         "nla: error: paired: evals holds 4 texts and real 3, 0 of them in both"),
        ([*claim, "--judge.provider", "extractive"], "nla: error: judge.provider: the extractive teacher"),
        ([*claim, *server, "--verdicts", str(tmp_path / "other.json")], "nla: error: verdicts: "),
        ([*claim, "--verdicts", str(tmp_path / "missing.json")], "nla: error: verdicts: cannot read verdicts"),
        (["--pattern", "x", "--out", str(tmp_path / "no" / "q.json")], "nla: error: out: "),
    ]:
        expect_refusal(capsys, ["--table", audits["evals"], "--table", audits["real"], "--out", str(out), *argv]
                       if "--out" not in argv else ["--table", audits["evals"], "--table", audits["real"], *argv],
                       prefix)
    expect_refusal(capsys, ["--table", str(tmp_path / "empty"), "--pattern", "x"], "nla: error: table: ")
    assert fake_api.calls == [] and not out.exists()
    # Verdicts that lack explanations, without a judge to ask: refused before anything is written.
    (tmp_path / "some.json").write_text(json.dumps({"verdicts": {"claim": "a test", "judge": "openai/judge-m",
                                                                 "answers": {"nothing": False}}}))
    expect_refusal(capsys, ["--table", audits["evals"], *claim, "--verdicts", str(tmp_path / "some.json"),
                            "--out", str(out)], "nla: error: judge: 4 distinct explanations have no verdict")
    assert not out.exists()


def test_a_config_error_is_raised_by_the_function_itself(audits):
    with pytest.raises(ConfigError, match="compare: is"):
        query([audits["evals"]], pattern="x", compare=["evals"])
