"""Files a team shares: exports honour the umask (as the cache does, tests/reliability/test_corrupt_cache.py),
a full disk while exporting changes nothing, and an export names its base model so that ``nla explain``
finds it from any directory, or says to pass ``--target`` when it cannot."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat

import pytest
from safetensors import SafetensorError
from transformers import modeling_utils

from nla.models import pair_export as export_module
from nla.commands.cli import main
from nla.core.errors import NLAError
from nla.models.sidecar import read_sidecar
from tests.fixtures.commands import run_main
from tests.fixtures.pairs import build_pair, export

TEXT = "The sailor counts the waves before the storm arrives at night."


@pytest.fixture(scope="module")
def pair(tiny_model_dir):
    return build_pair(tiny_model_dir("llama"))


def write(directory, pair, base_model: str):
    pair.base_model = base_model
    return export(directory, pair, training={})


def test_exports_honour_the_umask(pair, tmp_path):
    previous = os.umask(0o022)
    try:
        write(tmp_path / "export", pair, "base")
    finally:
        os.umask(previous)
    for path in [tmp_path / "export", *(tmp_path / "export").rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


def _full_card(meta):
    raise OSError(errno.ENOSPC, "No space left on device")


def _full_safetensors(*args, **kwargs):
    # What safetensors raises on a full disk (measured on a 200 KiB tmpfs): not an OSError.
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("where, fault", [(export_module, "model_card"), (modeling_utils, "safe_save_file")])
def test_a_full_disk_while_exporting_changes_nothing(pair, tmp_path, monkeypatch, where, fault):
    write(tmp_path / "export", pair, "base")
    before = {p: p.read_bytes() for p in (tmp_path / "export").rglob("*") if p.is_file()}

    monkeypatch.setattr(where, fault, _full_card if fault == "model_card" else _full_safetensors)
    with pytest.raises(NLAError) as stopped:
        write(tmp_path / "export", pair, "base")
    assert str(stopped.value) == (f"disk full while exporting to {tmp_path / 'export'}; nothing there changed; free "
                                  f"space on {tmp_path} and export again")
    assert {p: p.read_bytes() for p in (tmp_path / "export").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["ar", "av"]


def explain(capsys, av, ar, *extra):
    return run_main(capsys, ["explain", "--av", str(av), "--ar", str(ar), "--text", TEXT, "--positions", "[-1]",
                             "--max_new_tokens", "2", "--json", "true", *extra])


def test_explain_finds_a_relative_base_model_from_elsewhere(pair, tiny_model_dir, tmp_path, capsys, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir("llama"), work / "model")
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    written = write(tmp_path / "export", pair, "model")  # as typed in a config, relative to where training ran
    meta = read_sidecar(written["av"])
    assert meta.base_model == "model"
    assert meta.base_model_source["path"] == str(work / "model")
    assert len(meta.base_model_source["config_sha256"]) == 64

    monkeypatch.chdir(elsewhere)
    main(["explain", "--av", str(written["av"]), "--ar", str(written["ar"]), "--text", TEXT, "--positions", "[-1]",
          "--max_new_tokens", "2", "--json", "true"])
    assert len(json.loads(capsys.readouterr().out)) == 1

    (work / "model").rename(work / "moved")
    code, err = explain(capsys, written["av"], written["ar"])
    assert (code, err) == (2, f"nla: error: target: the pair's base model 'model' (recorded at {work / 'model'}) is "
                              "not there, or its config.json changed since; pass --target with the model the pair was "
                              "trained on")


def test_explain_asks_for_target_when_the_hub_base_cannot_load(pair, tmp_path, capsys):
    written = write(tmp_path / "export", pair, "nobody/no-such-model")
    code, err = explain(capsys, written["av"], written["ar"])
    assert code == 2
    assert err.startswith("nla: error: target: the base model the sidecar names cannot be loaded (cannot load "
                          "'nobody/no-such-model' (")
    assert err.endswith("; pass --target with the model the pair was trained on (a local copy)")
