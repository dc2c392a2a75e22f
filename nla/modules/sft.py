"""``SFTModule``: the supervised warm start of both halves of an NLA on teacher summaries.

The AV (the whole target chat model, wrapped in ``Verbalizer``) learns to write the teacher's
explanation of a row with that row's activation injected at the marker; the AR (the first K+1 blocks,
``Reconstructor``) learns to map the same kind of explanation back to the activation. Both models are
built from the DataModule (one tokenizer, one marker, one K) in ``configure_model``, so a disabled
model costs no memory, and a checkpoint restores into the same structure.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, is_dataclass, replace
from pathlib import Path

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from nla.core.errors import ConfigError, field_scope
from nla.models.pair import Pair
from nla.models.pair_export import export_pair
from nla.models.sidecar import figure
from nla.core.metrics import FractionOfVarianceExplained, WeightedMean
from nla.modules import flops, fsdp, optim, precision
from nla.models import lora
from nla.models.loading import check_trainable, load_causal_lm
from nla.modules.fit_plan import FitPlan
from nla.modules.nonfinite import NonFiniteGuard
from nla.models.reconstructor import Reconstructor
from nla.modules.sample_table import heldout_sample_table, sample_rows
from nla.modules.sft_heldout import SFTHeldout
from nla.modules.settings import TrainingArgs, check_injection_scale, saved
from nla.models.verbalizer import Verbalizer


class SFTModule(SFTHeldout, LightningModule):
    """Supervised warm start of the AV and/or the AR; needs an ``NLADataModule``."""

    def __init__(
        self,
        train_verbalizer: bool = True,
        train_reconstructor: bool = True,
        training: TrainingArgs = TrainingArgs(),
        warmup_steps: int = 50,
        schedule_steps: int | None = None,
        injection_scale: float | str = "auto",
        sample_every_n_steps: int = 0,
        num_samples: int = 4,
        max_new_tokens: int = 150,
        export_dir: str | None = None,
        peak_tflops: float | None = None,
    ) -> None:
        """
        Args:
            train_verbalizer: Build and train the AV (the data must serve ``av_sft``).
            train_reconstructor: Build and train the AR (the data must serve ``ar_sft``).
            training: The optimizer, precision and adapters of both models, shared with GRPO
                (``nla.modules.settings.TrainingArgs``); its learning rates are the peaks of the schedule.
            warmup_steps: Optimizer steps of linear warmup before the cosine decay to 0 at the last step.
            schedule_steps: Optimizer step at which the cosine reaches 0; unset: ``trainer.max_steps`` (or
                Lightning's estimate from epochs). Set it to stop a run early and resume it later, with
                a larger ``max_steps``, on the same schedule.
            injection_scale: Norm the activation is rescaled to before it replaces the marker's
                embedding, or ``auto``: the 75th percentile of the cached activation norms.
            sample_every_n_steps: Every this many optimizer steps, sample ``num_samples`` held-out
                explanations greedily and add them to TensorBoard as a table; 0 never samples.
            num_samples: Held-out rows sampled for the table (always the same rows).
            max_new_tokens: Cap on generated tokens per sample; 150 as in the reference.
            export_dir: Where the trained pair is exported (``av/`` and ``ar/``) when fit ends; unset: no export.
            peak_tflops: Dense bf16 peak of one accelerator in TFLOP/s, for ``train/mfu`` (CUDA only);
                unset: the device's nominal peak from ``nla.modules.flops.PEAK_BF16_TFLOPS`` (H100 SXM
                and H200: 989). The step's model FLOPs count the dense matmuls (6 x parameters x tokens
                for full fine-tuning, the input embedding excluded) and causal attention.
        """
        super().__init__()
        if not (train_verbalizer or train_reconstructor):
            raise ConfigError("model.train_verbalizer", "and train_reconstructor are both false: nothing to train")
        check_injection_scale(injection_scale)
        for name, value, least in (("sample_every_n_steps", sample_every_n_steps, 0), ("num_samples", num_samples, 1),
                                   ("max_new_tokens", max_new_tokens, 1), ("warmup_steps", warmup_steps, 0),
                                   ("schedule_steps", schedule_steps or 1, 1)):
            if value < least:
                raise ConfigError(f"model.{name}", f"must be at least {least}, got {value}")
        self.save_hyperparameters()
        # Checkpoints keep plain mappings: they load with weights_only=True, which unpickles no class of ours.
        self.hparams.update(training=saved(training))
        self.training_args = training
        self.verbalizer: Verbalizer | None = None
        self.reconstructor: Reconstructor | None = None
        self.prompts = None
        self.layer: int | None = None
        self.base_model: str | None = None
        self.base_fingerprint: str | None = None
        self.data_provenance: dict = {}
        self.last_validation: dict[str, float] = {}
        self._samples = None
        self._sampled_at = -1
        self._step_started = 0.0
        # Real tokens per row of each model's batch, kept on the device until the step has ended.
        self._step_lengths: dict[str, torch.Tensor] = {}
        self._model_counts: dict[str, flops.ModelCounts] = {}
        self.av_val_loss = WeightedMean()
        self.av_val_loss_shuffled = WeightedMean()

    # ---- building -------------------------------------------------------------------------------

    def configure_model(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "target_args"):
            raise ConfigError("data", "SFTModule needs an NLADataModule (data.class_path)")
        precision.check_trainer(self.trainer, self.training_args.optimizer)
        self.build(datamodule)

    def build(self, datamodule) -> None:
        """Build the enabled models from a set-up ``NLADataModule`` (once; later calls do nothing)."""
        if self.verbalizer is not None or self.reconstructor is not None:
            return
        hp = self.hparams
        self.check_data(datamodule)
        # Trained weights are float32 masters whatever data.source.target.dtype (the frozen uses') says.
        args = replace(datamodule.target_args, dtype=self.training_args.trained_dtype)
        cached = datamodule.cache.meta.get("model", {}).get("name_or_path")
        if cached != args.name_or_path:
            raise ConfigError("data.source.target.name_or_path", f"is {args.name_or_path!r} but the cache in "
                              f"{datamodule.cache.directory} was built from {cached!r}; rebuild it or fix the path")
        self.prompts, self.layer, self.base_model = datamodule.prompts, datamodule.layer, args.name_or_path
        self.base_fingerprint = datamodule.base_fingerprint
        self.data_provenance = provenance(datamodule)
        with field_scope("data.source.target"):
            check_trainable(args)
        if hp.train_verbalizer:
            scale = self._injection_scale(datamodule)
            with field_scope("data.source.target"):
                model = load_causal_lm(args)
            if self.training_args.verbalizer_lora is not None:
                lora.wrap(model, self.training_args.verbalizer_lora, "model.training.verbalizer_lora")
            # from_pretrained returns eval mode, and Lightning no longer switches modules to train mode.
            self.verbalizer = Verbalizer(model.train(), datamodule.tokenizer, datamodule.marker, scale)
        if hp.train_reconstructor:
            with field_scope("data.source.target"):
                self.reconstructor = Reconstructor.from_target(args, datamodule.layer).train()
            if self.training_args.reconstructor_lora is not None:
                lora.wrap(self.reconstructor.model, self.training_args.reconstructor_lora, "model.training.reconstructor_lora")
            self.fve = FractionOfVarianceExplained(datamodule.d, variance=datamodule.heldout_variance)

    @property
    def pair(self) -> Pair:
        """The trained models as a ``Pair`` (a view: the same modules; a disabled side is None)."""
        return Pair(self.verbalizer, self.reconstructor, self.prompts, self.layer, base_model=self.base_model,
                    base_fingerprint=self.base_fingerprint)

    def fit_plan(self) -> FitPlan:
        """What this run trains, writes and generates, for the pre-flight."""
        hp = self.hparams
        trains = tuple(name for name, on in (("verbalizer", hp.train_verbalizer),
                                             ("reconstructor", hp.train_reconstructor)) if on)
        return FitPlan(trains=trains, adapters_only=self.training_args.uses_lora,
                       exports={"model.export_dir": hp.export_dir} if hp.export_dir else {},
                       generated=("model.max_new_tokens", hp.max_new_tokens) if hp.train_verbalizer else None)

    def check_data(self, datamodule) -> None:
        """The data serves exactly the splits of the enabled models (also run by the pre-flight)."""
        hp = self.hparams
        wanted = (("av_sft", hp.train_verbalizer), ("ar_sft", hp.train_reconstructor))
        expected = {split for split, enabled in wanted if enabled}
        if set(datamodule.train_splits) != expected:
            raise ConfigError("data.train_splits", f"must be {sorted(expected)} for train_verbalizer="
                              f"{hp.train_verbalizer} and train_reconstructor={hp.train_reconstructor}, "
                              f"got {list(datamodule.train_splits)}")

    def _injection_scale(self, datamodule) -> float:
        scale = self.hparams.injection_scale
        if scale == "auto":
            try:
                scale = datamodule.auto_injection_scale
            except (KeyError, TypeError):
                scale = None
            if scale is None or not math.isfinite(scale) or not scale > 0:
                raise ConfigError("model.injection_scale", "is 'auto' but the cache holds no activation norm "
                                  "statistics; set a number (about the 75th percentile of the norms at layer K)")
        return float(scale)

    def configure_callbacks(self) -> list:
        return [NonFiniteGuard(self.training_args.max_nonfinite_steps)]

    def configure_optimizers(self):
        hp, t = self.hparams, self.training_args
        groups = []
        if self.verbalizer is not None:
            groups.append(optim.param_group("verbalizer", self.verbalizer, t.verbalizer_lr))
        if self.reconstructor is not None:
            groups.append(optim.param_group("reconstructor", self.reconstructor, t.reconstructor_lr))
        optimizer = optim.adamw(groups, t.betas, t.weight_decay, t.optimizer)
        steps = hp.schedule_steps or optim.total_steps(self.trainer)
        schedule = optim.warmup_cosine_schedule(optimizer, hp.warmup_steps, steps)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """``trainer.gradient_clip_val`` by norm clips the AV's and the AR's gradients each with its own
        norm (as GRPO does): one joint norm would let the larger model's gradients shrink the other's."""
        if gradient_clip_algorithm not in (None, "norm"):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if gradient_clip_val:
            for group in optimizer.param_groups:
                torch.nn.utils.clip_grad_norm_(group["params"], gradient_clip_val)

    # ---- training -------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses, self._step_lengths = {}, {}
        if self.verbalizer is not None:
            av = batch["av"]
            losses["av"] = self.verbalizer(av["input_ids"], av["attention_mask"], av["vector"], av["labels"],
                                           slots=av.get("marker_slots"), layout=av.get("layout")).loss
            self._step_lengths["verbalizer"] = av["attention_mask"].sum(dim=1)
            self.log("train/injected_fraction", self.verbalizer.injection_stats.injected_fraction,
                     batch_size=len(av["vector"]))
        if self.reconstructor is not None:
            ar = batch["ar"]
            predicted = self.reconstructor(ar["input_ids"], ar["attention_mask"], ar.get("last_index"), ar.get("layout"))
            losses["ar"] = Reconstructor.loss(predicted, ar["vector"])
            self._step_lengths["reconstructor"] = ar["attention_mask"].sum(dim=1)
        for name, loss in losses.items():
            self.log(f"train/{name}_loss", loss, prog_bar=True, batch_size=len(batch[name]["vector"]))
        for group in self.trainer.optimizers[0].param_groups:
            self.log(f"train/lr_{group['name']}", group["lr"], batch_size=1)
        return sum(losses.values())

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            # Kernels run asynchronously: without a sync the clock stops before the work is done.
            torch.cuda.synchronize(self.device)
        seconds = max(time.perf_counter() - self._step_started, 1e-9)
        lengths = {name: rows.tolist() for name, rows in self._step_lengths.items()}
        self.log("train/tokens_per_s", sum(map(sum, lengths.values())) / seconds, batch_size=1)
        peak = self._peak_tflops() if cuda else None
        if peak is not None:
            models = {"verbalizer": self.verbalizer, "reconstructor": self.reconstructor}
            step_flops = sum(flops.training_flops(rows, self._counts(name, models[name])) for name, rows in lengths.items())
            self.log("train/mfu", step_flops / seconds / (peak * 1e12), batch_size=1)
        every = self.hparams.sample_every_n_steps
        if self.verbalizer is not None and every and self.global_step % every == 0 and self.global_step != self._sampled_at:
            self._sampled_at = self.global_step
            self.log_samples()

    def _counts(self, name: str, module) -> flops.ModelCounts:
        if name not in self._model_counts:
            self._model_counts[name] = flops.model_counts(module.model, getattr(module, "head", None))
        return self._model_counts[name]

    def _peak_tflops(self) -> float | None:
        """``peak_tflops``, else the device's entry in ``flops.PEAK_BF16_TFLOPS`` (None, warned once,
        for a device the table lacks: no MFU is logged then)."""
        return self.hparams.peak_tflops if self.hparams.peak_tflops is not None else self._device_peak

    @functools.cached_property
    def _device_peak(self) -> float | None:
        name = torch.cuda.get_device_name(self.device)
        peak = flops.peak_tflops(name)
        if peak is None:
            rank_zero_warn(f"no bf16 peak known for {name!r}: set model.peak_tflops to log train/mfu")
        return peak

    def log_samples(self) -> None:
        """Add a table of greedy held-out samples to every TensorBoard logger, and log their CJK rate."""
        if self._samples is None:
            self._samples = sample_rows(self.trainer.datamodule, self.hparams.num_samples)
        with fsdp.gathered(self.verbalizer):
            table, rate = heldout_sample_table(self.pair, self._samples, self.hparams.max_new_tokens)
        self.log("samples/cjk_rate", rate, batch_size=1)
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_text("samples/av", table, self.global_step)

    # ---- export ---------------------------------------------------------------------------------

    def on_fit_end(self) -> None:
        if self.hparams.export_dir:
            if self.last_validation.get("step") != self.global_step:
                # A run resumed from a checkpoint written before its step's validation would otherwise
                # export older figures than the same run uninterrupted.
                self.validate_final_weights()
            # Sharded weights are gathered by every process together; only rank 0 writes.
            models = fsdp.full_copies(self.verbalizer, self.reconstructor)
            if self.trainer.is_global_zero:
                self.export(self.hparams.export_dir, models=models)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Kept so `nla export` from a checkpoint records the same held-out scores as an end-of-fit export.
        checkpoint["nla_last_validation"] = dict(self.last_validation)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.last_validation = dict(checkpoint.get("nla_last_validation", {}))

    def export(self, directory: str | Path, steps: int | None = None, models: tuple | None = None,
               field: str = "model.export_dir") -> dict[str, Path]:
        """Write the trained pair as ``directory/av`` and ``directory/ar`` (``nla.models.pair``); ``steps``
        (recorded in the sidecars) defaults to the trainer's global step; ``models`` replaces
        ``(self.verbalizer, self.reconstructor)`` (unsharded copies from ``fsdp.full_copies``); ``field``
        is the key a refused directory is reported under."""
        if self.prompts is None:
            raise RuntimeError("export needs the models: call build(datamodule) or fit first")
        training = {
            **self.data_provenance,
            "steps": int(self.global_step if steps is None else steps),
            "hparams": {key: list(value) if isinstance(value, tuple) else asdict(value) if is_dataclass(value) else value
                        for key, value in self.hparams.items()},
        }
        last = self.last_validation
        if "val/fve" in last:
            training["figures"] = {"ar_on_teacher_text": figure(
                "ar_on_teacher_text", fve=last["val/fve"], mse=last["val/ar_loss"], rows=int(last.get("rows", 0)),
                documents=last.get("documents"), variance=training.get("heldout_variance"),
                step=int(last.get("step", training["steps"])))}
        if "val/av_loss_gap" in self.last_validation:
            training["heldout_av_loss_gap"] = self.last_validation["val/av_loss_gap"]
        verbalizer, reconstructor = models or (self.verbalizer, self.reconstructor)
        pair = Pair(verbalizer, reconstructor, self.prompts, self.layer, base_model=self.base_model,
                    base_fingerprint=self.base_fingerprint)
        return export_pair(directory, pair, stage="sft", training=training,
                           merge_adapters=lora.merge_on_export(self.training_args.verbalizer_lora), field=field)


def provenance(datamodule) -> dict:
    """What the sidecar records about the data (keys of ``nla.models.card.TRAINING_FIELDS``)."""
    cache = datamodule.cache
    teacher = datamodule.teacher_args
    record = {
        "corpus": datamodule.corpus_args.path,
        "documents": int(cache.meta.get("counts", {}).get("documents", 0)),
        "split_sizes": {split: int(len(cache.split_indices(split))) for split in ("av_sft", "ar_sft", "rl", "heldout")},
        "teacher": teacher.provider if teacher.model is None else f"{teacher.provider}:{teacher.model}",
        "cache": str(cache.directory),
    }
    if datamodule.heldout_variance is not None:
        record["heldout_variance"] = float(datamodule.heldout_variance)
    return record
