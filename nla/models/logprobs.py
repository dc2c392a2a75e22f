"""Log-probs of chosen tokens from final hidden states, without a ``[n, T, vocab]`` logits tensor.

The LM head runs only on the positions asked for, ``CHUNK_TOKENS`` of them at a time; under autograd
each chunk is checkpointed, so backward keeps the chunk's hidden states, not its logits, and
recomputes one chunk's logits at a time. Peak memory grows with ``CHUNK_TOKENS x vocab``, not with
sequences x length x vocab (Qwen's 152k vocabulary: 8 x 150 completion tokens of float32 logits are
0.7 GB, kept twice for backward on the full-logits path).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nla.models import adapters

CHUNK_TOKENS = 1024
"""Positions whose logits exist at once (1024 x 152k float32 logits: 0.6 GB)."""


def output_head(model: nn.Module) -> tuple[nn.Module, float | None]:
    """The LM head of ``model`` (the input embedding's matrix when tied) and its final logit
    soft-cap (Gemma 2: ``cap x tanh(logits / cap)``; None for families without one)."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no LM head")
    return head, getattr(adapters.text_config(model.config), "final_logit_softcapping", None)


def _chunk(hidden: Tensor, targets: Tensor, head: nn.Module, softcap: float | None, entropy: bool):
    logits = head(hidden).float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    log_probs = torch.log_softmax(logits, dim=-1)
    chosen = log_probs.gather(-1, targets[:, None]).squeeze(-1)
    if not entropy:
        return chosen, None
    return chosen, -(log_probs.exp() * log_probs).sum(-1)


def chosen_logprobs(hidden: Tensor, targets: Tensor, head: nn.Module, softcap: float | None = None,
                    entropy: bool = False, chunk: int | None = None) -> tuple[Tensor, Tensor | None]:
    """``[M]`` float32 log-probs of ``targets`` [M] under ``head(hidden)`` (``hidden`` [M, d], final
    norm applied), and optionally the entropy of each distribution, ``chunk`` positions at a time
    (default ``CHUNK_TOKENS``)."""
    chunk = chunk or CHUNK_TOKENS
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden states for {targets.shape[0]} targets")
    parts, spreads = [], []
    for begin in range(0, hidden.shape[0], chunk):
        part = slice(begin, begin + chunk)
        if torch.is_grad_enabled() and hidden.requires_grad:
            chosen, spread = checkpoint(_chunk, hidden[part], targets[part], head, softcap, entropy,
                                        use_reentrant=False)
        else:
            chosen, spread = _chunk(hidden[part], targets[part], head, softcap, entropy)
        parts.append(chosen)
        spreads.append(spread)
    if not parts:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty if entropy else None
    return torch.cat(parts), torch.cat(spreads) if entropy else None
