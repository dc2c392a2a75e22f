"""The round trip: greedy AV -> AR on held-out rows, row by row, and its two controls.

A training run logs one held-out FVE number; comparing pairs honestly needs more: the same rows for
every pair, the mean predictor and the shuffled control on those rows (and intervals, from
``nla.evaluation.bootstrap``). ``round_trip`` runs the models; the rest are pure functions of its
tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nla.maths import normalized_mse
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


def vector_batches(vectors: Tensor, prompts, size: int) -> list[dict]:
    """``vectors`` [n, d] as the held-out batches ``round_trip`` reads (every row gets the same AV
    prompt, so no padding is needed), ``size`` rows each."""
    prompt = torch.tensor([prompts.av_prompt_ids])
    return [{"vector": chunk, "av_prompt_ids": prompt.expand(len(chunk), -1),
             "av_prompt_mask": torch.ones(len(chunk), prompt.shape[1], dtype=torch.long)}
            for chunk in vectors.split(size)]


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
