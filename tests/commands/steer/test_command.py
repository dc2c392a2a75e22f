"""``nla steer`` on a tiny exported pair, through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nla.commands.cli import main
from tests.fixtures.released_layouts import write_per_layer_release

TEXT = "The sailor counts the waves before the storm arrives at night."
FAR = "Rivers bend around old stones, and the miller listens to the wheel turning slowly all day."


@pytest.fixture
def pair(exported_pair):
    return [exported_pair["av"], exported_pair["ar"]]


def steer_json(capsys, pair, *extra):
    main(["steer", "--av", pair[0], "--ar", pair[1], "--text", TEXT, "--max_new_tokens", "8", "--tokens", "6",
          "--json", "true", *extra])
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("mode, before", [("replace", "original"), ("add", "clean")])
def test_an_empty_edit_leaves_the_continuation_unchanged(pair, capsys, mode, before):
    result = steer_json(capsys, pair, "--mode", mode, "--watch", "sailor,storm")
    assert result["edited_explanation"] == result["explanation"] and result["before"] == before
    assert result["continuations"]["steered"] == result["continuations"][before]
    assert result["next_token_kl"] == 0.0
    assert [item["word"] for item in result["watch"]] == ["sailor", "storm"]
    assert all(item["steered"] == item["before"] for item in result["watch"])
    runs = {"clean", "original", "steered"} if mode == "replace" else {"clean", "steered"}
    assert set(result["continuations"]) == runs


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_a_large_edit_changes_the_next_token_distribution(pair, capsys, mode):
    result = steer_json(capsys, pair, "--mode", mode, "--explanation", FAR * 2, "--watch", "sailor")
    assert result["edited_explanation"] == FAR * 2
    # Identical runs give exactly 0 (the empty-edit test); the tiny random AR reads texts much alike,
    # so the edit moves the distribution a little, but measurably.
    assert result["next_token_kl"] > 1e-6
    assert result["watch"][0]["steered"] != result["watch"][0]["before"]


def test_table_output_and_position(pair, capsys):
    export = str(Path(pair[0]).parent)
    main(["steer", "--pair", export, "--text", TEXT, "--position", "3", "--max_new_tokens", "8",
          "--tokens", "4", "--explanation", FAR, "--watch", "waves"])
    out = capsys.readouterr().out
    assert "position 3" in out and "clean run" in out and "steered (edited)" in out and "original explanation" in out
    assert "next-token KL(original || steered)" in out and "waves" in out


@pytest.mark.parametrize("argv, prefix", [
    (["--replace", "zebra=horse"], "nla: error: replace: 'zebra' does not occur in the explanation"),
    (["--mode", "swap"], "nla: error: mode: is 'swap'"),
    (["--replace", "a=b", "--explanation", "x"], "nla: error: explanation: replaces the whole explanation"),
    (["--position", "99"], "nla: error: positions: 99 is out of range"),
    (["--pair", "/somewhere"], "nla: error: pair: names both halves"),
])
def test_bad_input_is_one_line_and_exit_2(pair, capsys, argv, prefix):
    with pytest.raises(SystemExit) as done:
        main(["steer", "--av", pair[0], "--ar", pair[1], "--text", TEXT, "--max_new_tokens", "4", *argv])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith(prefix) and err.count("\n") == 1


def test_repeated_replacements_all_apply(pair, capsys):
    explanation = steer_json(capsys, pair)["explanation"]
    # Two characters of the explanation (the tiny AV writes byte-level noise, not words).
    first, second = explanation[0], next(c for c in explanation if c != explanation[0])
    result = steer_json(capsys, pair, "--replace", f"{first}=@1@", "--replace", f"{second}=@2@")
    assert result["edits"] == [[first, "@1@"], [second, "@2@"]]
    assert result["edited_explanation"] == explanation.replace(first, "@1@").replace(second, "@2@")


def test_replacing_with_the_original_vector_reproduces_the_clean_run(pair, capsys, monkeypatch):
    # An AR that reconstructs the residual exactly: replace mode then writes h back where it was read
    # (block K's output at the position), so the "original" run is the clean run. A patch on any
    # other block writes block K's output into the wrong place and moves the distribution.
    from nla.commands.steer import command
    from nla.models.pair import Pair

    read: dict = {}
    real_residuals = command.residuals

    def residuals(*args, **kwargs):
        read["h"] = real_residuals(*args, **kwargs)
        return read["h"]

    monkeypatch.setattr(command, "residuals", residuals)
    monkeypatch.setattr(Pair, "reconstruct", lambda self, texts, batch_size=16: read["h"].expand(len(texts), -1))
    result = steer_json(capsys, pair, "--watch", "sailor,storm,night", "--explanation", FAR)
    assert result["continuations"]["original"] == result["continuations"]["clean"]
    for item in result["watch"]:
        assert item["original"] == pytest.approx(item["clean"], rel=1e-6, abs=0)


def test_a_per_layer_release_steers_at_the_layer_asked_for(tmp_path, tiny_model_dir, capsys):
    layout = write_per_layer_release(tmp_path, tiny_model_dir("llama"))
    argv = ["steer", "--av", str(layout.av), "--ar", str(layout.ar), "--text", TEXT, "--max_new_tokens", "4",
            "--tokens", "3"]
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err == (f"nla: error: layer: is missing; {layout.av / 'nla_meta.yaml'} serves "
                                            "layers 1, 2, 3: pass --layer with one of them\n")
    main([*argv, "--layer", "1", "--json", "true"])
    result = json.loads(capsys.readouterr().out)
    assert result["layer"] == 1 and result["continuations"]["steered"] == result["continuations"]["original"]
