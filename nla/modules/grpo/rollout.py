"""One GRPO rollout over an AV (``Verbalizer``) and an AR (``Reconstructor``), as plain functions.

``collect`` samples G answers per prompt, scores them with the AR as it is now (before this step's
update), turns the scores into rewards and advantages, and records the sampling policy's and (with a
KL term) the reference's log-probs of every sampled token. ``av_loss`` and ``ar_loss`` then run the
two updates' forward and backward passes in micro-batches; the caller owns the optimizers.

Sequences are scored right-padded (each row: its real prompt tokens, then its completion), so the
default position ids of a plain forward are the positions the tokens had while sampling.
Gradient accumulation is exact: every micro-batch's loss is weighted by its share of the
aggregation's denominator, so the summed gradients equal those of one pass over the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import time

import torch
import torch.distributed as dist
from torch import Tensor

from nla.modules.grpo.loss import (batch_advantages, group_advantages, kl_penalty, overlong_penalty,
                                   penalized_rewards, policy_loss, trim_at_end_of_turn, uniform_group_advantages)
from nla.core.marker import find_marker_slots
from nla.core.maths import normalized_mse
from nla.modules import fsdp
from nla.models.pair import Pair
from nla.models.reconstructor import Reconstructor
from nla.models.verbalizer import Verbalizer
from nla.core.padding import pad, pad_token_id
from nla.core.prompts import partial_explanation
from nla.modules.grpo.settings import RolloutArgs


@dataclass
class Rollout:
    """N = B x G sampled answers, row ``b * G + g`` being sample g of prompt b."""

    vectors: Tensor
    """[N, d] the vector each answer describes."""
    input_ids: Tensor
    """[N, T] prompt then completion, right-padded."""
    attention_mask: Tensor
    """[N, T] real tokens of ``input_ids``."""
    start: Tensor
    """[N] position of each row's first completion token."""
    completion_ids: Tensor
    """[N, L] the sampled tokens, right-padded."""
    mask: Tensor
    """[N, L] bool: tokens up to and including the first end-of-turn token."""
    truncated: Tensor
    """[N] bool: no end-of-turn token before the cap."""
    valid: Tensor
    """[N] bool: an explanation was parsed (not truncated, tags present)."""
    sampled: Tensor
    """[N] bool: the answer was drawn from the policy; False for the greedy answer of
    ``greedy_answer``, whose reward counts in its group but whose tokens stay out of the AV's loss."""
    explanations: list[str | None]
    """The parsed explanations (None when invalid)."""
    texts: list[str]
    """The decoded answers."""
    mse: Tensor
    """[N] normalised MSE of the AR's reconstruction (NaN where invalid)."""
    rewards: Tensor
    """[B, G] penalised rewards."""
    advantages: Tensor
    """[N] one advantage per answer."""
    old_logprobs: Tensor
    """[N, L] the sampling policy's log-probs of the sampled tokens."""
    ref_logprobs: Tensor | None
    """[N, L] the reference AV's log-probs of the same tokens; None without a KL term (``kl_coef: 0``)."""
    entropy: Tensor
    """[N, L] the sampling policy's entropy at each sampled position."""
    injected_fraction: float
    """Fraction of rows that received their vector while sampling."""
    seconds: dict[str, float]
    """Wall time of ``generate`` (sampling) and ``score`` (AR, policy and reference passes)."""
    slots: Tensor | None = None
    """[N] marker position in each row of ``input_ids`` (found once on the host, so the scoring and
    update passes do not search for it)."""


