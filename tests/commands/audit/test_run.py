"""``nla audit`` on the warm tiny llama's pair: the table is the pair's round trip, kill -9 and a
resume give the uninterrupted table row for row, two processes under torchrun give one process's
rows, and every bad input is one line, exit 2, before any model loads and with nothing written."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nla.commands.cli import SUBCOMMANDS, main
from nla.core.maths import cosine, normalized_mse
from nla.data.audit_positions import PositionRule, choose, plain_tokens
from nla.data.audit_table import MANIFEST, SHARDS, read_table, shard_paths
from nla.models.fingerprint import model_fingerprint
from nla.models.loading import ModelArgs
from nla.models.pair_export import export_pair
from nla.models.pair_loading import load_pair
from nla.models.target import load_target, residuals, target_tokenizer
from tests.fixtures.pairs import build_pair, export, warm_pair
from tests.fixtures.paths import ROOT

TEXTS = ["The sailor counts the waves before the storm arrives at night.",
         "Rivers bend around old stones, and the miller listens to the wheel.",
         "A teacher writes numbers on the board: one, two, three, four.",
         "The verbalizer looks at one vector and writes a short explanation."]
VARIANCE = 0.8
SETTINGS = ["--every", "3", "--max_new_tokens", "8", "--batch_size", "4", "--texts_per_shard", "1",
            "--id_column", "id", "--group_column", "topic"]


def export_warm(directory: Path, model_dir: Path, training: dict) -> Path:
    """The warm pair exported with its base model's fingerprint (so another model's AR is refused)."""
    pair = warm_pair(model_dir)
    pair.base_fingerprint = model_fingerprint(ModelArgs(str(model_dir)))
    export_pair(directory, pair, stage="sft", training=training)
    return directory


@pytest.fixture(scope="module")
def audit_inputs(tmp_path_factory, warm_model_dir):
    """The warm pair exported with a held-out variance, and four texts with ids and groups."""
    root = tmp_path_factory.mktemp("audit")
    export_warm(root / "pair", warm_model_dir, {"heldout_variance": VARIANCE})
    data = root / "texts.jsonl"
    data.write_text("".join(json.dumps({"id": f"t{i}", "text": text, "topic": "ab"[i % 2]}) + "\n"
                            for i, text in enumerate(TEXTS)), encoding="utf-8")
    return {"root": root, "pair": root / "pair", "data": data, "target": warm_model_dir}


def audit_argv(inputs, out: Path, *extra: str) -> list[str]:
    return ["audit", "--pair", str(inputs["pair"]), "--data", str(inputs["data"]), "--out", str(out), *SETTINGS,
            *extra]


def run_nla(argv: list[str], cwd: Path, *launcher: str, kill_at: str = "", occurrence: int = 1):
    """``nla argv`` in a fresh process (one thread, as the suite's other runs), through
    ``tests.fixtures.kill_points`` (SIGKILL just before the ``occurrence``-th rename onto ``kill_at``),
    or through ``launcher`` (torchrun)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if launcher:
        command = [sys.executable, "-m", *launcher, "-m", "nla", *argv]
    else:
        command = [sys.executable, "-m", "tests.fixtures.kill_points", str(cwd / "renames.log"), kill_at,
                   str(occurrence), *argv]
    (cwd / "renames.log").unlink(missing_ok=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def reference(audit_inputs, one_thread):
    """The rows of one uninterrupted single-process audit (in this process, on one thread like the
    others), and what it printed."""
    out = audit_inputs["root"] / "reference"
    main(audit_argv(audit_inputs, out))
    return read_table(out).to_pylist()


def test_the_cost_is_printed_first(audit_inputs, tmp_path, capsys, one_thread):
    main(audit_argv(audit_inputs, tmp_path / "out", "--every", "7"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("nla audit: 4 texts, 7 positions to explain, 66 target tokens to read, at most 56 tokens to "
                        "generate (7 x --max_new_tokens 8)")
    assert re.fullmatch(r"nla audit: about \d+ s at [\d.]+ explanations/s \(measured on the first batch\)", lines[1])
    assert lines[2] == f"nla audit: 7 rows in {tmp_path / 'out'}"


def test_the_table_is_the_pairs_round_trip(audit_inputs, reference, one_thread):
    target = str(audit_inputs["target"])
    tokenizer, model = target_tokenizer(target), load_target(target, 32, "cpu", keep_layers=2)
    pair = load_pair(audit_inputs["pair"] / "av", audit_inputs["pair"] / "ar")
    reference, expected = [dict(row) for row in reference], []
    for index, text in enumerate(TEXTS):
        read = plain_tokens(tokenizer, text)
        positions = choose(read.tokens, read.special, read.roles, PositionRule(every=3))
        # One text per shard: each text's positions are one round trip, in batches of 4.
        trip = pair.round_trip(residuals(model, pair.layer, read.ids, positions), max_new_tokens=8, batch_size=4)
        for row, position in enumerate(positions):
            valid = trip.valid[row]
            mse = normalized_mse(trip.predictions[row], trip.targets[row]).item() if valid else 2.0
            expected.append({
                "text_index": index, "text_id": f"t{index}", "group": "ab"[index % 2], "role": None,
                "position": position, "token": read.tokens[position], "context": read.context(position, 200),
                "explanation": trip.explanations[row], "mse": mse, "fve": 1 - mse / VARIANCE,
                "cosine": cosine(trip.predictions[row], trip.targets[row]).item() if valid else 0.0, "valid": valid})
    assert [row.pop("mse") for row in reference] == pytest.approx([row.pop("mse") for row in expected], abs=1e-6)
    assert [row.pop("fve") for row in reference] == pytest.approx([row.pop("fve") for row in expected], abs=1e-6)
    assert [row.pop("cosine") for row in reference] == pytest.approx([row.pop("cosine") for row in expected], abs=1e-6)
    assert reference == expected
    assert any(row["valid"] for row in expected)


@pytest.mark.slow
def test_kill_9_and_resume_give_the_uninterrupted_table(audit_inputs, reference, capsys, monkeypatch, one_thread):
    root, out = audit_inputs["root"], audit_inputs["root"] / "killed"
    killed = run_nla(audit_argv(audit_inputs, out), root, kill_at=r"shards/part-", occurrence=2)
    assert killed.returncode == -signal.SIGKILL
    (first,) = shard_paths(out)
    kept = first.stat()
    assert list((out / SHARDS).glob(".part-*.tmp"))
    capsys.readouterr()
    main(audit_argv(audit_inputs, out))
    assert "nla audit: 3 texts, 15 positions to explain (4 already done)" in capsys.readouterr().out
    # The shard written before the kill is kept, not written again; the killed write's file is gone.
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    assert not list((out / SHARDS).glob(".part-*.tmp")) and len(shard_paths(out)) == 4
    assert read_table(out).to_pylist() == reference
    # A finished audit run again loads no model and changes nothing.
    forbid_loading(monkeypatch)
    main(audit_argv(audit_inputs, out))
    assert "0 texts, 0 positions to explain (19 already done)" in capsys.readouterr().out
    assert read_table(out).to_pylist() == reference


@pytest.mark.slow
def test_two_processes_under_torchrun_give_one_processs_rows(audit_inputs, reference):
    out = audit_inputs["root"] / "torchrun"
    done = run_nla(audit_argv(audit_inputs, out), audit_inputs["root"], "torch.distributed.run", "--standalone",
                   "--nproc_per_node", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    # Shards 0 and 2 are rank 0's, 1 and 3 rank 1's.
    assert [path.name for path in shard_paths(out)] == ["part-000-000000.parquet", "part-000-000002.parquet",
                                                       "part-001-000001.parquet", "part-001-000003.parquet"]
    assert read_table(out).to_pylist() == reference
    assert done.stdout.count("nla audit: 4 texts") == 1


def test_transcripts_explain_the_chosen_roles(audit_inputs, tmp_path, capsys, one_thread):
    data = tmp_path / "chats.jsonl"
    chats = [[{"role": "user", "content": "Describe the vector."}, {"role": "assistant", "content": TEXTS[0]}],
             [{"role": "system", "content": TEXTS[1]}, {"role": "user", "content": "What is it thinking?"},
              {"role": "assistant", "content": TEXTS[2]}]]
    data.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in chats), encoding="utf-8")
    main(["audit", "--pair", str(audit_inputs["pair"]), "--data", str(data), "--out", str(tmp_path / "out"),
          "--messages_column", "messages", "--roles", "assistant", "--max_per_text", "3", "--max_new_tokens", "4"])
    rows = read_table(tmp_path / "out").to_pylist()
    assert [row["text_index"] for row in rows] == [0, 0, 0, 1, 1, 1]
    assert {row["role"] for row in rows} == {"assistant"}
    assert all(row["token"] in TEXTS[0] for row in rows[:3]) and all(row["token"] in TEXTS[2] for row in rows[3:])
    # Four tokens never close an explanation: every row is the orthogonal stand-in.
    assert {(row["valid"], row["explanation"], row["mse"], row["cosine"]) for row in rows} == {(False, None, 2.0, 0.0)}
    assert rows[0]["fve"] == 1 - 2.0 / VARIANCE
    assert "6 rows in" in capsys.readouterr().out


def test_dry_run_estimates_and_writes_nothing(audit_inputs, tmp_path, capsys, monkeypatch):
    forbid_loading(monkeypatch)
    main(audit_argv(audit_inputs, tmp_path / "out", "--dry_run", "true", "--rate", "2"))
    out = capsys.readouterr().out.splitlines()
    assert out == ["nla audit: 4 texts, 19 positions to explain, 66 target tokens to read, at most 152 tokens to "
                   "generate (19 x --max_new_tokens 8)",
                   "nla audit: about 10 s at 2.00 explanations/s (--rate)"]
    assert not (tmp_path / "out").exists()


def test_another_audit_in_the_same_directory_is_refused(audit_inputs, reference, tmp_path, capsys, monkeypatch):
    out = audit_inputs["root"] / "reference"
    manifest = (out / MANIFEST).read_bytes()
    forbid_loading(monkeypatch)
    code, err = failure(capsys, audit_argv(audit_inputs, out, "--max_new_tokens", "9"))
    assert code == 2 and err.startswith("nla: error: max_new_tokens: is 9 but the audit in ")
    assert "was begun with 8; use a new --out, or --overwrite true" in err
    assert (out / MANIFEST).read_bytes() == manifest
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    code, err = failure(capsys, audit_argv(audit_inputs, foreign))
    assert code == 2 and "holds files nla did not write (notes.txt)" in err
    assert [path.name for path in foreign.iterdir()] == ["notes.txt"]


def test_overwrite_starts_the_audit_again(audit_inputs, reference, tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    shutil.copytree(audit_inputs["root"] / "reference", out)
    main(audit_argv(audit_inputs, out, "--every", "7", "--overwrite", "true"))
    assert "4 texts, 7 positions to explain, " in capsys.readouterr().out
    rows = read_table(out).to_pylist()
    assert len(rows) == 7 and {row["position"] for row in rows} == {7, 14}
    assert json.loads((out / MANIFEST).read_text())["settings"]["every"] == 7


def forbid_loading(monkeypatch) -> None:
    """Any model load fails the test: bad inputs must be refused before one."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model loaded before the inputs were checked")

    for name in ("load_pair", "load_target"):
        monkeypatch.setattr(f"nla.commands.audit.run.{name}", refuse)
    monkeypatch.setattr("nla.models.loading.load_causal_lm", refuse)


def failure(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return done.value.code, err


@pytest.fixture(scope="module")
def other_pairs(audit_inputs, tiny_model_dir):
    """Exports of the warm llama at layer 2 (the AR of another layer) and without a held-out variance, and
    one of another base model."""
    root = audit_inputs["root"]
    export(root / "layer2", build_pair(audit_inputs["target"], layer=2))
    export(root / "other", build_pair(tiny_model_dir("llama"), layer=1))
    export_warm(root / "no-variance", audit_inputs["target"], {})
    return root


def bad_data(tmp_path, rows) -> str:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("case", ["no text column", "empty text", "beyond the context", "beyond max_tokens",
                                  "other layer", "other base model", "roles of plain texts", "no variance",
                                  "nothing matches"])
def test_bad_inputs_are_one_line_before_any_model_loads(case, audit_inputs, other_pairs, tmp_path, capsys,
                                                         monkeypatch):
    pair = audit_inputs["pair"]
    av, ar, data, extra = pair / "av", pair / "ar", str(audit_inputs["data"]), []
    if case == "no text column":
        data, expected = bad_data(tmp_path, [{"body": "x"}]), "text_column: no column 'text' in "
    elif case == "empty text":
        data, expected = bad_data(tmp_path, [{"text": TEXTS[0]}, {"text": ""}]), "text_column: row 1 is empty"
    elif case == "beyond the context":
        data = bad_data(tmp_path, [{"text": TEXTS[0]}, {"text": " ".join(TEXTS * 8)}])
        expected = "max_tokens: text '1' (row 1) has 528 tokens but the target reads at most 256 "
    elif case == "beyond max_tokens":
        extra, expected = ["--max_tokens", "8"], "pass --truncate true to explain only its first 8"
    elif case == "other layer":
        ar, expected = other_pairs / "layer2" / "ar", "extraction_layer_index: the AV says 1 but the AR says 2"
    elif case == "other base model":
        ar, expected = other_pairs / "other" / "ar", "ar: the AV comes from base model"
    elif case == "roles of plain texts":
        extra, expected = ["--roles", "assistant"], "roles: chooses tokens of chat transcripts"
    elif case == "no variance":
        av, ar = other_pairs / "no-variance" / "av", other_pairs / "no-variance" / "ar"
        expected = "variance: the pair's sidecars record no held-out variance"
    else:
        extra, expected = ["--pattern", "^zzz$"], "pattern: no token of the 4 texts passes the position rule"
    forbid_loading(monkeypatch)
    out = tmp_path / "out"
    code, err = failure(capsys, ["audit", "--av", str(av), "--ar", str(ar), "--data", data, "--out", str(out),
                                 *extra])
    assert code == 2 and expected in err
    assert not out.exists()


def test_truncate_explains_the_first_max_tokens(audit_inputs, tmp_path, capsys, monkeypatch):
    forbid_loading(monkeypatch)
    main(audit_argv(audit_inputs, tmp_path / "out", "--max_tokens", "8", "--truncate", "true", "--dry_run", "true"))
    # Every text cut to 8 tokens: positions 3 and 6 of each (every third non-special token from index 1).
    assert "4 texts, 8 positions to explain, 32 target tokens to read" in capsys.readouterr().out


def test_audit_subcommands_of_two_words_dispatch(monkeypatch, capsys):
    monkeypatch.setitem(SUBCOMMANDS, "audit query", ("nla.commands.inspect_model:inspect_model", "a stand-in"))
    with pytest.raises(SystemExit) as done:
        main(["audit", "query", "--help"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("usage: nla audit query")
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    assert capsys.readouterr().out.startswith("usage: nla audit ")


def test_the_manifest_records_the_settings(audit_inputs, reference):
    manifest = json.loads((audit_inputs["root"] / "reference" / MANIFEST).read_text())
    assert manifest["kind"] == "nla_audit" and manifest["texts"] == 4 and manifest["positions"] == 19
    settings = manifest["settings"]
    assert settings["variance"] == VARIANCE and settings["every"] == 3 and settings["layer"] == 1
    assert settings["av"] == str((audit_inputs["pair"] / "av").resolve())
