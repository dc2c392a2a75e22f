"""The precision policy: float32 trained weights, bf16 compute, frozen models stored in the compute dtype.

- Trained weights (the AV, the AR with its head, LoRA adapters) are float32 "masters", whatever
  ``data.source.target.dtype`` says: AdamW updates at LR 1e-5 are below half a bf16 step for most weights
  and round away on bf16 weights. bf16 compute comes from ``trainer.precision: bf16-mixed``
  (autocast) on one device, or from ``NLAFSDPStrategy``'s ``param_dtype``.
- bf16 trained weights (the modules' ``dtype: bfloat16``, or ``trainer.precision: bf16-true``) are
  refused unless the optimizer compensates for bf16 rounding (``nla.modules.optim.COMPENSATED``).
- float16 is refused in every form (``trainer.precision`` 16, 16-mixed, 16-true), as for weights and
  caches: residual norms of Gemma-like models (6e4-8e4) overflow it.
- Frozen models (the GRPO reference) are stored in the dtype the policy computes in, so the
  reference costs half the memory under bf16 and matches the policy exactly at the first step.
- ``data.source.target.dtype`` is the dtype of frozen uses only: the target while caching, ``nla explain``.
"""

from __future__ import annotations

import torch
from lightning.pytorch.trainer.states import TrainerFn

from nla.core.errors import ConfigError
from nla.models.loading import DTYPES
from nla.modules.optim import COMPENSATED

CAST_PRECISIONS = {"bf16-true": torch.bfloat16}
"""Lightning precisions that cast the whole LightningModule, trained weights included (float16 ones are refused)."""
AUTOCAST_PRECISIONS = {"bf16-mixed": torch.bfloat16}
FLOAT16_PRECISIONS = ("16", "16-mixed", "16-true")
"""``trainer.precision`` values that compute in float16 (``check_precision`` refuses them)."""

FIX = ("keep float32 weights and compute in bf16 with trainer.precision: bf16-mixed (or NLAFSDPStrategy's "
       f"param_dtype: bfloat16), or set model.training.optimizer: {COMPENSATED[0]}")


def trained_dtype(dtype: str | None, optimizer: str, field: str = "model.training.dtype") -> str:
    """The dtype the trained models load in: ``float32`` (also for None), or ``bfloat16`` when
    ``optimizer`` compensates for bf16 rounding."""
    if dtype is None or dtype == "float32":
        return "float32"
    if dtype != "bfloat16":
        raise ConfigError(field, f"must be float32 or bfloat16, got {dtype!r}")
    if optimizer not in COMPENSATED:
        raise ConfigError(field, f"is {dtype}: AdamW updates at small learning rates round away on {dtype} "
                          f"weights; {FIX}")
    return dtype


def check_precision(value) -> None:
    """Refuse ``trainer.precision`` ``value`` when it computes in float16. The CLI judges the value as
    written, before the Trainer is built: on CPU Lightning turns 16-mixed into bf16-mixed, so a config
    passed there would overflow on a GPU."""
    if str(value) in FLOAT16_PRECISIONS:
        raise ConfigError("trainer.precision", f"is {value}: float16 overflows on the residuals of Gemma-like models "
                          "(norms 6e4-8e4), as float16 weights and caches would; use bf16-mixed (float32 weights, "
                          "bf16 compute) or 32-true")


def check_trainer(trainer, optimizer: str) -> None:
    """Refuse float16 (``check_precision``) and a fit whose precision plugin casts the trained weights
    to bf16 (``bf16-true``) unless ``optimizer`` compensates for bf16 rounding. Other stages (validate,
    test) train nothing."""
    check_precision(trainer.precision)
    if trainer.state.fn != TrainerFn.FITTING or trainer.precision not in CAST_PRECISIONS:
        return
    if optimizer not in COMPENSATED:
        raise ConfigError("trainer.precision", f"is {trainer.precision}: it casts the trained weights, whose "
                          f"small-LR AdamW updates then round away; {FIX}")


def compute_dtype(trainer) -> torch.dtype:
    """The dtype the policy computes in: the sharding strategy's ``param_dtype`` when it sets one,
    else what the precision plugin computes in (float32 for ``32-true``)."""
    param_dtype = getattr(getattr(trainer.strategy, "mixed_precision", None), "param_dtype", None)
    if param_dtype is not None:
        return param_dtype
    return {**CAST_PRECISIONS, **AUTOCAST_PRECISIONS}.get(trainer.precision, torch.float32)


def frozen_storage(trainer) -> tuple[torch.dtype, bool]:
    """``(dtype, buffers)`` for a frozen copy of the policy: its parameters in the compute dtype, and
    its floating buffers too (``buffers``) exactly when the precision plugin casts the policy's
    (``bf16-true``): the copy then computes what the policy computes, bit for bit. Otherwise the
    buffers (rotary frequencies) stay float32, as the policy's do."""
    return compute_dtype(trainer), trainer.precision in CAST_PRECISIONS


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)
