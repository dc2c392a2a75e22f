"""GRPO for the AV policy as small pure functions: rewards, advantages, the clipped surrogate, KL and
aggregation over tokens.

Shapes: rewards are ``[B, G]`` (B prompts, G samples each) or flat ``[N]``; per-token tensors are
``[N, T]`` with a boolean ``mask`` of the tokens that count (the response, trimmed at its first
end-of-turn token by ``trim_at_end_of_turn``).
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from torch import Tensor

from nla.core.maths import ORTHOGONAL_MSE

AGGREGATION_MODES = ("token_mean", "sequence_mean", "sum_norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
KL_DEFAULT = "k2"
REWARD_KINDS = ("neg_mse", "neg_log_mse")

# The normalised MSE of two orthogonal vectors: what a failed or truncated rollout is scored as.


def group_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """``(r - mean_g) / (std_g + eps)`` within each group (last dim) of ``rewards [B, G]``.

    A group whose rewards are all equal gets advantage 0 everywhere.
    """
    mean = rewards.mean(dim=-1, keepdim=True)
    # Population std (correction=0): each group's advantages then have unit RMS whatever G is, so
    # the step size does not change with the group size (the sample std would shrink it by
    # sqrt((G - 1) / G)) and G = 1 is defined rather than NaN.
    std = rewards.std(dim=-1, keepdim=True, correction=0)
    return (rewards - mean) / (std + eps)


def batch_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """``(r - mean_g) / (std_batch + eps)``: centred within each group of ``rewards [B, G]``, scaled by
    the population std of all B * G raw rewards.

    Centring per group keeps the baseline prompt-specific; one batch-wide scale stops a group whose
    rewards differ only by noise from being blown up to unit advantages, and weights groups by how
    much their rewards actually spread.
    """
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(correction=0)
    return (rewards - mean) / (std + eps)


def clipped_surrogate(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, epsilon: float = 0.2
) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate per token, negated for gradient descent, and where the clip was active.

    ``logprobs``/``old_logprobs``/``mask`` are ``[N, T]``; ``advantages`` is ``[N]`` (one per
    sequence) or ``[N, T]``. Returns ``(loss [N, T], clipped [N, T] bool)``, both zero off the mask.
    ``clipped`` marks tokens whose gradient the clip removed (ratio above 1 + eps with a positive
    advantage, or below 1 - eps with a negative one); its masked mean is the clip fraction.
    """
    mask = mask.bool()
    if advantages.dim() == logprobs.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    # Zero the log-ratio off the mask before exp: padding log-probs can be arbitrary, and an inf
    # ratio there would turn into a NaN gradient even after the loss is masked out.
    log_ratio = torch.where(mask, logprobs - old_logprobs, 0.0)
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped_ratio = ratio.clamp(1 - epsilon, 1 + epsilon)
    surrogate = torch.minimum(unclipped, clipped_ratio * advantages)
    clipped = ((ratio > 1 + epsilon) & (advantages > 0)) | ((ratio < 1 - epsilon) & (advantages < 0))
    return torch.where(mask, -surrogate, 0.0), clipped & mask


def kl_penalty(
    logprobs: Tensor, ref_logprobs: Tensor, estimator: str = KL_DEFAULT, mask: Tensor | None = None
) -> Tensor:
    """Per-token KL penalty to the reference from the log-probs of tokens sampled from the policy,
    to be added to the loss. With r = logp - logp_ref:

    - ``"k2"`` (default): r^2 / 2. Its expected gradient on the policy's own samples is exactly the
      gradient of KL(policy || reference), so it pulls the policy back towards the reference; its
      value is a biased (second-order) estimate of that KL.
    - ``"k1"``: r. Its value is an unbiased estimate of KL(policy || reference), but as a loss its
      expected gradient is zero (E[grad log pi] = 0): it adds noise and pulls nowhere.
    - ``"k3"``: exp(-r) + r - 1, never negative. Its value is an unbiased estimate of
      KL(policy || reference), but its expected gradient is that of the reverse KL(reference || policy).

    Zero off ``mask`` when given.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator: expected one of {', '.join(KL_ESTIMATORS)}, got {estimator!r}")
    log_ratio = logprobs - ref_logprobs
    if mask is not None:
        # As in clipped_surrogate: keep padding out of exp so it cannot produce inf or NaN.
        log_ratio = torch.where(mask.bool(), log_ratio, 0.0)
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    return (-log_ratio).exp() + log_ratio - 1


def aggregate(
    per_token: Tensor, mask: Tensor, mode: str = "token_mean", max_len: int | None = None
) -> Tensor:
    """Reduce ``per_token [N, T]`` over the tokens in ``mask`` to a scalar.

    - ``"token_mean"``: sum over all masked tokens / their count; every token weighs the same, so
      long sequences dominate.
    - ``"sequence_mean"``: mean over each sequence's tokens, then over sequences; every sequence
      weighs the same, so a token of a short sequence weighs more.
    - ``"sum_norm"``: sum / (N * ``max_len``) with a constant ``max_len`` (the generation cap); the
      normaliser ignores lengths, so neither bias appears.
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"mode: expected one of {', '.join(AGGREGATION_MODES)}, got {mode!r}")
    mask = mask.bool()
    values = torch.where(mask, per_token, 0.0)
    if mode == "token_mean":
        return values.sum() / mask.sum().clamp_min(1)
    if mode == "sequence_mean":
        return (values.sum(dim=-1) / mask.sum(dim=-1).clamp_min(1)).mean()
    if max_len is None or max_len <= 0:
        raise ValueError(f"max_len: mode 'sum_norm' needs a positive constant, got {max_len!r}")
    return values.sum() / (per_token.shape[0] * max_len)


