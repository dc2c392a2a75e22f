"""What the GRPO module runs besides its step: held-out evaluation, the start-up memory probe and the
TensorBoard table of rollout samples."""

from __future__ import annotations

from itertools import islice

import torch

from nla.evaluation.round_trip import round_trip
from nla.metrics import FractionOfVarianceExplained
from nla.modules.reconstructor import Reconstructor
from nla.modules.rollout import Rollout, RolloutArgs
from nla.modules.verbalizer import Verbalizer

CONTEXT_TAIL = 160
"""Characters of context shown before each sampled explanation."""


@torch.no_grad()
def heldout_fve(verbalizer: Verbalizer, reconstructor: Reconstructor, prompts, loader, d: int,
                variance: float | None, args: RolloutArgs, max_batches: int | None, pad: int) -> dict[str, float]:
    """Greedy AV -> AR reconstruction for held-out rows. Returns ``fve`` (against the held-out
    split's own variance when given), ``mse``, ``cosine``, ``valid_rate`` and ``rows``; rows without a
    parsed explanation count as orthogonal predictions rather than being left out."""
    trip = round_trip(verbalizer, reconstructor, prompts, islice(loader, max_batches), args.max_new_tokens,
                      args.micro_batch_size, pad)
    metric = FractionOfVarianceExplained(d, variance=variance).to(trip.predictions.device)
    metric.update(trip.predictions, trip.targets)
    values = metric.compute_all()
    return {"fve": float(values["fve"]), "mse": float(values["mse"]), "cosine": float(values["cosine"]),
            "valid_rate": trip.valid_rate, "rows": len(trip.explanations)}


def memory_probe(verbalizer: Verbalizer, reconstructor: Reconstructor, prompts, micro: int, max_new_tokens: int) -> None:
    """One forward+backward of each model on ``micro`` rows of the longest sequence a step can hold
    (the AV prompt plus ``max_new_tokens``; an AR prompt around that many tokens), gradients dropped
    afterwards. An out-of-memory then shows before the first (slow) rollout, not hours in, when
    the sampled answers first reach the cap."""
    device = next(verbalizer.parameters()).device
    prompt = prompts.av_prompt_ids
    ids = torch.tensor([prompt + [prompt[-1]] * max_new_tokens] * micro, device=device)
    vectors = torch.ones(micro, reconstructor.d_model, device=device)
    verbalizer(ids, torch.ones_like(ids), vectors).logits.float().mean().backward()
    verbalizer.injector.unload()
    width = len(prompts.ar_ids("")) + max_new_tokens
    ids = torch.full((micro, width), prompt[-1], device=reconstructor.head.weight.device)
    reconstructor(ids, torch.ones_like(ids)).square().mean().backward()
    verbalizer.zero_grad(set_to_none=True)
    reconstructor.zero_grad(set_to_none=True)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def sample_table(rollout: Rollout, cache, indices: list[int], rows: int = 4) -> str:
    """A markdown table of the first ``rows`` answers: context tail, answer, reward."""
    lines = ["| context (tail) | answer | reward |", "|---|---|---|"]
    rewards = rollout.rewards.reshape(-1).tolist()
    for row in range(min(rows, len(rollout.texts))):
        context = cache.record(indices[row])["context"][-CONTEXT_TAIL:]
        lines.append(f"| …{_cell(context)} | {_cell(rollout.texts[row])} | {rewards[row]:.3f} |")
    return "\n".join(lines)
