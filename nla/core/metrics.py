"""Fraction of variance explained and a weighted mean as torchmetrics ``Metric``s that accumulate exactly.

Every state is a sum, so batches of any size and any number of processes combine by addition; the
formulas live in ``nla.core.maths`` and are shared with the tensor-level helpers.

The states are float64 whatever precision Lightning trains in: ``ExactStates`` keeps them out of the
whole-module cast of ``bf16-true`` (which would accumulate the held-out FVE and losses in bfloat16),
and updates run outside autocast (``bf16-mixed``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import Module
from torchmetrics import MeanMetric, Metric

from nla.core.maths import (
    cosine,
    fve,
    meannorm_from_sums,
    normalized_mse,
    rawvar_from_sums,
    target_sums,
)


class ExactStates:
    """Mixin for a ``Metric``: its tensor states keep their dtype through module casts (``.to(dtype)``,
    as Lightning's ``bf16-true``/``16-true`` precision applies to the whole LightningModule) and only
    move device; an explicit ``set_dtype`` still converts them."""

    def _apply(self, fn: Callable, exclude_state: tuple = ()) -> Module:
        if self._dtype_convert:
            return super()._apply(fn, exclude_state)
        before = {key: (getattr(self, key), default) for key, default in self._defaults.items()
                  if isinstance(default, Tensor)}
        dtype = self._dtype
        this = super()._apply(fn, exclude_state)
        for key, (state, default) in before.items():
            moved = getattr(this, key)
            if moved.dtype != state.dtype:
                # The untouched originals, moved only: a cast there and back would already have rounded them.
                setattr(this, key, state.to(moved.device))
                this._defaults[key] = default.to(moved.device)
        this._dtype = dtype
        return this


class WeightedMean(ExactStates, MeanMetric):
    """``torchmetrics.MeanMetric`` with float64 states that no precision plugin casts."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.set_dtype(torch.float64)

    def update(self, value: Tensor | float, weight: Tensor | float | None = None) -> None:
        with torch.autocast(self.device.type, enabled=False):
            super().update(value, weight)


class FractionOfVarianceExplained(ExactStates, Metric):
    """FVE = 1 - mean normalised MSE / Var, with the paper's "rawvar" Var of the targets seen.

    Args:
        d: vector size (the model's hidden size).
        variance: a fixed baseline Var, e.g. ``nla.core.maths.fve_variance`` of the held-out targets,
            used instead of the variance of the targets accumulated here. Use it when the
            evaluated set is too small or too skewed to estimate its own variance.

    ``compute()`` returns the FVE; ``compute_all()`` adds the reporting numbers. States are float64
    sums (the variance is a difference of near-equal terms), so the metric needs a device with
    float64 (CPU, CUDA).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    sum_mse: Tensor
    sum_cosine: Tensor
    sum_normalized: Tensor
    sum_sq_norm: Tensor
    count: Tensor

    def __init__(self, d: int, variance: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if d <= 0:
            raise ValueError(f"d: expected a positive vector size, got {d}")
        if variance is not None and not variance > 0:
            raise ValueError(f"variance: expected a positive baseline variance or None, got {variance}")
        self.d = d
        self.variance = variance
        scalar = torch.zeros((), dtype=torch.float64)
        self.add_state("sum_mse", default=scalar.clone(), dist_reduce_fx="sum")
        self.add_state("sum_cosine", default=scalar.clone(), dist_reduce_fx="sum")
        self.add_state("sum_normalized", default=torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_sq_norm", default=scalar.clone(), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch of predictions and targets, both ``[..., d]`` (any leading shape)."""
        if pred.shape != target.shape or pred.shape[-1] != self.d:
            raise ValueError(
                f"pred, target: expected matching shapes [..., {self.d}], "
                f"got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        pred, target = pred.detach(), target.detach()
        with torch.autocast(pred.device.type, enabled=False):
            self.sum_mse += normalized_mse(pred, target).double().sum()
            self.sum_cosine += cosine(pred, target).double().sum()
            sum_normalized, sum_sq_norm, count = target_sums(target)
        self.sum_normalized += sum_normalized
        self.sum_sq_norm += sum_sq_norm
        self.count += count

    def _baseline(self) -> Tensor:
        if self.variance is not None:
            return torch.tensor(self.variance, dtype=torch.float64, device=self.sum_mse.device)
        return rawvar_from_sums(self.sum_normalized, self.sum_sq_norm, self.count)

    def compute(self) -> Tensor:
        """FVE over everything seen since the last reset (NaN before any update)."""
        return fve(self.sum_mse / self.count, self._baseline())

    def compute_all(self) -> dict[str, Tensor]:
        """All numbers for a report, synced across processes like ``compute()``:

        ``fve`` (as ``compute()``), ``mse``, ``cosine`` (means), ``variance`` (the baseline used),
        ``target_variance`` (rawvar of the targets seen), and, for REPORTING ONLY,
        ``meannorm_variance`` and ``fve_meannorm`` (the weaker baseline that inflates FVE), and ``count``
        (the rows seen, over all processes).
        """
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            mse = self.sum_mse / self.count
            meannorm = meannorm_from_sums(self.sum_normalized, self.sum_sq_norm, self.count)
            values = {
                "fve": fve(mse, self._baseline()),
                "mse": mse,
                "cosine": self.sum_cosine / self.count,
                "variance": self._baseline(),
                "target_variance": rawvar_from_sums(self.sum_normalized, self.sum_sq_norm, self.count),
                "meannorm_variance": meannorm,
                "fve_meannorm": fve(mse, meannorm),
                "count": self.count,
            }
            return {name: value.clone() for name, value in values.items()}
