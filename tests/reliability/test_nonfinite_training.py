"""Nothing non-finite becomes a weight, a checkpoint or an export: a NaN loss or gradient skips the
optimizer step (weights and AdamW moments untouched) and is counted; N such steps in a row stop the run
in one line (exit 2) with the last good checkpoint and export untouched; a checkpoint or an export of
non-finite weights is refused before anything is written. (GRPO, manual optimization:
tests/modules/test_grpo.py::test_nan_rollouts_stop_grpo_and_keep_the_checkpoint.)"""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from nla.data.activation_cache import ActivationCache
from nla.core.errors import NLAError
from tests.fixtures.boring import LinearRegression, RandomRegression
from tests.fixtures.pairs import build_pair, export
from tests.fixtures.commands import copy_cache, run_main, sft_argv


class Flaky(LinearRegression):
    """Linear regression under AdamW whose loss is NaN at the global steps in ``bad``."""

    def __init__(self, bad: tuple[int, ...] = (), limit: int = 3) -> None:
        super().__init__(lr=0.1)
        self.bad, self.limit = set(bad), limit

    def training_step(self, batch, index):
        loss = super().training_step(batch, index)
        return loss * float("nan") if self.global_step in self.bad else loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)

    def configure_callbacks(self):
        from nla.modules.nonfinite import NonFiniteGuard

        return [NonFiniteGuard(self.limit)]


class Snapshots(Callback):
    """Weights and AdamW state after every training batch."""

    def __init__(self) -> None:
        self.weights, self.steps = [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, index) -> None:
        self.weights.append(copy.deepcopy(module.layer.weight.detach()))
        state = trainer.optimizers[0].state
        self.steps.append([int(s["step"]) for s in state.values()] if state else [0])


def trainer(tmp_path, *callbacks, steps: int = 4) -> Trainer:
    return Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=str(tmp_path), callbacks=list(callbacks), accelerator="cpu")


def test_a_nan_loss_skips_the_step_and_is_counted(tmp_path):
    seen = Snapshots()
    fit = trainer(tmp_path, seen)
    fit.fit(Flaky(bad=(1,)), datamodule=RandomRegression())
    torch.testing.assert_close(seen.weights[1], seen.weights[0], rtol=0, atol=0)
    assert seen.steps == [[1, 1], [1, 1], [2, 2], [3, 3]], "AdamW's state must not move on the skipped step"
    assert all(bool(torch.isfinite(w).all()) for w in seen.weights)
    assert not torch.equal(seen.weights[2], seen.weights[1]), "training goes on after a skipped step"
    assert fit.callback_metrics["train/skipped_steps"] == 1
    assert fit.global_step == 4, "a skipped step still counts: the schedule and max_steps go on as planned"


def test_consecutive_nan_steps_stop_the_run_keeping_the_last_good_checkpoint(tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    seen = Snapshots()
    with pytest.raises(NLAError) as stopped:
        trainer(tmp_path, seen, checkpoints, steps=10).fit(Flaky(bad=tuple(range(2, 10)), limit=2),
                                                           datamodule=RandomRegression())
    assert str(stopped.value) == (
        "model.training.max_nonfinite_steps: 2 training steps in a row had a non-finite loss or gradient and were skipped "
        "(step 4); stopped with the last checkpoint and export untouched: check the data (its cache.checksums), "
        "lower the learning rate, or raise this limit")
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3, "the step that stopped the run saved no checkpoint"
    torch.testing.assert_close(last["state_dict"]["layer.weight"], seen.weights[1], rtol=0, atol=0)


def test_a_checkpoint_of_nan_weights_is_refused(tmp_path):
    fit = trainer(tmp_path, steps=1)
    module = Flaky()
    fit.fit(module, datamodule=RandomRegression())
    with torch.no_grad():
        module.layer.weight[0, 0] = float("nan")
    with pytest.raises(NLAError, match=r"^checkpoint: refusing to save non-finite weights \(1 tensors, first "
                                       r"layer.weight\) at step 1; the previous checkpoints are kept$"):
        fit.save_checkpoint(tmp_path / "nan.ckpt")
    assert not (tmp_path / "nan.ckpt").exists()


def test_an_export_of_nan_weights_is_refused_and_writes_nothing(tmp_path, tiny_model_dir):
    pair = build_pair(tiny_model_dir("llama"))
    export(tmp_path / "export", pair, training={})
    before = {p: p.read_bytes() for p in (tmp_path / "export").rglob("*") if p.is_file()}
    with torch.no_grad():
        pair.reconstructor.head.weight[0, 0] = float("inf")
    with pytest.raises(NLAError) as refused:
        export(tmp_path / "export", pair, training={})
    assert str(refused.value) == (f"export: the AR's weights hold NaN or inf (1 tensors, first head.weight); nothing "
                                  f"was written to {tmp_path / 'export'}; export a good checkpoint with `nla export`")
    assert {p: p.read_bytes() for p in (tmp_path / "export").rglob("*") if p.is_file()} == before


def test_nan_vectors_stop_sft_and_keep_the_checkpoint_and_export(tiny_sft, tmp_path, capsys, monkeypatch):
    root, model_dir, clean = tiny_sft
    cache, run = copy_cache(clean, tmp_path / "cache"), tmp_path / "run"
    argv = sft_argv(model_dir, root / "docs.jsonl", cache, run, "--trainer.val_check_interval", "2",
                    "--model.init_args.sample_every_n_steps", "0", "--model.init_args.training.max_nonfinite_steps", "2",
                    "--trainer.callbacks.init_args.every_n_train_steps", "1", "--model.init_args.schedule_steps", "8")
    # The first run has no checkpoint to resume: last_or_fresh starts fresh, `last` would refuse.
    assert run_main(capsys, [*argv, "--trainer.max_steps", "2", "--ckpt_path", "last_or_fresh"])[0] is None
    export = {p: p.read_bytes() for p in (run / "export").rglob("*") if p.is_file()}
    last = run / "sft" / "version_0" / "checkpoints" / "last.ckpt"
    good = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]

    vectors = ActivationCache.vectors
    monkeypatch.setattr(ActivationCache, "vectors", lambda self, indices: vectors(self, indices) * float("nan"))
    code, err = run_main(capsys, [*argv, "--trainer.max_steps", "8", "--ckpt_path", "last"])
    assert (code, err) == (2, "nla: error: model.training.max_nonfinite_steps: 2 training steps in a row had a non-finite loss "
                              "or gradient and were skipped (step 4); stopped with the last checkpoint and export "
                              "untouched: check the data (its cache.checksums), lower the learning rate, or raise "
                              "this limit")
    assert {p: p.read_bytes() for p in (run / "export").rglob("*") if p.is_file()} == export
    kept = torch.load(last, map_location="cpu", weights_only=True)
    assert kept["global_step"] == 3
    assert kept["state_dict"].keys() == good.keys()
    assert all(torch.equal(kept["state_dict"][key], value) for key, value in good.items()), "skipped steps move nothing"
