"""SFT's held-out scores: the validation and test steps of ``SFTModule``, and the figures its export records.

Loader 0 holds the ``validation`` half of the held-out rows with their own vectors; loader 1 (with
``data.val_shuffled``) the same rows with shuffled vectors, for the AV only: its loss gap says how
much the AV reads the vector. The last validation (``last_validation``) is what an export records;
it travels in checkpoints, and at the end of a fit that did not validate at its last step (a run
resumed from the checkpoint written just before that step's validation) the final weights are
validated once more, so an interrupted run exports the same figures as the run uninterrupted.
"""

from __future__ import annotations

import itertools

import torch

from nla.data.datasets import IGNORE


class SFTHeldout:
    """Mixed into ``SFTModule`` (a ``LightningModule`` with ``verbalizer``, ``reconstructor``,
    ``av_val_loss``, ``av_val_loss_shuffled`` and, with an AR, ``fve``)."""

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loader 0: the held-out rows with their own vectors; loader 1 (``data.val_shuffled``): the same
        rows with shuffled vectors, for the AV only."""
        if self.verbalizer is not None:
            av = batch["av"]
            out = self.verbalizer(av["input_ids"], av["attention_mask"], batch["vector"], av["labels"],
                                  slots=av.get("marker_slots"), layout=av.get("layout"))
            tokens = (av["labels"][:, 1:] != IGNORE).sum()
            metric = self.av_val_loss if dataloader_idx == 0 else self.av_val_loss_shuffled
            metric.update(out.loss.detach(), tokens)
        if self.reconstructor is not None and dataloader_idx == 0:
            ar = batch["ar"]
            predicted = self.reconstructor(ar["input_ids"], ar["attention_mask"], ar.get("last_index"), ar.get("layout"))
            self.fve.update(predicted, batch["vector"])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """The held-out ``test`` half (``nla test``), scored as validation scores its half."""
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._heldout_values("test"))

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self._heldout_values("val"))

    def validate_final_weights(self) -> None:
        """One validation of the weights as they are, as Lightning's loop runs it (its batches, its
        ``limit_val_batches``, the precision's context), outside the loop: inside ``on_fit_end`` the
        loop cannot run and ``self.log`` is refused, so the scores go to the loggers directly."""
        trainer = self.trainer
        loaders = trainer.datamodule.val_dataloader()
        loaders = loaders if isinstance(loaders, list) else [loaders]
        was_training = self.training
        self.eval()
        with torch.no_grad(), trainer.precision_plugin.val_step_context():
            for index, loader in enumerate(loaders):
                limit = trainer.limit_val_batches
                count = min(len(loader), limit) if isinstance(limit, int) else int(len(loader) * limit)
                for batch_idx, batch in enumerate(itertools.islice(loader, count)):
                    batch = trainer.strategy.batch_to_device(batch, dataloader_idx=index)
                    self.validation_step(batch, batch_idx, index)
        self.train(was_training)
        values = self._heldout_values("val")
        if trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics({name: float(value) for name, value in values.items()}, step=self.global_step)

    def _heldout_values(self, prefix: str) -> dict[str, torch.Tensor]:
        """The scores gathered since the last call (the metrics reset); validation's are also kept
        as ``last_validation``, with the rows and step they are about."""
        values = {}
        if self.verbalizer is not None and self.av_val_loss.update_called:
            values[f"{prefix}/av_loss"] = self.av_val_loss.compute()
            if self.av_val_loss_shuffled.update_called:
                values[f"{prefix}/av_loss_shuffled"] = self.av_val_loss_shuffled.compute()
                values[f"{prefix}/av_loss_gap"] = values[f"{prefix}/av_loss_shuffled"] - values[f"{prefix}/av_loss"]
        if self.reconstructor is not None and self.fve.update_called:
            scores = self.fve.compute_all()
            values.update({f"{prefix}/fve": scores["fve"], f"{prefix}/ar_loss": scores["mse"],
                           f"{prefix}/ar_cosine": scores["cosine"]})
        for metric in (self.av_val_loss, self.av_val_loss_shuffled, *([self.fve] if self.reconstructor else [])):
            metric.reset()
        values = {name: value.float() for name, value in values.items()}
        # Only validation figures describe the run (the sidecar's, the checkpoint's): the test half is read, not kept.
        if prefix == "val" and not self.trainer.sanity_checking:
            self.last_validation = {name: float(value) for name, value in values.items()}
            # The step says which weights the figures describe (on_fit_end validates again when it is not the last).
            self.last_validation["step"] = int(self.global_step)
            if "val/fve" in values:
                # Which rows the figure is about, so an export can say it (not logged: not a curve).
                rows = int(scores["count"])
                self.last_validation.update(rows=rows,
                                            documents=self.trainer.datamodule.split_documents("validation", rows))
        return values
