"""Document-level bootstrap intervals and paired differences for held-out figures.

Positions of one document are correlated, so resampling rows alone would make intervals too narrow:
every draw resamples whole *documents* with replacement. Differences between two predictors on the
same rows are bootstrapped paired, on the same draws. Every interval is the 2.5 and 97.5 percentiles
of the statistic over the draws, around its value on all rows.

The FVE's denominator is the rows' own variance, so a draw's FVE divides by the variance of the rows
it drew (``RowVariance``): holding it at the full set's value would leave the baseline's own
sampling noise out of the interval and make it too narrow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from nla.core.maths import fve, rawvar_from_sums, target_sums

ALL_ROWS = slice(None)


@dataclass
class Interval:
    value: float
    """The statistic on all rows."""
    low: float
    """2.5th percentile over the bootstrap draws."""
    high: float
    """97.5th percentile over the bootstrap draws."""

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"

    @property
    def beyond_noise(self) -> bool:
        """The interval excludes 0."""
        return self.low > 0 or self.high < 0


class RowVariance:
    """The FVE baseline (rawvar, ``nla.core.maths.fve_variance``) of any subset of the rows of
    ``vectors [n, d]``: ``variance(rows)`` for an index array or ``ALL_ROWS``."""

    def __init__(self, vectors: torch.Tensor) -> None:
        self.vectors = vectors.double().reshape(-1, vectors.shape[-1])

    def __call__(self, rows: np.ndarray | slice = ALL_ROWS) -> float:
        """NaN for rows of one direction: rounding leaves their variance a signed speck, and an FVE
        over it would be an arbitrary huge number rather than undefined."""
        index = rows if isinstance(rows, slice) else torch.as_tensor(rows, dtype=torch.long)
        value = float(rawvar_from_sums(*target_sums(self.vectors[index])))
        return value if value > 1e-12 else float("nan")

    def subset(self, index: np.ndarray) -> RowVariance:
        """The same baseline over rows ``index`` only (renumbered from 0)."""
        return RowVariance(self.vectors[torch.as_tensor(index, dtype=torch.long)])


Variance = float | RowVariance
"""An FVE baseline: one number for every draw, or the drawn rows' own (``RowVariance``)."""


def _variance(variance: Variance, rows: np.ndarray | slice) -> float:
    return variance(rows) if isinstance(variance, RowVariance) else float(variance)


def document_resamples(documents: np.ndarray, resamples: int, seed: int) -> list[np.ndarray]:
    """Row indices of ``resamples`` bootstrap draws that resample whole documents with replacement."""
    rng = np.random.default_rng(seed)
    unique, inverse = np.unique(documents, return_inverse=True)
    members = [np.flatnonzero(inverse == group) for group in range(len(unique))]
    draws = []
    for _ in range(resamples):
        picked = rng.integers(0, len(unique), len(unique))
        draws.append(np.concatenate([members[group] for group in picked]))
    return draws


def bootstrap_interval(statistic: Callable[[np.ndarray | slice], float], draws: list[np.ndarray]) -> Interval:
    """``statistic(rows)`` on all rows with a 95% percentile interval over ``draws``; ``statistic``
    takes an index array (or ``ALL_ROWS``) into the rows. Draws where it is undefined (NaN, e.g. a
    ratio whose denominator vanished) are left out of the percentiles."""
    values = np.array([statistic(rows) for rows in draws], dtype=np.float64)
    values = values[np.isfinite(values)]
    value = float(statistic(ALL_ROWS))
    if not len(values):
        return Interval(value, float("nan"), float("nan"))
    low, high = np.percentile(values, [2.5, 97.5])
    return Interval(value, float(low), float(high))


def fve_interval(mse: np.ndarray, variance: Variance, draws: list[np.ndarray]) -> Interval:
    """FVE of the rows' mean MSE with a 95% percentile interval over ``draws``."""
    return bootstrap_interval(lambda rows: float(fve(mse[rows].mean(), _variance(variance, rows))), draws)


def difference_interval(mse_a: np.ndarray, mse_b: np.ndarray, variance: Variance, draws: list[np.ndarray]) -> Interval:
    """FVE(a) − FVE(b) on the same rows, with a paired 95% interval (each draw resamples both alike)."""
    return bootstrap_interval(
        lambda rows: float((mse_b[rows].mean() - mse_a[rows].mean()) / _variance(variance, rows)), draws)
