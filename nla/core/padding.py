"""Token rows of different lengths to one ``[B, T]`` batch: the single padding routine of nla."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad(rows: Sequence[Sequence[int]], value: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T]`` long ids padded with ``value`` on ``side`` ("right" or "left") and the ``[B, T]`` mask of
    real tokens. T is at least 1, so a batch of empty completions still has a shape models accept."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    width = max(1, max((len(row) for row in rows), default=0))
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.as_tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def pad_token_id(tokenizer) -> int:
    """The id padding is written with; masked out everywhere, so EOS serves when there is no PAD."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
