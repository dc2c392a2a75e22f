"""``GRPOModule``: joint RL of the AV (GRPO) and the AR (regression on the same rollouts).

Batch semantics, in plain numbers: each training batch holds ``prompts_per_step`` (B) vectors, each
gets ``samples_per_prompt`` (G) answers, so a step generates B x G sequences; every forward/backward
pass holds at most ``micro_batch_size`` of them, and each model takes ONE optimizer step per
rollout. ``trainer.global_step`` counts rollouts (only the AV optimizer's steps are counted; the AR
steps through the strategy directly), so ``max_steps`` is the number of GRPO steps.

Optimization is manual. Dropout is kept off in every pass: with one update per rollout the ratio of
the update's log-probs to the sampling log-probs is then exactly 1 at the update, as GRPO assumes.
Sampling draws from a generator seeded by (seed, global_step, global rank), so a resumed run samples
exactly what the uninterrupted one would, and data-parallel processes draw different samples; the
data position, both models and both optimizers come back from the checkpoint. The reference AV (KL penalty) is rebuilt from the starting weights on every start.
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
from nla.modules.grpo.loss import AGGREGATION_MODES, KL_DEFAULT, KL_ESTIMATORS, REWARD_KINDS, fraction_zero_spread
from nla.core.maths import fve, fve_variance
from nla.models.sidecar import figure
from nla.modules import fsdp, optim, precision
from nla.models import lora
from nla.models.loading import check_trainable, load_causal_lm
from nla.modules.grpo.evaluation import heldout_fve, memory_probe
from nla.modules.sample_table import rollout_sample_table
from nla.modules.nonfinite import NonFiniteGuard
from nla.models.reconstructor import Reconstructor
from nla.modules.grpo.reference import DEVICES, build_reference
from nla.modules.grpo.rollout import RolloutArgs, ar_loss, av_loss, collect
from nla.models.sampling import SAMPLERS
from nla.models.pair import Pair
from nla.models.pair_export import export_pair
from nla.models.pair_loading import load_verbalizer
from nla.models.verbalizer import Verbalizer, cjk_rate

class GRPOModule(LightningModule):
    """GRPO on the AV and regression on the AR, from an SFT export (see the module docstring)."""

    def __init__(
        self,
        sft_export: str | None = None,
        prompts_per_step: int | None = None,
        samples_per_prompt: int = 8,
        micro_batch_size: int = 8,
        max_new_tokens: int = 150,
        temperature: float = 1.0,
        reward: str = "neg_mse",
        advantage: str = "group",
        clip_epsilon: float = 0.2,
        kl_coef: float = 0.01,
        kl_estimator: str = KL_DEFAULT,
        loss_aggregation: str = "token_mean",
        av_lr: float = 1e-5,
        ar_lr: float = 5e-5,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        gradient_clip: float = 1.0,
        reference_device: str = "same",
        injection_scale: float | None = None,
        eval_every_n_steps: int = 25,
        eval_max_batches: int | None = None,
        export_dir: str | None = None,
        final_export_dir: str | None = None,
        samples_every_n_steps: int = 25,
        seed: int = 0,
        memory_probe: bool = True,
        optimizer: str = "adamw",
        verbalizer_lora: lora.LoraArgs | None = None,
        reconstructor_lora: lora.LoraArgs | None = None,
        reference_quantization: str = "none",
        dtype: str = "float32",
        eval_at_start: bool = True,
        max_nonfinite_steps: int = 10,
        sampler: str = "auto",
        unfinished: str = "orthogonal",
        unfinished_penalty: float = 0.5,
        overlong_buffer: int = 0,
        overlong_penalty: float = 1.0,
        uniform_groups: str = "zero",
        greedy_answer: bool = False,
    ) -> None:
        """
        Args:
            sft_export: Directory holding ``av/`` and ``ar/`` of the SFT stage. None starts both from
                the target model itself (tests and ablations only: without SFT the AV writes no tags).
            prompts_per_step: B, vectors per step; must equal ``data.batch_size`` (None: take it).
            samples_per_prompt: G, answers sampled per vector; advantages compare them.
            micro_batch_size: Sequences per forward/backward pass (memory scales with it, not B x G).
            max_new_tokens: Answer cap; a cut answer scores as orthogonal.
            temperature: Sampling temperature of the rollouts (evaluation is greedy).
            reward: ``neg_mse`` or ``neg_log_mse``.
            advantage: ``group`` (per-prompt std) or ``batch`` (batch std).
            clip_epsilon: PPO clip range.
            kl_coef: Weight of the KL penalty to the frozen starting AV.
            kl_estimator: ``k2`` (default: pulls the AV towards the reference, its expected gradient
                being that of KL(AV || reference)), ``k1`` (the reference code's choice; as a loss its
                expected gradient is zero, so it only adds noise) or ``k3`` (the gradient of the
                reverse KL(reference || AV)). See ``nla.modules.grpo.loss.kl_penalty``.
            loss_aggregation: ``token_mean``, ``sequence_mean`` or ``sum_norm``.
            av_lr: AV AdamW learning rate (constant).
            ar_lr: AR AdamW learning rate (constant).
            betas: AdamW betas of both optimizers.
            weight_decay: AdamW weight decay of both optimizers.
            gradient_clip: Max gradient norm, per model.
            reference_device: ``same`` (beside the policy) or ``cpu`` (moved in for its pass only).
            injection_scale: Only without ``sft_export``: the AV's injection norm (None: the cache's p75).
            eval_every_n_steps: Held-out greedy AV -> AR evaluation (``val/fve``) every N steps; 0 turns
                evaluation off (then ``export_dir``, which keeps the best-evaluated pair, must be unset).
            eval_max_batches: Held-out batches per evaluation (None: all held-out rows, which can take
                minutes: the AV writes an answer for every row).
            export_dir: Where the pair with the best ``val/fve`` so far is exported (None: no export).
            final_export_dir: Where the pair at the end of training is exported (None: no export).
                The best pair was chosen on the held-out split's validation half: compare either on
                the test half (``nla quickstart --grpo_pair``).
            samples_every_n_steps: A TensorBoard text table of rollout samples every N steps.
            seed: Seed of the rollout sampling (combined with the step and the process rank).
            memory_probe: Before the first step, run one forward+backward of each model at the
                longest sequence a step can produce, so an out-of-memory shows at once.
            optimizer: ``adamw``, ``adamw8bit``, ``paged_adamw8bit`` (CUDA only) or ``adamw_bf16_stochastic``
                (bf16 weights written back with stochastic rounding), for both models.
            verbalizer_lora: Train the AV through a LoRA adapter. When the SFT export holds an adapter
                (exported unmerged), RL continues that adapter and only ``merge_on_export`` is read here.
                The KL reference is then a frozen copy of the starting adapter on the same base.
            reconstructor_lora: Train the AR's blocks through a LoRA adapter (its head stays fully trained).
            reference_quantization: ``none``, ``8bit`` or ``4bit``: load the frozen reference AV from
                ``sft_export`` in that precision instead of copying the policy (bitsandbytes).
            dtype: Dtype of the trained weights: ``float32`` masters (bf16 compute comes from
                ``trainer.precision: bf16-mixed`` or the FSDP strategy's ``param_dtype``); ``bfloat16``
                only with ``optimizer: adamw_bf16_stochastic``. ``data.model.dtype`` is not read for them.
                The frozen reference is stored in the compute dtype.
            eval_at_start: Also evaluate the starting pair before the first step (when evaluation is on),
                the point later ``val/fve`` values are compared against.
            max_nonfinite_steps: A step whose losses or gradients hold NaN or inf is skipped (logged as
                ``train/skipped_steps``); this many such steps in a row stop the run (exit 2) with the
                last checkpoint and export untouched. 0 never stops (``nla.modules.nonfinite``).
            sampler: Rollout sampling engine: ``auto`` (``static`` on CUDA, ``loop`` elsewhere),
                ``loop`` (a plain loop, every row prefilled) or ``static`` (one prefill per prompt
                shared by its G answers, a static KV cache, a CUDA-graph decode step on CUDA). All
                engines sample the same tokens for the same seed.
            unfinished: Reward of an answer cut by the cap: ``orthogonal`` (that of MSE 2, as any invalid
                answer) or ``scored`` (the AR reads what it wrote, minus ``unfinished_penalty``).
                Evaluation counts it as orthogonal either way (``RolloutArgs.unfinished``).
            unfinished_penalty: Subtracted from a scored unfinished answer's reward.
            overlong_buffer: A cap-aware length penalty over the last this many tokens before the cap,
                rising linearly to ``overlong_penalty`` (``nla.modules.grpo.loss.overlong_penalty``); 0: off.
            overlong_penalty: Reward lost by an answer that reaches the cap under ``overlong_buffer``.
            uniform_groups: Advantage of a group whose rewards are all equal: ``zero`` or ``batch``
                (against the batch mean and std, so a group that failed entirely is pushed down).
            greedy_answer: Decode the first of each group's answers greedily, as evaluation does, so
                a greedy loop that sampling rarely shows is scored and pushed down (needs G >= 2).
        """
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        precision.trained_dtype(dtype, optimizer)  # before any work: float16 and unaided bf16 are refused
        choices = {"reward": (reward, REWARD_KINDS), "advantage": (advantage, ("group", "batch")),
                   "kl_estimator": (kl_estimator, KL_ESTIMATORS), "reference_device": (reference_device, DEVICES),
                   "loss_aggregation": (loss_aggregation, AGGREGATION_MODES), "sampler": (sampler, SAMPLERS),
                   "unfinished": (unfinished, ("orthogonal", "scored")), "uniform_groups": (uniform_groups, ("zero", "batch"))}
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"model.{name}", f"must be one of {', '.join(allowed)}, got {value!r}")
        for name, least in (("samples_per_prompt", 1), ("micro_batch_size", 1), ("max_new_tokens", 1),
                            ("eval_every_n_steps", 0), ("samples_every_n_steps", 1), ("max_nonfinite_steps", 0), ("overlong_buffer", 0)):
            if getattr(self.hparams, name) < least:
                raise ConfigError(f"model.{name}", f"must be at least {least}, got {getattr(self.hparams, name)}")
        if eval_every_n_steps == 0 and export_dir is not None:
            raise ConfigError("model.export_dir", "keeps the best pair by held-out FVE, but eval_every_n_steps is 0 "
                              "(evaluation off); unset export_dir (final_export_dir still exports) or evaluate")
        if overlong_buffer > max_new_tokens:
            raise ConfigError("model.overlong_buffer", f"is {overlong_buffer}; it must not exceed max_new_tokens "
                              f"({max_new_tokens})")
        if greedy_answer and samples_per_prompt < 2:
            raise ConfigError("model.greedy_answer", "needs samples_per_prompt of at least 2 (one greedy answer "
                              "and the sampled ones it is compared with); set samples_per_prompt or turn it off")
        self.args = RolloutArgs(samples_per_prompt, micro_batch_size, max_new_tokens, temperature, reward,
                                advantage, clip_epsilon, kl_coef, kl_estimator, loss_aggregation, sampler,
                                unfinished, unfinished_penalty, overlong_buffer, overlong_penalty, uniform_groups,
                                greedy_answer)
        self.verbalizer: Verbalizer | None = None
        self.reconstructor: Reconstructor | None = None
        self.best_fve = float("-inf")
        self.last_heldout: dict | None = None

    def configure_model(self) -> None:
        """Build both models (once; a checkpoint's weights are loaded over them afterwards) and the
        frozen reference from the starting AV. Sharding strategies (``nla.modules.fsdp``) shard them
        right after this hook."""
        if self.verbalizer is not None:
            return
        dm, hp = self.trainer.datamodule, self.hparams
        precision.check_trainer(self.trainer, hp.optimizer)
        self.prompts, self.d, self.layer = dm.prompts, dm.d, dm.layer
        self.check_data(dm)
        # Trained weights are float32 masters whatever data.model.dtype (the frozen uses') says.
        trained = replace(dm.model_args, dtype=precision.trained_dtype(hp.dtype, hp.optimizer))
        if hp.sft_export is None:
            rank_zero_warn("model.sft_export is unset: GRPO starts from the target model itself (ablation only)")
            with field_scope("data.model"):
                check_trainable(trained)
            scale = hp.injection_scale or dm.auto_injection_scale
            verbalizer = Verbalizer(load_causal_lm(trained), dm.tokenizer, dm.marker, scale)
            reconstructor = Reconstructor.from_backbone(trained, dm.layer)
        else:
            root = Path(hp.sft_export)
            verbalizer, prompts = load_verbalizer(root / "av", dtype=trained.dtype, trainable_adapter=True)
            reconstructor = Reconstructor.from_pretrained(root / "ar", dtype=trained.dtype)
            if prompts.av_prompt_ids != dm.prompts.av_prompt_ids or reconstructor.layer != dm.layer:
                raise ConfigError("model.sft_export", f"{root} was trained with other prompts or another layer "
                                  f"than data (layer {dm.layer}); use the data settings of the SFT run")
        if hp.verbalizer_lora is not None and not lora.has_lora(verbalizer.model):
            lora.wrap(verbalizer.model, hp.verbalizer_lora, "model.verbalizer_lora")
        if hp.reconstructor_lora is not None:
            lora.wrap(reconstructor.model, hp.reconstructor_lora, "model.reconstructor_lora")
        self.verbalizer, self.reconstructor = verbalizer, reconstructor
        self.reference = build_reference(verbalizer, hp.sft_export, hp.reference_quantization, hp.reference_device,
                                         *precision.frozen_storage(self.trainer))

    @property
    def pair(self) -> Pair:
        """The trained AV and AR as a ``Pair`` (a view: the same modules)."""
        return Pair(self.verbalizer, self.reconstructor, self.prompts, self.layer)

    def check_data(self, datamodule) -> None:
        """The rl batch is the prompts of one step (also run by the pre-flight)."""
        hp = self.hparams
        if hp.prompts_per_step is not None and hp.prompts_per_step != datamodule.batch_size:
            raise ConfigError("model.prompts_per_step", f"is {hp.prompts_per_step} but data.batch_size is "
                              f"{datamodule.batch_size}; the rl batch size is the number of prompts per step")

    def configure_callbacks(self) -> list:
        return [NonFiniteGuard(self.hparams.max_nonfinite_steps)]

    def configure_optimizers(self):
        hp = self.hparams
        return [optim.adamw([optim.param_group(name, module, lr)], hp.betas, hp.weight_decay, hp.optimizer)
                for name, module, lr in (("av", self.verbalizer, hp.av_lr), ("ar", self.reconstructor, hp.ar_lr))]

    def on_train_start(self) -> None:
        b = self.trainer.datamodule.batch_size
        g, micro = self.args.samples_per_prompt, self.args.micro_batch_size
        micro_steps = -(-b * g // micro)
        rank_zero_info(f"GRPO: {b} prompts/step x {g} samples/prompt = {b * g} sequences/step; "
                       f"micro-batch {micro} -> {micro_steps} micro-batches/step = {micro_steps} accumulation "
                       f"steps per optimizer step; AR trains on the valid ones of the same sequences")
        if self.hparams.memory_probe:
            with self.trainer.precision_plugin.forward_context():
                memory_probe(self.pair, micro, self.args.max_new_tokens)
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
        rollout = collect(self.pair, self.reference, rl, self.args, self._sample_seed())
        start = time.perf_counter()
        opt_av.zero_grad()
        stats = av_loss(self.verbalizer, rollout, self.args, self.manual_backward)
        self.clip_gradients(opt_av, gradient_clip_val=hp.gradient_clip, gradient_clip_algorithm="norm")
        opt_av.step()
        opt_ar.zero_grad()
        ar = ar_loss(self.pair, rollout, self.args.micro_batch_size, self.manual_backward)
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
            "train/frac_reward_zero_std": fraction_zero_spread(rewards), "train/kl": stats["kl"],
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
        if ar is not None:
            baseline = variance if variance else fve_variance(rollout.vectors[valid].float())
            metrics["train/ar_loss"] = ar
            metrics["train/rollout_fve"] = fve(rollout.mse[valid].mean(), baseline)
        self.log_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items()},
                      on_step=True, on_epoch=False, batch_size=prompts)
        step = self.global_step
        if step % self.hparams.samples_every_n_steps == 0:
            cache = self.trainer.datamodule.cache
            contexts = [cache.record(index)["context"] for index in self._indices[:4]]
            table = rollout_sample_table(rollout.texts, rollout.rewards.reshape(-1).tolist(), contexts)
            for logger in self.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_text("train/samples", table, step)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Cache indices of this batch, repeated per sample, for the sample table's context column.
        self._indices = batch["rl"]["index"].repeat_interleave(self.args.samples_per_prompt).tolist()

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
            if hp.export_dir is not None:
                self._export(hp.export_dir, self.last_heldout)
        return value

    def _heldout(self) -> dict:
        """The held-out round trip now (``heldout_fve``); also kept, with its step, for the exports."""
        dm = self.trainer.datamodule
        with fsdp.gathered(self.verbalizer, self.reconstructor):
            result = heldout_fve(self.pair, dm.val_dataloader(), dm.heldout_variance, self.args.max_new_tokens,
                                 self.args.micro_batch_size, self.hparams.eval_max_batches)
        rows = result.pop("rows")
        self.last_heldout = {**result, "rows": rows, "step": int(self.global_step)}
        return result

    def on_fit_end(self) -> None:
        if self.hparams.final_export_dir is not None:
            # The final pair's own figure: measured now unless the last evaluation was at this step.
            if self.last_heldout is None or self.last_heldout["step"] != self.global_step:
                self._heldout()
            self._export(self.hparams.final_export_dir, self.last_heldout)

    def _export(self, directory: str, result: dict | None = None) -> None:
        """Write the pair to ``directory``, recording the held-out round trip ``result`` (from
        ``_heldout``) it was measured with, if any."""
        # Every process calls this: sharded weights are gathered together, then only rank 0 writes.
        verbalizer, reconstructor = fsdp.full_copies(self.verbalizer, self.reconstructor)
        if not self.trainer.is_global_zero:
            return
        dm = self.trainer.datamodule
        training = {"steps": self.global_step, "heldout_variance": dm.heldout_variance,
                    "sft_export": self.hparams.sft_export}
        if result is not None:
            training["figures"] = {"round_trip": figure(
                "round_trip", fve=result["fve"], mse=result["mse"], rows=result["rows"],
                documents=dm.split_documents("validation", result["rows"]), variance=dm.heldout_variance,
                step=result["step"], cosine=float(result["cosine"]), valid_rate=float(result["valid_rate"]),
                max_new_tokens=int(self.args.max_new_tokens), decoding="greedy", add_generation_prompt=True)}
        pair = Pair(verbalizer, reconstructor, self.prompts, self.layer, base_model=dm.model_args.name_or_path)
        export_pair(directory, pair, stage="grpo", training=training,
                    merge_adapters=lora.merge_on_export(self.hparams.verbalizer_lora))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nla_best_fve"] = self.best_fve

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.best_fve = checkpoint.get("nla_best_fve", float("-inf"))
