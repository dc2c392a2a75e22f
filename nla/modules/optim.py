"""Optimizer and learning-rate schedule construction shared by the training modules.

One AdamW holds every trained model as its own parameter group, each with its own learning rate, and
one ``LambdaLR`` scales all groups alike. Keeping a single optimizer lets Lightning's automatic
optimization apply ``gradient_clip_val`` and ``accumulate_grad_batches`` to everything, and lets a
checkpoint restore the optimizer and schedule together.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from nla.core.errors import ConfigError
from nla.modules.stochastic_adamw import StochasticRoundingAdamW


def param_group(name: str, module: nn.Module, lr: float) -> dict:
    """The trainable parameters of ``module`` as a named AdamW group with its own learning rate."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"model.training.{name}_lr", f"the {name} has no trainable parameters")
    return {"name": name, "params": params, "lr": lr}


COMPENSATED = ("adamw_bf16_stochastic",)
"""Optimizers that keep bf16 trained weights moving at small learning rates."""
OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit", *COMPENSATED)


def adamw(
    groups: Iterable[dict], betas: tuple[float, float], weight_decay: float, kind: str = "adamw"
) -> torch.optim.Optimizer:
    """AdamW over ``groups`` (from ``param_group``); every group keeps its own ``lr``.

    ``kind``: ``adamw`` (torch), ``adamw8bit`` (bitsandbytes: both moments stored in 8 bits, a quarter
    of the optimizer memory; tensors under 4096 elements keep 32-bit state), ``paged_adamw8bit``
    (the same with its state in CUDA unified memory, paged out to host RAM under memory pressure) or
    ``adamw_bf16_stochastic`` (``nla.modules.stochastic_adamw``): for trained weights stored in bf16,
    where a plain update below half a bf16 step (most of them at LR 1e-5) rounds away; it updates in
    float32 and writes bf16 weights back with stochastic rounding, unbiased, at 2 bytes per weight
    plus 8 of float32 moments (float32 masters: 4 + 8).
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {kind!r}; choose from {', '.join(OPTIMIZERS)}")
    groups = list(groups)
    if not groups:
        raise ConfigError("model", "nothing to train: enable at least one model")
    if kind == "adamw":
        return torch.optim.AdamW(groups, betas=tuple(betas), weight_decay=weight_decay)
    if kind == "adamw_bf16_stochastic":
        return StochasticRoundingAdamW(groups, betas=tuple(betas), weight_decay=weight_decay)
    return _bnb_adamw(kind)(groups, betas=tuple(betas), weight_decay=weight_decay)


def _bnb_adamw(kind: str) -> type[torch.optim.Optimizer]:
    if kind == "paged_adamw8bit" and not torch.cuda.is_available():
        raise ConfigError("model.training.optimizer", "paged_adamw8bit pages its state through CUDA unified memory and "
                          "needs a CUDA device; use adamw8bit on this machine")
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError("model.training.optimizer", f"{kind} needs bitsandbytes: pip install 'nla[quant]'") from None
    return bitsandbytes.optim.PagedAdamW8bit if kind == "paged_adamw8bit" else bitsandbytes.optim.AdamW8bit


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear from 1/(warmup+1) up to 1 over ``warmup_steps``, then a cosine from 1 down
    to 0 at ``total_steps``. The first step already moves (a zero LR would waste it)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps(trainer) -> int:
    """Optimizer steps the run will take: ``trainer.max_steps`` when set, else Lightning's estimate
    from epochs, batches and accumulation."""
    steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
    if not math.isfinite(steps) or steps < 1:
        raise ConfigError("trainer.max_steps", "set max_steps (or max_epochs) so the LR schedule has an end")
    return int(steps)


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, steps: int) -> dict:
    """A per-step ``LambdaLR`` for ``warmup_cosine``, in the form ``configure_optimizers`` returns."""
    if warmup_steps < 0:
        raise ConfigError("model.warmup_steps", f"must be >= 0, got {warmup_steps}")
    schedule = LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup_steps, steps))
    return {"scheduler": schedule, "interval": "step", "frequency": 1}
