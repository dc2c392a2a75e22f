"""Normalisation, the normalised MSE and the fraction of variance explained (FVE), as pure functions.

Every vector is compared at norm sqrt(d) (d = last dim), so the MSE between two of them is
2(1 - cos): 0 identical, 2 orthogonal, 4 opposite. FVE = 1 - MSE / Var with the paper's "rawvar"
baseline Var = mean ||v_hat - mu||^2 / d over the normalised targets.

The dataset-level quantities are written once, in terms of sums that add across batches and
processes (``target_sums`` and the ``*_from_sums`` functions); the whole-tensor helpers and
``nla.core.metrics.FractionOfVarianceExplained`` both go through them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EPS = 1e-12


def rescale(v: Tensor, norm: float | Tensor, eps: float = EPS) -> Tensor:
    """``v * (norm / ||v||)`` along the last dim, in ``v``'s dtype; a zero vector stays zero.

    Computed in float32 (float64 input stays float64): Gemma residuals reach ~8e4, whose square
    overflows float16.
    """
    wide = v.to(torch.promote_types(v.dtype, torch.float32))
    length = torch.linalg.vector_norm(wide, dim=-1, keepdim=True)
    return (wide * (norm / length.clamp_min(eps))).to(v.dtype)


def normalized(v: Tensor) -> Tensor:
    """``v`` rescaled to norm sqrt(d), d = ``v.shape[-1]``."""
    return rescale(v, math.sqrt(v.shape[-1]))


def normalized_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample MSE over dims after rescaling both to norm sqrt(d); float32, shape ``[...]``.

    Equals 2(1 - cos(pred, target)) for non-zero vectors.
    """
    diff = normalized(pred.float()) - normalized(target.float())
    return diff.square().mean(dim=-1)


def cosine(pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample cosine similarity along the last dim, float32, shape ``[...]`` (0 for a zero vector)."""
    return (normalized(pred.float()) * normalized(target.float())).mean(dim=-1)


def fve(mse: Tensor | float, variance: Tensor | float) -> Tensor | float:
    """Fraction of variance explained: ``1 - mse / variance``."""
    return 1 - mse / variance


def target_sums(targets: Tensor) -> tuple[Tensor, Tensor, int]:
    """Sufficient statistics of ``targets [..., d]``: (sum of normalised vectors [d], sum of their
    squared norms, count), normalised and summed in float64.

    float64 because the variance is a difference of two near-equal terms (S2/N - ||mu||^2) that
    cancels badly on low-variance layers (Gemma: Var = 0.03) over many samples.
    """
    flat = normalized(targets.double()).reshape(-1, targets.shape[-1])
    return flat.sum(dim=0), flat.square().sum(), flat.shape[0]


def rawvar_from_sums(sum_normalized: Tensor, sum_sq_norm: Tensor, count: Tensor | int) -> Tensor:
    """The paper's baseline Var = mean ||v_hat - mu||^2 / d = (S2/N - ||mu||^2) / d.

    With every target non-zero S2/N = d, so this is 1 - ||mu||^2 / d.
    """
    d = sum_normalized.shape[-1]
    mu = sum_normalized / count
    return (sum_sq_norm / count - mu.square().sum()) / d


def meannorm_from_sums(sum_normalized: Tensor, sum_sq_norm: Tensor, count: Tensor | int) -> Tensor:
    """REPORTING ONLY, not the paper's FVE baseline: mean normalised MSE of predicting
    normalise(mu) for every sample, mu the mean of the normalised targets.

    Expanding ||mu_hat - v_hat||^2 with ||mu_hat|| = sqrt(d) gives 1 + S2/(N d) - 2 ||mu|| / sqrt(d),
    i.e. 2(1 - ||mu|| / sqrt(d)) when no target is zero. At mu = 0 this is the limit 2 (a random
    direction is orthogonal on average), not the 1 a zero prediction would score. With
    m = ||mu|| / sqrt(d) it exceeds the rawvar baseline 1 - m^2 by (1 - m)^2, so it inflates FVE
    most where the variance is high (Qwen, Llama): label it wherever it is shown.
    """
    d = sum_normalized.shape[-1]
    mu_norm = torch.linalg.vector_norm(sum_normalized / count)
    return 1 + sum_sq_norm / (count * d) - 2 * mu_norm / math.sqrt(d)


def fve_from_sums(
    sum_mse: Tensor, sum_normalized: Tensor, sum_sq_norm: Tensor, count: Tensor | int
) -> Tensor:
    """Rawvar FVE of a dataset from sums that add exactly across batches and processes."""
    return fve(sum_mse / count, rawvar_from_sums(sum_normalized, sum_sq_norm, count))


def fve_variance(targets: Tensor) -> Tensor:
    """The paper's "rawvar" baseline of ``targets [..., d]``: mean ||v_hat - mu||^2 / d (float64)."""
    return rawvar_from_sums(*target_sums(targets))


def meannorm_variance(targets: Tensor) -> Tensor:
    """REPORTING ONLY: the weaker "meannorm" baseline of ``targets [..., d]`` (see
    ``meannorm_from_sums``); never use it as the FVE denominator."""
    return meannorm_from_sums(*target_sums(targets))


ORTHOGONAL_MSE = 2.0
"""Normalised MSE of a prediction orthogonal to its target: how an answer without an explanation
scores, in the rewards and in every held-out figure."""


def orthogonal_to(targets: Tensor) -> Tensor:
    """A vector orthogonal to each row of ``targets`` [n, d]: the stand-in prediction of a row whose
    answer has no explanation, at normalised MSE ``ORTHOGONAL_MSE``."""
    unit = targets / targets.norm(dim=-1, keepdim=True)
    basis = torch.zeros_like(unit)
    # The axis the target leans on least: never parallel to it, so the projection leaves a real vector.
    basis[torch.arange(len(unit)), unit.abs().argmin(dim=-1)] = 1.0
    return basis - (basis * unit).sum(dim=-1, keepdim=True) * unit


def derangement(count: int, seed: int) -> Tensor:
    """A seeded permutation of ``range(count)`` that moves every element when ``count >= 2``: a random
    cycle. The shuffled controls pair each text with another row's vector, never its own."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator)
    result = torch.empty(count, dtype=torch.long)
    result[order] = order.roll(-1)
    return result
