"""The training progress bar: optimizer steps out of ``max_steps`` when steps bound the run.

nla's configs end training by ``trainer.max_steps`` and leave epochs unbounded, which Lightning
records as ``max_epochs = -1``; its rich bar then reads "Epoch 0/-2" and counts the batches of an
epoch that never ends the run. This bar counts ``trainer.global_step`` (GRPO: rollouts; SFT:
optimizer steps) against ``max_steps`` instead, and keeps Lightning's epoch bar for epoch-bounded runs.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """A ``RichProgressBar`` that shows "Step" and global_step/max_steps when only steps bound the run."""

    def _by_steps(self) -> bool:
        trainer = self.trainer
        return trainer.max_epochs in (None, -1) and trainer.max_steps is not None and trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._by_steps() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._by_steps():
            return super()._get_train_description(current_epoch)
        return f"{'Step':{max(len('Step'), len(self.validation_description))}}"

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # One bar for the whole run: a new epoch must not reset it to zero.
        if self._by_steps() and self.train_progress_bar_id is not None:
            return
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._by_steps():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()
