"""The training bar counts optimizer steps of max_steps when only steps bound the run."""

from __future__ import annotations

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from nla.commands.progress_bar import StepProgressBar
from nla.commands.fit import NLALightningCLI
from tests.fixtures.boring import LinearRegression, RandomRegression


def train(tmp_path, bar, **limits) -> Trainer:
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
                      default_root_dir=tmp_path, callbacks=[bar], limit_val_batches=0, **limits)
    # 32 rows in batches of 8: 4 batches per epoch, so 6 steps span two epochs.
    trainer.fit(LinearRegression(), RandomRegression(size=32, batch_size=8))
    return trainer


def test_a_step_bounded_run_shows_steps_of_max_steps_across_epochs(tmp_path):
    bar = StepProgressBar(leave=True)
    train(tmp_path, bar, max_steps=6)
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert task.description.strip() == "Step" and "-2" not in task.description
    assert (task.completed, task.total) == (6, 6)


def test_an_epoch_bounded_run_keeps_the_epoch_bar(tmp_path):
    bar = StepProgressBar(leave=True)
    train(tmp_path, bar, max_epochs=2)
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert task.description.strip() == "Epoch 1/1" and (task.completed, task.total) == (4, 4)


@pytest.mark.parametrize(("extra", "expected"), [({}, StepProgressBar), ({"enable_progress_bar": False}, None),
                                                 ({"callbacks": [TQDMProgressBar()]}, TQDMProgressBar)])
def test_the_cli_adds_the_step_bar_unless_the_config_chooses(tmp_path, extra, expected):
    callbacks = extra.pop("callbacks", [])
    args = ["--model", "tests.fixtures.boring.LinearRegression", "--data", "tests.fixtures.boring.RandomRegression",
            "--trainer.max_steps", "2", "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    args += [f"--trainer.{key}={value}" for key, value in extra.items()]
    args += ["--trainer.callbacks", "lightning.pytorch.callbacks.TQDMProgressBar"] if callbacks else []
    trainer = NLALightningCLI(args=args, run=False).trainer
    assert type(trainer.progress_bar_callback) is expected if expected else trainer.progress_bar_callback is None
