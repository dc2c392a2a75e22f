"""``--ckpt_path last`` never silently starts over: with no checkpoint to find it is one line (exit 2);
``last_or_fresh`` starts fresh then (tests/reliability/test_nonfinite_training.py runs it); every shipped
fit config writes its checkpoints where ``last`` finds them again (a fixed logger version).
(Resumed runs end bit-identical to uninterrupted ones: tests/modules/test_sft.py and test_grpo.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
