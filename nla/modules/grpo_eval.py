"""What the GRPO module runs besides its step: held-out evaluation, the start-up memory probe and the
TensorBoard table of rollout samples."""

from __future__ import annotations

import torch
from torch import Tensor

from nla.metrics import FractionOfVarianceExplained
from nla.modules.reconstructor import Reconstructor
from nla.modules.rollout import Rollout, RolloutArgs, reconstruct
from nla.modules.verbalizer import Verbalizer

CONTEXT_TAIL = 160
"""Characters of context shown before each sampled explanation."""


def orthogonal_to(targets: Tensor) -> Tensor:
    """A vector orthogonal to each row of ``targets`` [n, d]: how an answer without an explanation
    scores, as in the training rewards (normalised MSE 2)."""
    unit = targets / targets.norm(dim=-1, keepdim=True)
    basis = torch.zeros_like(unit)
    # The axis the target leans on least: never parallel to it, so the projection leaves a real vector.
    basis[torch.arange(len(unit)), unit.abs().argmin(dim=-1)] = 1.0
    return basis - (basis * unit).sum(dim=-1, keepdim=True) * unit


@torch.no_grad()
def heldout_fve(verbalizer: Verbalizer, reconstructor: Reconstructor, prompts, loader, d: int,
                variance: float | None, args: RolloutArgs, max_batches: int | None, pad: int) -> dict[str, float]:
    """Greedy AV answer -> AR reconstruction for held-out rows. Returns ``fve`` (against the held-out
    split's own variance when given), ``mse``, ``cosine`` and ``valid_rate``; rows without a parsed
    explanation count as orthogonal predictions rather than being left out."""
    device = next(verbalizer.parameters()).device
    metric = FractionOfVarianceExplained(d, variance=variance).to(device)
    rows = valid_rows = 0
    for number, batch in enumerate(loader):
        if max_batches is not None and number >= max_batches:
            break
        vectors = batch["vector"].to(device).float()
        samples = verbalizer.sample(vectors, batch["av_prompt_ids"].to(device), batch["av_prompt_mask"].to(device),
                                    max_new_tokens=args.max_new_tokens, greedy=True)
        kept = [i for i, (text, cut) in enumerate(zip(samples.parsed, samples.truncated)) if text is not None and not cut]
        predictions = orthogonal_to(vectors)
        if kept:
            predictions[kept] = reconstruct(reconstructor, prompts, [samples.parsed[i] for i in kept],
                                            args.micro_batch_size, pad).to(predictions.dtype)
        metric.update(predictions, vectors)
        rows, valid_rows = rows + len(vectors), valid_rows + len(kept)
    values = metric.compute_all()
    return {"fve": float(values["fve"]), "mse": float(values["mse"]), "cosine": float(values["cosine"]),
            "valid_rate": valid_rows / max(rows, 1)}


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