def micro_batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def right_padded(rows: list[list[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    ids, mask = pad(rows, pad_id, "right")
    return ids.to(device), mask.to(device)


def token_logprobs(verbalizer: Verbalizer, input_ids: Tensor, attention_mask: Tensor, vectors: Tensor,
                   start: Tensor, width: int, entropy: bool = False,
                   slots: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Log-probs ``[n, width]`` of the completion tokens (those at ``start + j``), injection active,
    and optionally the entropy of the distribution each was drawn from. Logits exist only at those
    positions, a chunk at a time (``Verbalizer.completion_logprobs``). Off-row positions are junk
    that the rollout's mask removes."""
    positions = (start[:, None] + torch.arange(width, device=start.device) - 1).clamp(0, input_ids.shape[1] - 1)
    targets = input_ids.gather(1, (positions + 1).clamp_max(input_ids.shape[1] - 1))
    return verbalizer.completion_logprobs(input_ids, attention_mask, vectors, positions, targets, entropy, slots)


def _part(values: Tensor | None, part: slice | Tensor) -> Tensor | None:
    return None if values is None else values[part]


@torch.no_grad()
def policy_logprobs(verbalizer: Verbalizer, rollout: Rollout, micro: int, entropy: bool = False):
    """``token_logprobs`` over the whole rollout in micro-batches, without gradients."""
    width, parts, spreads = rollout.completion_ids.shape[1], [], []
    with verbalizer.keeping_vectors():
        for part in micro_batches(len(rollout.start), micro):
            chosen, spread = token_logprobs(verbalizer, rollout.input_ids[part], rollout.attention_mask[part],
                                            rollout.vectors[part], rollout.start[part], width, entropy,
                                            _part(rollout.slots, part))
            parts.append(chosen)
            spreads.append(spread)
    return torch.cat(parts), torch.cat(spreads) if entropy else None


def collect(pair: Pair, reference, batch: dict, args: RolloutArgs, seed: int | None) -> Rollout:
    """Sample, score and prepare one rollout from an ``rl`` batch (left-padded prompts and vectors).
    ``reference`` has ``logprobs(rollout, micro)`` (see ``nla.modules.grpo.reference``); None (only
    with ``kl_coef: 0``) runs no reference pass."""
    verbalizer, reconstructor = pair.verbalizer, pair.reconstructor
    pad_id = pad_token_id(pair.prompts.tokenizer)
    group = args.samples_per_prompt
    prompt_ids = batch["input_ids"].repeat_interleave(group, dim=0)
    prompt_mask = batch["attention_mask"].repeat_interleave(group, dim=0)
    vectors = batch["vector"].repeat_interleave(group, dim=0)
    began = time.perf_counter()
    # Sharded: gathered once for the whole loop, since processes stop decoding at different steps.
    with fsdp.gathered(verbalizer):
        samples = verbalizer.sample(batch["vector"], batch["input_ids"], batch["attention_mask"],
                                    max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=seed,
                                    group=group, sampler=args.sampler, greedy_answers=int(args.greedy_answer))
    sampled = time.perf_counter()
    device = prompt_ids.device
    host_ids, host_mask = prompt_ids.cpu(), prompt_mask.cpu()
    prompts_real = [row[mask.bool()].tolist() for row, mask in zip(host_ids, host_mask)]
    # Right-padded scoring rows start with the real prompt: the slot moves left by the padding.
    slots = (find_marker_slots(host_ids, verbalizer.marker) - (host_mask == 0).sum(dim=1)).to(device)
    input_ids, attention_mask = right_padded([p + t for p, t in zip(prompts_real, samples.tokens)], pad_id, device)
    completion_ids, completion_mask = right_padded(samples.tokens, pad_id, device)
    mask, _ = trim_at_end_of_turn(completion_ids, completion_mask, verbalizer.stop_ids)
    truncated = torch.tensor(samples.truncated, device=device)
    valid = torch.tensor([text is not None for text in samples.parsed], device=device) & ~truncated
    explanations = [text if ok else None for text, ok in zip(samples.parsed, valid.tolist())]
    # What the AR scores: the valid explanations and, with unfinished answers scored, what those wrote.
    read = [(parsed or partial_explanation(answer)) if cut and args.unfinished == "scored" else text
            for text, parsed, answer, cut in zip(explanations, samples.parsed, samples.texts, samples.truncated)]
    scored = torch.tensor([text is not None for text in read], device=device)
    # float32 whatever the default dtype: under bf16-true Lightning makes it bfloat16 inside a step,
    # which would round the MSEs GRPO ranks (steps of ~0.002 near 0.3).
    mse = torch.full((len(explanations),), float("nan"), dtype=torch.float32, device=device)
    kept = scored.nonzero().squeeze(1)
    # Sharded, gathering is collective: every process gathers, also one without a valid answer (each
    # samples with its own seed, so their counts differ).
    with fsdp.gathered(reconstructor):
        if len(kept):
            predicted = pair.reconstruct([read[i] for i in kept.tolist()], batch_size=args.micro_batch_size)
            mse[kept] = normalized_mse(predicted, vectors[kept].float())
    rewards = penalized_rewards(torch.nan_to_num(mse, nan=2.0), scored, args.reward)
    rewards = rewards - args.unfinished_penalty * (scored & truncated).float()
    rewards = rewards - overlong_penalty(mask.sum(dim=1), args.max_new_tokens, args.overlong_buffer,
                                         args.overlong_penalty)
    rewards = rewards.view(-1, group)
    advantages = (group_advantages if args.advantage == "group" else batch_advantages)(rewards)
    if args.uniform_groups == "batch":
        advantages = uniform_group_advantages(rewards, advantages)
    advantages = advantages.reshape(-1)
    start = torch.tensor([len(p) for p in prompts_real], device=device)
    drawn = torch.arange(len(explanations), device=device) % group >= int(args.greedy_answer)
    rollout = Rollout(vectors, input_ids, attention_mask, start, completion_ids, mask, truncated, valid, drawn,
                      explanations, samples.texts, mse, rewards, advantages, None, None, None,
                      samples.injection.injected_fraction, {"generate": sampled - began}, slots)
    rollout.old_logprobs, rollout.entropy = policy_logprobs(verbalizer, rollout, args.micro_batch_size, entropy=True)
    if reference is not None:
        rollout.ref_logprobs = reference.logprobs(rollout, args.micro_batch_size)
    rollout.seconds["score"] = time.perf_counter() - sampled
    return rollout


def _share(mode: str, mask: Tensor, part: slice) -> float:
    """The micro-batch's weight in the full batch's aggregate: its tokens' share for token_mean, its
    rows' share for the per-row normalised modes."""
    if mode == "token_mean":
        return float(mask[part].sum()) / max(1, int(mask.sum()))
    return mask[part].shape[0] / mask.shape[0]


def av_loss(verbalizer: Verbalizer, rollout: Rollout, args: RolloutArgs,
            backward: Callable[[Tensor], None]) -> dict[str, float]:
    """Clipped surrogate plus ``kl_coef`` x the KL penalty (``args.kl_estimator``) to the reference,
    aggregated over the trimmed tokens of the answers drawn from the policy (``Rollout.sampled``): a
    greedy answer's log-prob ratio and score function are not those of a draw from the policy, so it
    has no place in a policy gradient. ``backward`` is called once per micro-batch on its weighted
    loss. Returns the batch's loss, clip fraction and, with a reference, ``kl``: the token mean of
    the k3 estimate of KL(policy || reference), unbiased and never negative, whichever estimator the
    loss uses."""
    mode, width = args.loss_aggregation, rollout.completion_ids.shape[1]
    rows = rollout.sampled.nonzero().squeeze(1)
    drawn = rollout.mask[rows]
    totals = {"loss": 0.0, "clip_ratio": 0.0, **({} if rollout.ref_logprobs is None else {"kl": 0.0})}
    tokens = max(1, int(drawn.sum()))
    with verbalizer.keeping_vectors():
        for part in micro_batches(len(rows), args.micro_batch_size):
            index, mask = rows[part], drawn[part]
            reference = _part(rollout.ref_logprobs, index)
            logprobs, _ = token_logprobs(verbalizer, rollout.input_ids[index], rollout.attention_mask[index],
                                         rollout.vectors[index], rollout.start[index], width,
                                         slots=_part(rollout.slots, index))
            loss, clipped = policy_loss(logprobs, rollout.old_logprobs[index], reference, rollout.advantages[index],
                                        mask, clip_epsilon=args.clip_epsilon, kl_coef=args.kl_coef,
                                        kl_estimator=args.kl_estimator, mode=mode, max_len=args.max_new_tokens)
            loss = loss * _share(mode, drawn, part)
            backward(loss)
            totals["loss"] += float(loss.detach())
            if reference is not None:
                measured = kl_penalty(logprobs.detach(), reference, "k3", mask)
                totals["kl"] += float(torch.where(mask, measured, 0.0).sum()) / tokens
            totals["clip_ratio"] += float(clipped.sum()) / tokens
    return totals


def ar_loss(pair: Pair, rollout: Rollout, micro: int, backward: Callable[[Tensor], None]) -> float | None:
    """Normalised MSE of the AR on the rollout's valid answers (explanation -> vector), one
    ``backward`` per micro-batch; None when no answer was valid (nothing to train on). Across
    processes: the mean over every process's valid answers, each process running as many passes as
    the busiest one, and None everywhere only when no process has a valid answer."""
    kept = rollout.valid.nonzero().squeeze(1).tolist()
    rows_everywhere, passes, processes = _across_processes(len(kept), -(-len(kept) // micro), rollout.vectors.device)
    if not rows_everywhere:
        return None
    reconstructor, prompts = pair.reconstructor, pair.prompts
    device, total, pad_id = reconstructor.head.weight.device, 0.0, pad_token_id(prompts.tokenizer)
    for index in range(passes):
        rows = kept[index * micro:(index + 1) * micro]
        # A process out of rows still runs the pass (sharded models communicate in each), weightless.
        texts = [rollout.explanations[i] for i in rows] or [""]
        ids, mask = right_padded([prompts.ar_ids(text) for text in texts], pad_id, device)
        predicted = reconstructor(ids, mask, mask.sum(dim=1) - 1)
        if rows:
            # Gradients are averaged over processes: x processes / all rows makes that the mean over all rows.
            weight = len(rows) * processes / rows_everywhere
            loss = Reconstructor.loss(predicted, rollout.vectors[rows].float()) * weight
        else:
            loss = predicted.sum() * 0.0
        backward(loss)
        total += float(loss.detach())
    return total


def _across_processes(rows: int, passes: int, device) -> tuple[int, int, int]:
    """``rows`` summed and ``passes`` maxed over the processes, and their number (this process's own
    values without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows, passes, 1
    total, most = torch.tensor([rows], device=device), torch.tensor([passes], device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(total), int(most), dist.get_world_size()
