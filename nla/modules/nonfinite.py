"""Nothing non-finite becomes a weight, a checkpoint or an export.

``NonFiniteGuard`` is a Lightning callback that both training modules add through
``configure_callbacks`` (so it serves automatic and manual optimization alike):

- every loss handed to ``backward`` (``on_before_backward``, also reached by ``manual_backward``) and,
  right before each optimizer step, every gradient of that optimizer's parameters
  (``on_before_optimizer_step``, reached by ``optimizer.step()`` in both modes) is checked;
- when any is NaN or infinite, the gradients are dropped (set to None), so AdamW leaves those
  weights and their moments untouched: the step is skipped. Lightning still counts it as a step, so
  the learning-rate schedule and ``max_steps`` go on as planned. Skipped steps are logged as
  ``train/skipped_steps`` (the running total);
- ``max_consecutive`` training steps in a row with a skipped optimizer step stop the run with a
  one-line ``NLAError`` (exit 2) before the checkpoint callbacks of that step run, so the last
  checkpoint and any export stay the last good ones;
- a checkpoint whose weights are not all finite is refused before anything is written.

Under data parallelism the decision is reduced over processes (skip when any process saw a
non-finite value), so all processes step or skip together. Exports check their weights themselves
(``nla.core.finite.check_weights_finite``).
"""

from __future__ import annotations

import torch
from lightning.pytorch import Callback

from nla.core.errors import NLAError
from nla.core.finite import all_finite, nonfinite_names


class NonFiniteGuard(Callback):
    """Skip optimizer steps with a non-finite loss or gradient; stop after ``max_consecutive`` training
    steps in a row had one (0: never stop). ``field`` is the config key named in the stop message."""

    def __init__(self, max_consecutive: int = 10, field: str = "model.training.max_nonfinite_steps") -> None:
        if max_consecutive < 0:
            raise ValueError(f"max_consecutive must be >= 0, got {max_consecutive}")
        self.max_consecutive, self.field = max_consecutive, field
        self.skipped = 0
        self.consecutive = 0
        self._loss_ok: torch.Tensor | None = None
        self._stepped = False
        self._skipped_now = False

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self._loss_ok = finite if self._loss_ok is None else self._loss_ok & finite

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        loss_ok = True if self._loss_ok is None else bool(self._loss_ok)
        self._loss_ok = None
        ok = trainer.strategy.reduce_boolean_decision(loss_ok and all_finite(p.grad for p in params), all=True)
        self._stepped = True
        if not ok:
            self._skipped_now = True
            for p in params:
                p.grad = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._stepped:
            return  # accumulating gradients: no optimizer step in this batch
        self._stepped = False
        if self._skipped_now:
            self.skipped += 1
            self.consecutive += 1
        else:
            self.consecutive = 0
        self._skipped_now = False
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False, batch_size=1)
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise NLAError(
                f"{self.field}: {self.consecutive} training steps in a row had a non-finite loss or gradient and were "
                f"skipped (step {trainer.global_step}); stopped with the last checkpoint and export untouched: check "
                "the data (its cache.checksums), lower the learning rate, or raise this limit"
            )

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        bad = nonfinite_names(checkpoint.get("state_dict", {}).items())
        if bad:
            raise NLAError(f"checkpoint: refusing to save non-finite weights ({len(bad)} tensors, first {bad[0]}) at "
                           f"step {trainer.global_step}; the previous checkpoints are kept")

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))
