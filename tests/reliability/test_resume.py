"""``--ckpt_path last`` never silently starts over: with no checkpoint to find it is one line (exit 2);
``last_or_fresh`` starts fresh then (tests/reliability/test_nonfinite_training.py runs it); every shipped
fit config writes its checkpoints where ``last`` finds them again (a fixed logger version). A fit without
``--ckpt_path`` never writes over an earlier run's checkpoints, a resumption never runs under settings
the checkpoint fixes, and an unreadable checkpoint is one line.
(Resumed runs end bit-identical to uninterrupted ones: tests/modules/test_sft.py and test_grpo.py;
killed ones too: test_kill_points.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from nla.commands.cli import main
from tests.fixtures.commands import ROOT, run_main, sft_argv

FIT_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "trainer" in yaml.safe_load(p.read_text()))


def test_last_with_no_checkpoint_is_an_error(tiny_sft, tmp_path, capsys):
    root, model_dir, _ = tiny_sft
    code, err = run_main(capsys, [*sft_argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run"),
                                  "--ckpt_path", "last"])
    searched = tmp_path / "run" / "sft" / "version_0" / "checkpoints"
    assert (code, err) == (2, f"nla: error: ckpt_path: is 'last' but {searched} holds no last checkpoint (check "
                              "trainer.default_root_dir and the logger's fixed version); drop --ckpt_path to start "
                              "fresh, or use 'last_or_fresh' to resume only when one exists")
    assert not (tmp_path / "cache").exists()


def test_a_missing_checkpoint_path_is_an_error(tiny_sft, tmp_path, capsys):
    root, model_dir, _ = tiny_sft
    missing = tmp_path / "gone.ckpt"
    code, err = run_main(capsys, [*sft_argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run"),
                                  "--ckpt_path", str(missing)])
    assert (code, err) == (2, f"nla: error: ckpt_path: {missing} does not exist; give an existing checkpoint, 'last' "
                              "or 'last_or_fresh'")


def test_fit_configs_are_shipped():
    assert len(FIT_CONFIGS) >= 10


@pytest.mark.parametrize("path", FIT_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_fit_config_resumes_with_last(path: Path):
    trainer = yaml.safe_load(path.read_text())["trainer"]
    checkpoints = [c["init_args"] for c in trainer.get("callbacks", []) if c["class_path"].endswith("ModelCheckpoint")]
    assert any(c.get("save_last") for c in checkpoints), "no ModelCheckpoint(save_last: true) to resume from"
    fixed_directory = all(c.get("dirpath") for c in checkpoints)
    version = (trainer.get("logger") or {}).get("init_args", {}).get("version")
    assert fixed_directory or version is not None, "a new logger version per run hides the last checkpoint"


@pytest.fixture(scope="module")
def finished_run(tiny_sft, tmp_path_factory):
    """(argv, run directory) of a finished two-step SFT run with a checkpoint per step."""
    root, model_dir, cache = tiny_sft
    run = tmp_path_factory.mktemp("finished") / "run"
    argv = sft_argv(model_dir, root / "docs.jsonl", cache, run, "--trainer.max_steps", "2",
                    "--trainer.val_check_interval", "2", "--model.init_args.sample_every_n_steps", "0",
                    "--trainer.callbacks.init_args.every_n_train_steps", "1")
    main(argv)
    return argv, run


def checkpoint_bytes(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (run / "sft" / "version_0" / "checkpoints").iterdir()}


def test_fit_again_over_a_finished_run_refuses(finished_run, capsys):
    argv, run = finished_run
    before = checkpoint_bytes(run)
    directory = run / "sft" / "version_0" / "checkpoints"
    code, err = run_main(capsys, argv)
    assert (code, err) == (2, f"nla: error: ckpt_path: is not set but {directory} holds the checkpoints of an earlier "
                              "run (epoch=0-step=2.ckpt, last.ckpt); resume it with --ckpt_path "
                              "last, or start over in another directory (trainer.logger.init_args.version) or after "
                              "deleting that one")
    assert checkpoint_bytes(run) == before


def test_resuming_with_changed_settings_names_them(finished_run, capsys):
    argv, run = finished_run
    last = run / "sft" / "version_0" / "checkpoints" / "last.ckpt"
    code, err = run_main(capsys, [*argv, "--ckpt_path", "last", "--model.init_args.training.verbalizer_lr", "0.5",
                                  "--data.init_args.batch_size", "2"])
    assert (code, err) == (2, f"nla: error: ckpt_path: the checkpoint {last} was trained with "
                              "model.training.verbalizer_lr 0.001, data.batch_size 4, but this run sets 0.5, 2; resuming "
                              "would keep the checkpoint's optimizer and schedule while config.yaml records the new "
                              "values: resume with the run's own settings, or start a new run without --ckpt_path")
    code, err = run_main(capsys, [*argv, "--ckpt_path", "last", "--trainer.max_steps", "4"])
    assert (code, err.split(", but")[0]) == (2, f"nla: error: ckpt_path: the checkpoint {last} was trained with "
                                                "trainer.max_steps 2")


def test_a_truncated_last_checkpoint_is_one_line(finished_run, tmp_path, capsys):
    argv, run = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    last = copy / "sft" / "version_0" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    argv = [str(copy) if arg == str(run) else arg.replace(str(run), str(copy)) for arg in argv]
    code, err = run_main(capsys, [*argv, "--ckpt_path", "last"])
    assert code == 2
    assert err.startswith(f"nla: error: ckpt_path: {last} is not a readable checkpoint (")
    assert err.endswith("); it may be truncated: give one of epoch=0-step=2.ckpt to --ckpt_path")
