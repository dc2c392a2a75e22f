"""What the GRPO module runs besides its step: the held-out evaluation and the start-up memory probe."""

from __future__ import annotations

from itertools import islice

import torch

from nla.core.maths import orthogonal_to
from nla.core.metrics import FractionOfVarianceExplained
from nla.models.pair import Pair, RoundTrip

def _figures(predictions: torch.Tensor, targets: torch.Tensor, variance: float | None) -> dict[str, float]:
    metric = FractionOfVarianceExplained(targets.shape[-1], variance=variance).to(predictions.device)
    metric.update(predictions, targets)
    values = metric.compute_all()
    return {"fve": float(values["fve"]), "mse": float(values["mse"]), "cosine": float(values["cosine"])}


@torch.no_grad()
def heldout_fve(pair: Pair, loader, variance: float | None, max_new_tokens: int, micro_batch_size: int,
                max_batches: int | None) -> tuple[dict[str, float], RoundTrip]:
    """The pair's greedy round trip (``Pair.round_trip``) over the first ``max_batches`` batches of a
    held-out ``loader``, the AV writing one loader batch at a time. Returns ``fve`` (against the
    held-out split's own variance when given), ``mse``, ``cosine``, ``valid_rate`` and ``rows``, and
    the round trip itself; rows without a parsed explanation count as orthogonal predictions rather
    than being left out."""
    vectors = [batch["vector"] for batch in islice(loader, max_batches)]
    trip = pair.round_trip(torch.cat(vectors) if vectors else torch.zeros(0, pair.d_model),
                           max_new_tokens=max_new_tokens, batch_size=loader.batch_size,
                           reconstruct_batch_size=micro_batch_size)
    return {**_figures(trip.predictions, trip.targets, variance), "valid_rate": trip.valid_rate,
            "rows": len(trip.explanations)}, trip


@torch.no_grad()
def frozen_fve(reader: Pair, trip: RoundTrip, variance: float | None, micro_batch_size: int) -> dict[str, float]:
    """``fve``, ``mse`` and ``cosine`` of the round trip's explanations read by ``reader``'s AR instead
    of the one that trained with the AV (rows without an answer stay orthogonal, as in the trip)."""
    predictions = orthogonal_to(trip.targets)
    kept = [row for row, text in enumerate(trip.explanations) if text is not None]
    if kept:
        read = reader.reconstruct([trip.explanations[row] for row in kept], batch_size=micro_batch_size)
        predictions[kept] = read.to(predictions.device, predictions.dtype)
    return _figures(predictions, trip.targets, variance)


def memory_probe(pair: Pair, micro: int, max_new_tokens: int) -> None:
    """One forward+backward of each model on ``micro`` rows of the longest sequence a step can hold
    (the AV prompt plus ``max_new_tokens``; an AR prompt around that many tokens), gradients dropped
    afterwards. An out-of-memory then shows before the first (slow) rollout, not hours in, when
    the sampled answers first reach the cap."""
    verbalizer, reconstructor, prompts = pair.verbalizer, pair.reconstructor, pair.prompts
    device = next(verbalizer.parameters()).device
    prompt = prompts.av_prompt_ids
    ids = torch.tensor([prompt + [prompt[-1]] * max_new_tokens] * micro, device=device)
    vectors = torch.ones(micro, reconstructor.d_model, device=device)
    with verbalizer.keeping_vectors():
        verbalizer(ids, torch.ones_like(ids), vectors).logits.float().mean().backward()
    width = len(prompts.ar_ids("")) + max_new_tokens
    ids = torch.full((micro, width), prompt[-1], device=reconstructor.head.weight.device)
    reconstructor(ids, torch.ones_like(ids)).square().mean().backward()
    verbalizer.zero_grad(set_to_none=True)
    reconstructor.zero_grad(set_to_none=True)
