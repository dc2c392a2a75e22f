"""``TrainingArgs``: what both training modules train with, under one name per idea.

SFT and GRPO nest it as ``model.init_args.training``. It checks itself when built (keyword
construction only), so a module, a test or a tool that builds one gets the same one-line errors
as the command line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from nla.core.errors import ConfigError
from nla.models.lora import LoraArgs
from nla.modules.optim import OPTIMIZERS
from nla.modules.precision import trained_dtype

FIELD = "model.training"
"""Where ``TrainingArgs`` sits in a fit config (error messages name its keys under it)."""


@dataclass(frozen=True, kw_only=True)
class TrainingArgs:
    """The optimizer, precision and adapters of the trained AV and AR, and the non-finite guard."""

    verbalizer_lr: float = 1e-5
    """AV learning rate (SFT: the peak of its warmup and cosine schedule; GRPO: constant). 1e-5 is the
    paper's, at batch 256; scale it by sqrt(batch / 256) for other batch sizes."""
    reconstructor_lr: float = 5e-5
    """AR learning rate. 5e-5 is the best AR rate of the reference's scan; the AR starts as an identity
    map of the target's own residual, so it tolerates a larger step than the AV."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas; (0.9, 0.95) as in the reference."""
    weight_decay: float = 0.0
    """AdamW weight decay; 0 as in the reference."""
    optimizer: str = "adamw"
    """``adamw``, ``adamw8bit`` or ``paged_adamw8bit`` (CUDA only; both need bitsandbytes,
    ``nla[quant]``), or ``adamw_bf16_stochastic`` (stochastic rounding), the one optimizer that
    accepts bf16 trained weights."""
    dtype: str = "float32"
    """Dtype of the trained weights: ``float32`` masters (bf16 compute comes from ``trainer.precision:
    bf16-mixed`` or the FSDP strategy's ``param_dtype``); ``bfloat16`` only with ``optimizer:
    adamw_bf16_stochastic``. ``data.source.target.dtype`` is not read for them."""
    verbalizer_lora: LoraArgs | None = None
    """Train a LoRA adapter on the AV instead of all its weights (``nla[lora]``); its
    ``merge_on_export`` decides the exported AV layout. GRPO from an SFT export that holds an adapter
    continues that adapter and reads only ``merge_on_export`` here."""
    reconstructor_lora: LoraArgs | None = None
    """Train a LoRA adapter on the AR's blocks; its head stays fully trained and the export is always
    merged."""
    max_nonfinite_steps: int = 10
    """A step whose losses or gradients hold NaN or inf is skipped (``train/skipped_steps``); this many
    in a row stop the run (exit 2) with the last checkpoint and export untouched. 0 never stops."""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"{FIELD}.optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        trained_dtype(self.dtype, self.optimizer, f"{FIELD}.dtype")
        for name in ("verbalizer_lr", "reconstructor_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{FIELD}.{name}", f"must be positive, got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"{FIELD}.betas", f"must be two numbers in [0, 1), got {list(self.betas)}")
        if self.weight_decay < 0:
            raise ConfigError(f"{FIELD}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.max_nonfinite_steps < 0:
            raise ConfigError(f"{FIELD}.max_nonfinite_steps", f"must be at least 0, got {self.max_nonfinite_steps}")

    @property
    def trained_dtype(self) -> str:
        """The dtype the trained models load in."""
        return trained_dtype(self.dtype, self.optimizer, f"{FIELD}.dtype")

    @property
    def uses_lora(self) -> bool:
        return self.verbalizer_lora is not None or self.reconstructor_lora is not None


def check_injection_scale(value: float | str) -> None:
    """``model.injection_scale``: a positive number, or ``auto`` (the 75th percentile of the cached norms)."""
    if isinstance(value, str) and value != "auto":
        raise ConfigError("model.injection_scale", f"must be a positive number or 'auto', got {value!r}")
    if not isinstance(value, str) and not value > 0:
        raise ConfigError("model.injection_scale", f"must be positive, got {value}")


def saved(value) -> dict:
    """A settings dataclass as the plain mapping a checkpoint stores (checkpoints load with
    ``weights_only=True``, which unpickles no classes of ours)."""
    return asdict(value)
