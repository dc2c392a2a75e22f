"""``nla explain`` on exported and released-layout tiny pairs, through the CLI entry point."""

from __future__ import annotations

import json
import re

import pytest
import torch

from nla.commands.cli import main
from nla.models.target import DEFAULT_POSITIONS
from nla.models.pair_loading import load_pair
from nla.core.maths import cosine
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.residual import read_residual
from tests.fixtures.pairs import LAYER, TRAINING, build_pair, export, write_released_pair
from tests.fixtures.released_layouts import CLUSTER_BASE, write_easynla_release

TEXT = "The sailor counts the waves before the storm arrives at night."


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, tiny_model_dir):
    """An exported pair that records the held-out variance, one that records none, a released one."""
    source = tiny_model_dir("llama")
    root = tmp_path_factory.mktemp("explain")
    pair = build_pair(source)
    with_variance = export(root / "with", pair)
    without = export(root / "without", pair, training={"steps": 3})
    released = dict(zip(("av", "ar"), write_released_pair(root, source)))
    return {"with": with_variance, "without": without, "released": released, "source": source}


def run(capsys, *argv):
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    return done.value.code, capsys.readouterr()


def explain_json(capsys, pair, *extra):
    main(["explain", "--av", str(pair["av"]), "--ar", str(pair["ar"]), "--text", TEXT,
          "--max_new_tokens", "6", "--json", "true", *extra])
    return json.loads(capsys.readouterr().out)


def table_rows(out: str) -> list[list[str]]:
    """The data lines of the table (those that start with a position number), split into position,
    token, cos, mse, fve and explanation: columns are two or more spaces apart."""
    lines = [line.strip() for line in out.splitlines()]
    return [re.split(r"\s{2,}", line, maxsplit=5) for line in lines if line.split() and line.split()[0].isdigit()]


def test_table_has_one_row_per_requested_position(pairs, capsys):
    pair = pairs["with"]
    main(["explain", "--av", str(pair["av"]), "--ar", str(pair["ar"]), "--text", TEXT,
          "--positions", "[1, 4, -1]", "--max_new_tokens", "6"])
    out = capsys.readouterr().out
    rows = table_rows(out)
    length = len(load_tokenizer(ModelArgs(str(pairs["source"])))(TEXT)["input_ids"])
    assert [int(row[0]) for row in rows] == [1, 4, length - 1]
    assert f"target: {pairs['source']}" in out and "FVE = 1 - MSE / 0.75" in out
    for row in rows:
        cos, mse, fve = map(float, row[2:5])
        assert -1 <= cos <= 1 and mse == pytest.approx(2 * (1 - cos), abs=2e-4)
        assert fve == pytest.approx(1 - mse / 0.75, abs=2e-3)


def test_json_rows_match_an_independent_reconstruction(pairs, capsys):
    pair = pairs["with"]
    rows = explain_json(capsys, pair, "--positions", "[2, -1]")
    assert [set(row) for row in rows] == [{"position", "token", "explanation", "parsed", "cosine", "mse", "fve",
                                           "detail", "flag"}] * 2
    # Recompute the last row by hand: the target's residual against the AR's reading of the explanation.
    source = str(pairs["source"])
    tokenizer = load_tokenizer(ModelArgs(source))
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    target = load_causal_lm(ModelArgs(source), keep_layers=LAYER + 1).eval()
    position = ids.shape[1] - 1
    vector = read_residual(target, LAYER, ids, torch.ones_like(ids), torch.tensor([0]), torch.tensor([position]))
    loaded = load_pair(pair["av"], pair["ar"])
    reconstructor, prompts = loaded.reconstructor, loaded.prompts
    with torch.no_grad():
        predicted = reconstructor(torch.tensor([prompts.ar_ids(rows[1]["explanation"])]),
                                  torch.ones(1, len(prompts.ar_ids(rows[1]["explanation"])), dtype=torch.long))
    assert rows[1]["position"] == position and rows[1]["token"] == tokenizer.decode([int(ids[0, -1])])
    assert rows[1]["cosine"] == pytest.approx(cosine(predicted, vector.float()).item(), abs=1e-5)
    assert rows[1]["fve"] == pytest.approx(1 - rows[1]["mse"] / TRAINING["heldout_variance"], rel=1e-6)


