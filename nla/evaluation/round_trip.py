"""The round trip's controls, as pure functions of its tensors (``nla.models.pair.Pair.round_trip``
runs the models).

A training run logs one held-out FVE number; comparing pairs honestly needs more: the same rows for
every pair, the mean predictor and the shuffled control on those rows (and intervals, from
``nla.evaluation.bootstrap``).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from nla.core.maths import derangement, normalized_mse


def mean_predictor_mse(targets: Tensor, mean: Tensor) -> np.ndarray:
    """Per-row MSE of predicting ``mean`` (a training split's mean normalised vector, NOT rescaled to
    norm √d) for normalised ``targets``: the predictor FVE 0 stands for, measured rather than assumed."""
    d = targets.shape[-1]
    unit = targets.double() / targets.double().norm(dim=-1, keepdim=True) * d**0.5
    return (unit - mean.double()).square().mean(dim=-1).numpy()


def row_mse(predictions: Tensor, targets: Tensor) -> np.ndarray:
    """Per-row normalised MSE, float64."""
    return normalized_mse(predictions.float(), targets.float()).double().numpy()


def shuffled_mse(predictions: Tensor, targets: Tensor, seed: int) -> np.ndarray:
    """Per-row MSE of each reconstruction against another row's vector (a seeded derangement): the
    shuffled control, what explanations score when they carry nothing about their own vector."""
    return row_mse(predictions, targets[derangement(len(targets), seed)])