def policy_loss(logprobs: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor | None, advantages: Tensor,
                mask: Tensor, *, clip_epsilon: float, kl_coef: float, kl_estimator: str = KL_DEFAULT,
                mode: str = "token_mean", max_len: int | None = None) -> tuple[Tensor, Tensor]:
    """The AV's GRPO loss: the clipped surrogate plus ``kl_coef`` x the KL penalty to the reference,
    per token, aggregated over ``mask`` (``aggregate``); ``ref_logprobs`` None (no reference) leaves the
    KL term out and needs ``kl_coef`` 0. Returns the scalar loss and where the clip was active
    (``clipped_surrogate``)."""
    surrogate, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip_epsilon)
    if ref_logprobs is None:
        if kl_coef:
            raise ValueError(f"kl_coef: {kl_coef} weighs a KL term, which needs the reference's log-probs")
        return aggregate(surrogate, mask, mode, max_len), clipped
    kl = kl_penalty(logprobs, ref_logprobs, kl_estimator, mask)
    return aggregate(surrogate + kl_coef * kl, mask, mode, max_len), clipped


def trim_at_end_of_turn(
    token_ids: Tensor, mask: Tensor, end_ids: Collection[int]
) -> tuple[Tensor, Tensor]:
    """Keep each row's masked tokens up to and including its first end-of-turn token.

    Returns ``(mask [N, T] bool, lengths [N] long)``. A row without an end id keeps its mask. Without
    this, whatever follows the end of turn (right padding, tokens sampled past it) counts in lengths,
    losses and KL, and hides length differences inside a group.
    """
    mask = mask.bool()
    ends = torch.tensor(sorted(end_ids), dtype=token_ids.dtype, device=token_ids.device)
    is_end = torch.isin(token_ids, ends) & mask
    ends_before = is_end.long().cumsum(dim=-1) - is_end.long()
    kept = mask & (ends_before == 0)
    return kept, kept.sum(dim=-1)


def penalized_rewards(mse: Tensor, valid: Tensor, kind: str = "neg_mse") -> Tensor:
    """Rewards from per-rollout normalised MSE: ``-mse`` or ``-log(mse)`` where ``valid``.

    Invalid rows (truncated, unparseable) get the orthogonal-equivalent reward, -2 or -log 2, and stay
    in the batch: masking them out instead let the policy collapse in peer runs.
    """
    if kind not in REWARD_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(REWARD_KINDS)}, got {kind!r}")
    valid = valid.bool()
    mse = mse.float()
    if kind == "neg_mse":
        return torch.where(valid, -mse, -ORTHOGONAL_MSE)
    # Below float32 eps the MSE is rounding noise; the floor also keeps a perfect reconstruction
    # from scoring +inf and poisoning its group's statistics.
    floor = torch.finfo(torch.float32).eps
    return torch.where(valid, -mse.clamp_min(floor).log(), -math.log(ORTHOGONAL_MSE))


def overlong_penalty(lengths: Tensor, cap: int, buffer: int, weight: float) -> Tensor:
    """A cap-aware length penalty per answer (DAPO's soft overlong punishment): 0 up to ``cap -
    buffer`` tokens, then rising linearly to ``weight`` at the cap; all zeros when ``buffer`` is 0.

    Subtracted from every answer's reward, it makes an answer that runs to the cap the worst of its
    group even when its explanation would have scored well, and pushes lengths away from the cap
    before answers start to be cut by it.
    """
    if buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    if buffer > cap:
        raise ValueError(f"buffer: must be at most the cap {cap}, got {buffer}")
    excess = (lengths.float() - (cap - buffer)).clamp(0, buffer)
    return weight * excess / buffer


def uniform_group_advantages(rewards: Tensor, advantages: Tensor, eps: float = 1e-6) -> Tensor:
    """``advantages [B, G]`` where each group whose rewards are all equal (every answer failed, say)
    gets ``(r - mean_batch) / (std_batch + eps)`` instead of the zero a per-group baseline gives it:
    such a group is then pushed down (or up) against the other groups of the batch."""
    uniform = (rewards.amax(dim=-1) == rewards.amin(dim=-1))[:, None]
    against_batch = (rewards - rewards.mean()) / (rewards.std(correction=0) + eps)
    return torch.where(uniform, against_batch, advantages)


def fraction_zero_spread(rewards: Tensor) -> Tensor:
    """Fraction of groups in ``rewards [B, G]`` whose rewards are all equal (zero advantage, no signal)."""
    spread = rewards.amax(dim=-1) - rewards.amin(dim=-1)
    return (spread == 0).float().mean()