def test_detail_curve_reads_growing_prefixes_and_ends_with_the_whole_explanation(pairs, capsys):
    rows = explain_json(capsys, pairs["with"], "--positions", "[-2, -1]", "--detail_points", "4")
    loaded = load_pair(pairs["with"]["av"], pairs["with"]["ar"])
    reconstructor, prompts = loaded.reconstructor, loaded.prompts
    source = str(pairs["source"])
    ids = torch.tensor([load_tokenizer(ModelArgs(source))(TEXT)["input_ids"]])
    target = load_causal_lm(ModelArgs(source), keep_layers=LAYER + 1).eval()
    for row in rows:
        detail = row["detail"]
        tokens = [point["tokens"] for point in detail]
        assert tokens == sorted(set(tokens)) and tokens[0] == 1 and 2 <= len(detail) <= 4
        assert detail[-1]["chars"] == len(row["explanation"])
        assert detail[-1]["mse"] == pytest.approx(row["mse"], abs=1e-5)
        assert detail[-1]["fve"] == pytest.approx(row["fve"], abs=1e-4)
        # A middle point is the AR reading exactly that prefix of the explanation.
        point = detail[1]
        assert point["chars"] < len(row["explanation"])
        vector = read_residual(target, LAYER, ids, torch.ones_like(ids), torch.tensor([0]),
                               torch.tensor([row["position"]])).float()
        read = torch.tensor([prompts.ar_ids(row["explanation"][: point["chars"]])])
        with torch.no_grad():
            alone = reconstructor(read, torch.ones_like(read))
        assert point["cosine"] == pytest.approx(cosine(alone, vector).item(), abs=1e-5)
        assert point["fve"] == pytest.approx(1 - point["mse"] / TRAINING["heldout_variance"], abs=1e-6)
    assert all(row["detail"] == [] for row in explain_json(capsys, pairs["with"], "--positions", "[-1]",
                                                            "--detail_points", "0"))


def test_default_positions_and_no_baseline(pairs, capsys):
    rows = explain_json(capsys, pairs["without"])
    length = len(load_tokenizer(ModelArgs(str(pairs["source"])))(TEXT)["input_ids"])
    expected = list(range(1, length))[-DEFAULT_POSITIONS:]
    assert [row["position"] for row in rows] == expected
    assert all(row["fve"] is None and -1 <= row["cosine"] <= 1 for row in rows)
    pair = pairs["without"]
    main(["explain", "--av", str(pair["av"]), "--ar", str(pair["ar"]), "--text", TEXT,
          "--positions", "[3]", "--max_new_tokens", "4"])
    out = capsys.readouterr().out
    assert "FVE not shown" in out and len(table_rows(out)) == 1


def test_released_pair_needs_and_takes_a_target(pairs, capsys):
    pair = pairs["released"]
    code, out = run(capsys, "explain", "--av", str(pair["av"]), "--ar", str(pair["ar"]), "--text", TEXT)
    assert code == 2 and out.err.startswith("nla: error: target: ") and out.err.count("\n") == 1
    rows = explain_json(capsys, pair, "--target", str(pairs["source"]), "--positions", "[-2, -1]")
    assert len(rows) == 2 and all(-1 <= row["cosine"] <= 1 for row in rows)


@pytest.mark.parametrize(
    "argv, prefix",
    [
        (["--positions", "[99]"], "nla: error: positions: 99 is out of range"),
        (["--positions", "[]"], "nla: error: positions: is empty"),
        (["--text", "   "], "nla: error: text: is empty"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(pairs, capsys, argv, prefix):
    pair = pairs["with"]
    base = ["explain", "--av", str(pair["av"]), "--ar", str(pair["ar"]), "--text", TEXT, "--max_new_tokens", "2"]
    code, out = run(capsys, *base, *argv)
    assert code == 2 and out.err.startswith(prefix) and out.err.count("\n") == 1 and out.out == ""


def test_missing_or_mismatched_directories_exit_2(pairs, capsys, tmp_path):
    pair = pairs["with"]
    code, out = run(capsys, "explain", "--av", str(tmp_path / "nope"), "--ar", str(pair["ar"]), "--text", TEXT)
    assert code == 2 and out.err.startswith("nla: error: av: directory") and out.err.count("\n") == 1
    code, out = run(capsys, "explain", "--av", str(pair["av"]), "--ar", str(pairs["released"]["ar"]), "--text", TEXT)
    assert code == 2 and out.err.startswith("nla: error: prompt_templates.") and out.err.count("\n") == 1


def test_a_release_whose_adapter_names_a_cluster_path_asks_for_and_takes_base(tmp_path, tiny_model_dir, capsys):
    source = tiny_model_dir("llama")
    layout = write_easynla_release(tmp_path, source)
    argv = ["explain", "--av", str(layout.av), "--ar", str(layout.ar), "--text", TEXT, "--max_new_tokens", "3",
            "--positions", "[-1]"]
    code, out = run(capsys, *argv)
    assert code == 2 and out.err == (f"nla: error: base: the adapter's base model '{CLUSTER_BASE}' does not exist "
                                     "here; pass --base NAME_OR_DIR\n")
    rows = explain_json(capsys, {"av": layout.av, "ar": layout.ar}, "--base", str(source), "--positions", "[-1]",
                        "--max_new_tokens", "3")
    # The base is the target too; the row matches the pair loaded with it.
    pair = load_pair(layout.av, layout.ar, base=str(source))
    assert len(rows) == 1 and rows[0]["explanation"] == pair.explain(reference_vector(source, -1),
                                                                      max_new_tokens=3).shown[0]


def reference_vector(source, position: int) -> torch.Tensor:
    """The target's residual after block LAYER at ``position`` of TEXT."""
    tokenizer = load_tokenizer(ModelArgs(str(source)))
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    target = load_causal_lm(ModelArgs(str(source)), keep_layers=LAYER + 1).eval()
    at = position % ids.shape[1]
    return read_residual(target, LAYER, ids, torch.ones_like(ids), torch.tensor([0]), torch.tensor([at]))
