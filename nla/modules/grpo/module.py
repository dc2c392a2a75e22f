"""``GRPOModule``: joint RL of the AV (GRPO) and the AR (regression on the same rollouts).

Batch semantics, in plain numbers: each training batch holds ``prompts_per_step`` (B) vectors, each
gets ``rollout.samples_per_prompt`` (G) answers, so a step generates B x G sequences; every
forward/backward pass holds at most ``rollout.micro_batch_size`` of them, and each model takes ONE
optimizer step per rollout. ``trainer.global_step`` counts rollouts (only the AV optimizer's steps are counted; the AR
steps through the strategy directly), so ``max_steps`` is the number of GRPO steps.

Optimization is manual. Dropout is kept off in every pass: with one update per rollout the ratio of
the update's log-probs to the sampling log-probs is then exactly 1 at the update, as GRPO assumes.
Sampling draws from a generator seeded by (seed, global_step, global rank), so a resumed run samples
exactly what the uninterrupted one would, and data-parallel processes draw different samples; the
data position, both models and both optimizers come back from the checkpoint. The reference AV (KL
penalty) is rebuilt from the starting weights on every start; with ``rollout.kl_coef: 0`` there is none.

Every held-out evaluation (before the first step, inside steps, of the final pair) computes in the
precision context the training steps run in (``trainer.precision``'s autocast), so the curve, the
figure it starts from and the exports' figures are measured alike.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from nla.core.errors import ConfigError, field_scope
from nla.core.maths import fve, fve_variance
from nla.models import lora
from nla.models.loading import QUANTIZATIONS, check_trainable, load_causal_lm
from nla.models.pair import Pair
from nla.models.pair_export import export_pair
from nla.models.pair_loading import load_verbalizer
from nla.models.reconstructor import Reconstructor
from nla.models.sidecar import figure
from nla.models.verbalizer import Verbalizer, cjk_rate
from nla.modules import fsdp, optim, precision
from nla.modules.grpo.evaluation import frozen_fve, heldout_fve, memory_probe
from nla.modules.grpo.loss import fraction_zero_spread
from nla.modules.grpo.reference import DEVICES, build_reference
from nla.modules.grpo.rollout import ar_loss, av_loss, collect
from nla.modules.grpo.settings import RolloutArgs
from nla.modules.fit_plan import FitPlan
from nla.modules.nonfinite import NonFiniteGuard
from nla.modules.sample_table import rollout_sample_table
from nla.modules.settings import TrainingArgs, check_injection_scale, saved


class GRPOModule(LightningModule):
    """GRPO on the AV and regression on the AR, from an SFT export (see the module docstring)."""

    def __init__(
        self,
        sft_export: str | None = None,
        prompts_per_step: int | None = None,
        rollout: RolloutArgs = RolloutArgs(),
        training: TrainingArgs = TrainingArgs(),
        gradient_clip: float = 1.0,
        reference_device: str = "same",
        reference_quantization: str = "none",
        injection_scale: float | str = "auto",
        eval_every_n_steps: int = 25,
        eval_max_batches: int | None = None,
        eval_at_start: bool = True,
        export_dir: str | None = None,
        best_export_dir: str | None = None,
        sample_every_n_steps: int = 25,
        seed: int = 0,
        memory_probe: bool = True,
    ) -> None:
        """
        Args:
            sft_export: Directory holding ``av/`` and ``ar/`` of the SFT stage. None starts both from
                the target model itself (tests and ablations only: without SFT the AV writes no tags).
            prompts_per_step: B, vectors per step; must equal ``data.batch_size`` (None: take it).
            rollout: How each step samples, scores and weighs its answers (``RolloutArgs``: G, the
                micro-batch, the cap, the reward, the advantage, the clip, the KL to the reference...).
            training: The optimizer, precision and adapters of both models, shared with SFT
                (``nla.modules.settings.TrainingArgs``); GRPO's learning rates are constant.
            gradient_clip: Max gradient norm, per model.
            reference_device: ``same`` (beside the policy) or ``cpu`` (moved in for its pass only).
            reference_quantization: ``none``, ``8bit`` or ``4bit``: load the frozen reference AV from
                ``sft_export`` in that precision instead of copying the policy (bitsandbytes). Neither
                reference setting is used with ``rollout.kl_coef: 0``, which builds no reference.
            injection_scale: Only without ``sft_export``: the AV's injection norm, or ``auto`` (the
                75th percentile of the cached activation norms).
            eval_every_n_steps: Held-out greedy AV -> AR evaluation (``val/fve``) every N steps; 0 turns
                evaluation off (then ``best_export_dir``, which keeps the best-evaluated pair, must be unset).
            eval_max_batches: Held-out batches per evaluation (None: all held-out rows, which can take
                minutes: the AV writes an answer for every row).
            eval_at_start: Also evaluate the starting pair before the first step (when evaluation is on),
                the point later ``val/fve`` values are compared against.
            export_dir: Where the pair at the end of training is exported (None: no export), as SFT's.
            best_export_dir: Where the pair with the best ``val/fve`` so far is exported (None: no
                export). It was chosen on the held-out split's validation half: compare either on the
                test half (``nla quickstart --grpo_pair``).
            sample_every_n_steps: A TensorBoard text table of rollout samples every N steps; 0 never.
            seed: Seed of the rollout sampling (combined with the step and the process rank).
            memory_probe: Before the first step, run one forward+backward of each model at the
                longest sequence a step can produce, so an out-of-memory shows at once.
        """
        super().__init__()
        self.save_hyperparameters()
        # Checkpoints keep plain mappings: they load with weights_only=True, which unpickles no class of ours.
        self.hparams.update(rollout=saved(rollout), training=saved(training))
        self.automatic_optimization = False
        self.rollout, self.training_args = rollout, training
        choices = {"reference_device": (reference_device, DEVICES),
                   "reference_quantization": (reference_quantization, QUANTIZATIONS)}
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"model.{name}", f"must be one of {', '.join(allowed)}, got {value!r}")
        for name, least in (("eval_every_n_steps", 0), ("sample_every_n_steps", 0)):
            if getattr(self.hparams, name) < least:
                raise ConfigError(f"model.{name}", f"must be at least {least}, got {getattr(self.hparams, name)}")
        check_injection_scale(injection_scale)
        if eval_every_n_steps == 0 and best_export_dir is not None:
            raise ConfigError("model.best_export_dir", "keeps the best pair by held-out FVE, but eval_every_n_steps is "
                              "0 (evaluation off); unset best_export_dir (export_dir still exports) or evaluate")
        self.verbalizer: Verbalizer | None = None
        self.reconstructor: Reconstructor | None = None
        self.best_fve = float("-inf")
        self.last_heldout: dict | None = None

    def configure_model(self) -> None:
        """Build both models (once; a checkpoint's weights are loaded over them afterwards) and, unless
        ``rollout.kl_coef`` is 0, the frozen reference from the starting AV. Sharding strategies
        (``nla.modules.fsdp``) shard them right after this hook."""
        if self.verbalizer is not None:
            return
        dm, hp = self.trainer.datamodule, self.hparams
        precision.check_trainer(self.trainer, self.training_args.optimizer)
        self.prompts, self.d, self.layer = dm.prompts, dm.d, dm.layer
        self.check_data(dm)
        # Trained weights are float32 masters whatever data.source.target.dtype (the frozen uses') says.
        trained = replace(dm.target_args, dtype=self.training_args.trained_dtype)
        if hp.sft_export is None:
            rank_zero_warn("model.sft_export is unset: GRPO starts from the target model itself (ablation only)")
            with field_scope("data.source.target"):
                check_trainable(trained)
            scale = dm.auto_injection_scale if hp.injection_scale == "auto" else float(hp.injection_scale)
            verbalizer = Verbalizer(load_causal_lm(trained), dm.tokenizer, dm.marker, scale)
            reconstructor = Reconstructor.from_target(trained, dm.layer)
        else:
            root = Path(hp.sft_export)
            verbalizer, prompts = load_verbalizer(root / "av", dtype=trained.dtype, trainable_adapter=True)
            reconstructor = Reconstructor.from_pretrained(root / "ar", dtype=trained.dtype)
            if prompts.av_prompt_ids != dm.prompts.av_prompt_ids or reconstructor.layer != dm.layer:
                raise ConfigError("model.sft_export", f"{root} was trained with other prompts or another layer "
                                  f"than data (layer {dm.layer}); use the data settings of the SFT run")
        training = self.training_args
        if training.verbalizer_lora is not None and not lora.has_lora(verbalizer.model):
            lora.wrap(verbalizer.model, training.verbalizer_lora, "model.training.verbalizer_lora")
        if training.reconstructor_lora is not None:
            lora.wrap(reconstructor.model, training.reconstructor_lora, "model.training.reconstructor_lora")
        self.verbalizer, self.reconstructor = verbalizer, reconstructor
        # Without a KL term the reference would cost a model's memory and a forward per rollout for nothing.
        self.reference = None if not self.rollout.kl_coef else build_reference(
            verbalizer, hp.sft_export, hp.reference_quantization, hp.reference_device,
            *precision.frozen_storage(self.trainer))

    @property
    def pair(self) -> Pair:
        """The trained AV and AR as a ``Pair`` (a view: the same modules)."""
        return Pair(self.verbalizer, self.reconstructor, self.prompts, self.layer)

    def fit_plan(self) -> FitPlan:
        """What this run trains, writes and generates, for the pre-flight."""
        hp = self.hparams
        exports = {f"model.{key}": hp[key] for key in ("export_dir", "best_export_dir") if hp[key]}
        return FitPlan(trains=("verbalizer", "reconstructor"), adapters_only=self.training_args.uses_lora,
                       exports=exports, starts_from=None if hp.sft_export is None else ("model.sft_export", hp.sft_export),
                       generated=("model.rollout.max_new_tokens", self.rollout.max_new_tokens),
                       reconstructor_reads_answers=True)

    def check_data(self, datamodule) -> None:
        """The rl batch is the prompts of one step (also run by the pre-flight)."""
        hp = self.hparams
        if hp.prompts_per_step is not None and hp.prompts_per_step != datamodule.batch_size:
            raise ConfigError("model.prompts_per_step", f"is {hp.prompts_per_step} but data.batch_size is "
                              f"{datamodule.batch_size}; the rl batch size is the number of prompts per step")

    def configure_callbacks(self) -> list:
        return [NonFiniteGuard(self.training_args.max_nonfinite_steps)]

    def configure_optimizers(self):
        t = self.training_args
        return [optim.adamw([optim.param_group(name, module, lr)], t.betas, t.weight_decay, t.optimizer)
                for name, module, lr in (("verbalizer", self.verbalizer, t.verbalizer_lr),
                                         ("reconstructor", self.reconstructor, t.reconstructor_lr))]

    def on_train_start(self) -> None:
        b = self.trainer.datamodule.batch_size
        g, micro = self.rollout.samples_per_prompt, self.rollout.micro_batch_size
        micro_steps = -(-b * g // micro)
        rank_zero_info(f"GRPO: {b} prompts/step x {g} samples/prompt = {b * g} sequences/step; "
                       f"micro-batch {micro} -> {micro_steps} micro-batches/step = {micro_steps} accumulation "
                       f"steps per optimizer step; AR trains on the valid ones of the same sequences")
        if self.hparams.memory_probe:
            with self.trainer.precision_plugin.forward_context():
                memory_probe(self.pair, micro, self.rollout.max_new_tokens)
        if self.global_step == 0 and self.hparams.eval_at_start and self.hparams.eval_every_n_steps:
            # The starting pair (the SFT export) through the same greedy AV -> AR pipeline: the point
            # every later val/fve is compared against.
            self.evaluate(progress_bar=False)

    def _sample_seed(self) -> int:
        """Keyed by (seed, step, process): a resumed run draws what the uninterrupted one would, and each
        data-parallel process draws its own samples."""
        key = [self.hparams.seed, self.global_step, self.global_rank]
        return int(np.random.SeedSequence(key).generate_state(1)[0])

    def training_step(self, batch: dict) -> None:
        rl, hp = batch["rl"], self.hparams
        opt_av, opt_ar = self.optimizers()
        self.verbalizer.eval()
        self.reconstructor.eval()
        rollout = collect(self.pair, self.reference, rl, self.rollout, self._sample_seed())
        start = time.perf_counter()
        opt_av.zero_grad()
        stats = av_loss(self.verbalizer, rollout, self.rollout, self.manual_backward)
        self.clip_gradients(opt_av, gradient_clip_val=hp.gradient_clip, gradient_clip_algorithm="norm")
        opt_av.step()
        opt_ar.zero_grad()
        ar = ar_loss(self.pair, rollout, self.rollout.micro_batch_size, self.manual_backward)
        if ar is not None:
            self.clip_gradients(opt_ar, gradient_clip_val=hp.gradient_clip, gradient_clip_algorithm="norm")
            self.trainer.strategy.optimizer_step(opt_ar.optimizer, closure=lambda: None, model=self)
        self._log_rollout(rollout, stats, ar, time.perf_counter() - start, len(rl["vector"]))
        # Here rather than in a batch-end hook: checkpoint callbacks run first there, and the
        # checkpoint of this step must already hold the best FVE this step may set.
        if hp.eval_every_n_steps and self.global_step % hp.eval_every_n_steps == 0:
            self.evaluate()

    def _log_rollout(self, rollout, stats: dict, ar: float | None, update_s: float, prompts: int) -> None:
        mask, rewards, valid = rollout.mask, rollout.rewards, rollout.valid
        lengths = mask.sum(dim=1).float()
        variance = self.trainer.datamodule.heldout_variance
        metrics = {
            "train/reward_mean": rewards.mean(), "train/reward_std": rewards.std(correction=0),
            "train/frac_reward_zero_std": fraction_zero_spread(rewards),
            "train/entropy": rollout.entropy[mask].mean() if mask.any() else 0.0,
            "train/clip_ratio": stats["clip_ratio"], "train/av_loss": stats["loss"],
            "train/completion_length_mean": lengths.mean(), "train/completion_length_max": lengths.max(),
            "train/truncated_rate": rollout.truncated.float().mean(),
            "train/extraction_failure_rate": (~valid).float().mean(), "train/cjk_rate": cjk_rate(rollout.texts),
            "train/injected_fraction": rollout.injected_fraction,
            "time/generate_s": rollout.seconds["generate"], "time/score_s": rollout.seconds["score"],
            "time/update_s": update_s,
            "train/generated_tokens_per_s": float(lengths.sum()) / max(rollout.seconds["generate"], 1e-9),
        }
        if "kl" in stats:
            metrics["train/kl"] = stats["kl"]
        if ar is not None:
            baseline = variance if variance else fve_variance(rollout.vectors[valid].float())
            metrics["train/ar_loss"] = ar
            metrics["train/rollout_fve"] = fve(rollout.mse[valid].mean(), baseline)
        self.log_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items()},
                      on_step=True, on_epoch=False, batch_size=prompts)
        step = self.global_step
        every = self.hparams.sample_every_n_steps
        if every and step % every == 0:
            cache = self.trainer.datamodule.cache
            contexts = [cache.record(index)["context"] for index in self._indices[:4]]
            table = rollout_sample_table(rollout.texts, rollout.rewards.reshape(-1).tolist(), contexts)
            for logger in self.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_text("train/samples", table, step)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Cache indices of this batch, repeated per sample, for the sample table's context column.
        self._indices = batch["rl"]["index"].repeat_interleave(self.rollout.samples_per_prompt).tolist()

    def evaluate(self, progress_bar: bool = True) -> float:
        """Greedy AV -> AR on the held-out split: log ``val/fve`` (invalid answers scored as
        orthogonal) and export the pair when it beats the best so far. Hooks outside training steps
        cannot ``self.log``, so they pass ``progress_bar=False`` and only the loggers record it."""
        hp = self.hparams
        result = self._heldout()
        if progress_bar:
            self.log_dict({f"val/{k}": torch.as_tensor(v, dtype=torch.float32) for k, v in result.items()},
                          on_step=True, on_epoch=False, logger=False)
        for logger in self.loggers:
            logger.log_metrics({f"val/{k}": float(v) for k, v in result.items()}, step=self.global_step)
        value = float(result["fve"])
        # Rank 0 decides: exporting sharded models is collective, so every process must agree.
        if self.trainer.strategy.broadcast(value > self.best_fve):
            self.best_fve = value
            if hp.best_export_dir is not None:
                self._export(hp.best_export_dir, self.last_heldout, "model.best_export_dir")
        return value

    def _heldout(self) -> dict:
        """The held-out round trip now (``heldout_fve``); also kept, with its step, for the exports.
        Inside a training step it already runs in the step's precision context; entering it again
        here gives the evaluations outside steps (the starting pair's, the final pair's) the same."""
        dm = self.trainer.datamodule
        with fsdp.gathered(self.verbalizer, self.reconstructor), self.trainer.precision_plugin.forward_context():
            result, trip = heldout_fve(self.pair, dm.val_dataloader(), dm.heldout_variance,
                                       self.rollout.max_new_tokens, self.rollout.micro_batch_size,
                                       self.hparams.eval_max_batches)
        rows = result.pop("rows")
        self.last_heldout = {**result, "rows": rows, "step": int(self.global_step), "trip": trip}
        return result

    def on_fit_end(self) -> None:
        if self.hparams.export_dir is not None:
            # The final pair's own figure: measured now unless the last evaluation was at this step.
            if self.last_heldout is None or self.last_heldout["step"] != self.global_step:
                self._heldout()
            self._export(self.hparams.export_dir, self.last_heldout, "model.export_dir")

    def _export(self, directory: str, result: dict | None, field: str) -> None:
        """Write the pair to ``directory`` (the setting ``field``), recording the held-out round trip
        ``result`` (from ``_heldout``) it was measured with, if any."""
        # Every process calls this: sharded weights are gathered together, then only rank 0 writes.
        verbalizer, reconstructor = fsdp.full_copies(self.verbalizer, self.reconstructor)
        # Every process reads its own rows, as in the held-out round trip: the metric gathers them all.
        frozen = None
        if result is not None and self.hparams.sft_export is not None:
            frozen = self._frozen_figures(result["trip"])
        if not self.trainer.is_global_zero:
            return
        dm = self.trainer.datamodule
        training = {"steps": self.global_step, "heldout_variance": dm.heldout_variance,
                    "sft_export": self.hparams.sft_export}
        if result is not None:
            measured = dict(rows=result["rows"], documents=dm.split_documents("validation", result["rows"]),
                            variance=dm.heldout_variance, step=result["step"], valid_rate=float(result["valid_rate"]),
                            max_new_tokens=int(self.rollout.max_new_tokens), decoding="greedy",
                            add_generation_prompt=True)
            training["figures"] = {"round_trip": figure("round_trip", fve=result["fve"], mse=result["mse"],
                                                        cosine=float(result["cosine"]), **measured)}
            if frozen is not None:
                training["figures"]["round_trip_frozen_reconstructor"] = figure(
                    "round_trip_frozen_reconstructor", fve=frozen["fve"], mse=frozen["mse"],
                    cosine=frozen["cosine"], reconstructor=str(Path(self.hparams.sft_export) / "ar"), **measured)
        pair = Pair(verbalizer, reconstructor, self.prompts, self.layer, base_model=dm.target_args.name_or_path,
                    base_fingerprint=dm.base_fingerprint)
        export_pair(directory, pair, stage="grpo", training=training,
                    merge_adapters=lora.merge_on_export(self.training_args.verbalizer_lora), field=field)

    def _frozen_figures(self, trip) -> dict[str, float]:
        """The round trip's explanations read by the SFT stage's AR, which never trained on the AV's own
        answers: a gain that only the co-adapted AR can read shows as a gap to the round trip."""
        ar = Reconstructor.from_pretrained(Path(self.hparams.sft_export) / "ar", dtype=self.training_args.trained_dtype)
        reader = Pair(None, ar.eval().to(self.device), self.prompts, self.layer)
        with self.trainer.precision_plugin.forward_context():
            figures = frozen_fve(reader, trip, self.trainer.datamodule.heldout_variance,
                                 self.rollout.micro_batch_size)
        del reader, ar
        return figures

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nla_best_fve"] = self.best_fve

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.best_fve = checkpoint.get("nla_best_fve", float("-inf"))
