"""What the GRPO module runs besides its step: the held-out evaluation and the start-up memory probe."""

from __future__ import annotations

from itertools import islice

import torch

from nla.core.metrics import FractionOfVarianceExplained
from nla.models.pair import Pair

@torch.no_grad()
def heldout_fve(pair: Pair, loader, variance: float | None, max_new_tokens: int, micro_batch_size: int,
                max_batches: int | None) -> dict[str, float]:
    """The pair's greedy round trip (``Pair.round_trip``) over the first ``max_batches`` batches of a
    held-out ``loader``, the AV writing one loader batch at a time. Returns ``fve`` (against the
    held-out split's own variance when given), ``mse``, ``cosine``, ``valid_rate`` and ``rows``; rows
    without a parsed explanation count as orthogonal predictions rather than being left out."""
    vectors = [batch["vector"] for batch in islice(loader, max_batches)]
    trip = pair.round_trip(torch.cat(vectors) if vectors else torch.zeros(0, pair.d_model),
                           max_new_tokens=max_new_tokens, batch_size=loader.batch_size,
                           reconstruct_batch_size=micro_batch_size)
    metric = FractionOfVarianceExplained(pair.d_model, variance=variance).to(trip.predictions.device)
    metric.update(trip.predictions, trip.targets)
    values = metric.compute_all()
    return {"fve": float(values["fve"]), "mse": float(values["mse"]), "cosine": float(values["cosine"]),
            "valid_rate": trip.valid_rate, "rows": len(trip.explanations)}


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
