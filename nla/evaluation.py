"""Held-out evaluation of trained pairs with uncertainty: the round trip row by row, the baselines and
bootstrap intervals.

A training run logs one held-out FVE number; comparing two stages honestly needs more: the same rows
for every pair, the mean predictor and the shuffled control on those rows, and intervals from
resampling *documents* (positions of one document are correlated, so resampling rows alone would
make intervals too narrow). Differences between pairs are bootstrapped paired, on the same resamples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nla.maths import fve, normalized_mse
from nla.modules.reconstructor import Reconstructor
from nla.modules.rollout import reconstruct
from nla.modules.verbalizer import Verbalizer


def orthogonal_to(targets: Tensor) -> Tensor:
    """A vector orthogonal to each row of ``targets`` [n, d]: how an answer without an explanation
    scores, as in the training rewards (normalised MSE 2)."""
    unit = targets / targets.norm(dim=-1, keepdim=True)
    basis = torch.zeros_like(unit)
    # The axis the target leans on least: never parallel to it, so the projection leaves a real vector.
    basis[torch.arange(len(unit)), unit.abs().argmin(dim=-1)] = 1.0
    return basis - (basis * unit).sum(dim=-1, keepdim=True) * unit


@dataclass
class RoundTrip:
    """Greedy AV -> AR results of one pair on a fixed list of held-out rows."""

    predictions: Tensor
    """[n, d] float32 AR reconstructions; rows without a parsed explanation hold a vector orthogonal
    to their target (normalised MSE 2), as in the training rewards."""
    targets: Tensor
    """[n, d] float32 the held-out vectors, on the same device as ``predictions``."""
    explanations: list[str | None]
    """The parsed explanation of each row (None: truncated or malformed)."""

    @property
    def valid_rate(self) -> float:
        return sum(text is not None for text in self.explanations) / max(len(self.explanations), 1)


@torch.no_grad()
def round_trip(verbalizer: Verbalizer, reconstructor: Reconstructor, prompts, batches, max_new_tokens: int,
               micro_batch_size: int, pad: int) -> RoundTrip:
    """Every row of ``batches`` (held-out batches of ``NLADataModule``) through greedy AV -> AR."""
    device = next(verbalizer.parameters()).device
    predictions, targets, explanations = [], [], []
    for batch in batches:
        vectors = batch["vector"].to(device).float()
        samples = verbalizer.sample(vectors, batch["av_prompt_ids"].to(device), batch["av_prompt_mask"].to(device),
                                    max_new_tokens=max_new_tokens, greedy=True)
        parsed = [None if cut else text for text, cut in zip(samples.parsed, samples.truncated)]
        kept = [i for i, text in enumerate(parsed) if text is not None]
        rows = orthogonal_to(vectors)
        if kept:
            rows[kept] = reconstruct(reconstructor, prompts, [parsed[i] for i in kept], micro_batch_size,
                                     pad).to(rows.dtype)
        predictions.append(rows)
        targets.append(vectors)
        explanations.extend(parsed)
    if not predictions:
        empty = torch.zeros(0, reconstructor.d_model, device=device)
        return RoundTrip(empty, empty, [])
    return RoundTrip(torch.cat(predictions), torch.cat(targets), explanations)


def mean_predictor_mse(targets: Tensor, mean: Tensor) -> np.ndarray:
    """Per-row MSE of predicting ``mean`` (a training split's mean normalised vector, NOT rescaled to
    norm √d) for normalised ``targets``: the predictor FVE 0 stands for, measured rather than assumed."""
    d = targets.shape[-1]
    unit = targets.double() / targets.double().norm(dim=-1, keepdim=True) * d**0.5
    return (unit - mean.double()).square().mean(dim=-1).numpy()


def derangement(count: int, seed: int) -> Tensor:
    """A permutation of ``count`` rows that moves every row (the shuffled control never pairs a
    vector with its own explanation)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(count, generator=generator)
        if count < 2 or not bool((order == torch.arange(count)).any()):
            return order


def row_mse(predictions: Tensor, targets: Tensor) -> np.ndarray:
    return normalized_mse(predictions.float(), targets.float()).double().numpy()


@dataclass
class Interval:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


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


def fve_interval(mse: np.ndarray, variance: float, draws: list[np.ndarray]) -> Interval:
    """FVE of the rows' mean MSE with a 95% percentile interval over ``draws``."""
    values = [float(fve(mse[rows].mean(), variance)) for rows in draws]
    low, high = np.percentile(values, [2.5, 97.5])
    return Interval(float(fve(mse.mean(), variance)), float(low), float(high))


def difference_interval(mse_a: np.ndarray, mse_b: np.ndarray, variance: float, draws: list[np.ndarray]) -> Interval:
    """FVE(a) − FVE(b) on the same rows, with a paired 95% interval (each draw resamples both alike)."""
    values = [float((mse_b[rows].mean() - mse_a[rows].mean()) / variance) for rows in draws]
    low, high = np.percentile(values, [2.5, 97.5])
    return Interval(float((mse_b.mean() - mse_a.mean()) / variance), float(low), float(high))
