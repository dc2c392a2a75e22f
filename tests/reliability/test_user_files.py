"""Nothing nla did not write is ever deleted or overwritten: ``nla import --output``, ``nla export
--output`` and the export directories of ``nla fit`` replace only what is absent, empty, or nla's own
(a cache's ``meta.json``, an export's sidecars); anything else is one line and exit 2, before any work."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.fixtures.commands import run_main, sft_argv
from tests.fixtures.reference import reference_datasets


def user_folder(path):
    """A folder of someone's own files: a note and a subfolder with a table."""
    (path / "data").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes")
    (path / "data" / "table.csv").write_text("a,b\n1,2\n")
    return path


def files(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def import_argv(datasets, model_dir, output) -> list[str]:
    return ["import", "--datasets", yaml.safe_dump([str(p) for p in datasets], default_flow_style=True).strip(),
            "--target.name_or_path", str(model_dir), "--output", str(output), "--heldout_fraction", "0.25"]


@pytest.fixture
def datasets(tmp_path, tiny_tokenizer):
    return reference_datasets(tmp_path / "ref", tiny_tokenizer)


def test_import_refuses_a_folder_of_other_files(datasets, tiny_model_dir, tmp_path, capsys):
    folder = user_folder(tmp_path / "mine")
    before = files(folder)
    code, err = run_main(capsys, import_argv(datasets, tiny_model_dir("llama"), folder))
    assert (code, err) == (2, f"nla: error: output: {folder} holds files nla did not write (data/, notes.txt); give "
                              "a new or empty directory, or one that already holds an nla cache (meta.json)")
    assert files(folder) == before


def test_import_into_the_current_directory_names_it(datasets, tiny_model_dir, tmp_path, capsys, monkeypatch):
    folder = user_folder(tmp_path / "here")
    monkeypatch.chdir(folder)
    code, err = run_main(capsys, import_argv(datasets, tiny_model_dir("llama"), "."))
    assert (code, err) == (2, f"nla: error: output: {folder} holds files nla did not write (data/, notes.txt); give "
                              "a new or empty directory, or one that already holds an nla cache (meta.json)")
    assert sorted(os.listdir(folder)) == ["data", "notes.txt"]


def test_import_replaces_an_earlier_cache_and_fills_an_empty_folder(datasets, tiny_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_main(capsys, import_argv(datasets, tiny_model_dir("llama"), empty))[0] is None
    assert (empty / "meta.json").is_file()
    (empty / "meta.json").write_text((empty / "meta.json").read_text().replace('"seed": 0', '"seed": 7'))
    assert run_main(capsys, import_argv(datasets, tiny_model_dir("llama"), empty))[0] is None
    assert '"seed": 0' in (empty / "meta.json").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging directory left behind"


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_export_output_refuses_a_file_or_a_folder_of_other_files(tmp_path, capsys, kind):
    checkpoint, config = tmp_path / "last.ckpt", tmp_path / "config.yaml"
    checkpoint.write_bytes(b"never read")
    if kind == "file":
        output = tmp_path / "report.txt"
        output.write_text("mine")
        line = f"output: {output} is a file, not a directory; give a new directory for an nla export (av/, ar/)"
    else:
        output = user_folder(tmp_path / "mine")
        line = (f"output: {output} holds files nla did not write (data/, notes.txt); give a new or empty directory, "
                "or one that already holds an nla export (av/, ar/)")
    before = files(tmp_path)
    code, err = run_main(capsys, ["export", "--fit_config", str(config), "--ckpt_path", str(checkpoint),
                                  "--output", str(output)])
    assert (code, err) == (2, f"nla: error: {line}")
    assert files(tmp_path) == before


def test_fit_refuses_an_export_dir_of_other_files_before_any_work(tiny_sft, tmp_path, capsys):
    root, model_dir, _ = tiny_sft
    folder = user_folder(tmp_path / "mine")
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run",
                                          "--model.init_args.export_dir", str(folder)))
    assert (code, err) == (2, f"nla: error: model.export_dir: {folder} holds files nla did not write (data/, "
                              "notes.txt); give a new or empty directory, or one that already holds an nla export "
                              "(av/, ar/)")
    assert not (tmp_path / "cache").exists()
