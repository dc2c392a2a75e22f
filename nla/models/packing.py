"""Padding-free packing: every sequence of a micro-batch laid end to end in one row ``[1, N]``.

With a variable-length kernel (flash-attn's ``flash_attention_2``, or PyTorch's own through
``nla_varlen``, ``nla.models.varlen``) the packed row is attended per sequence, so no FLOP is spent
on padding. The sequence boundaries travel as ``cu_seq_lens_q/k`` and ``max_length_q/k`` keyword
arguments, which transformers hands through every decoder layer to the attention function;
``position_ids`` restart at 0 for each sequence so rotary positions match the padded batch. Any other
attention kernel gets an explicit block-diagonal causal ``[1, 1, N, N]`` mask instead: quadratic in N
and blind to sliding windows (refused where a sequence is longer than the window), so it is for
checking the packed path on CPU, not for speed.

The layout of a batch (``PackLayout``: which positions are real, the boundaries, the longest length)
needs host synchronisations to check and size, so the collate step computes it on the CPU where the
batch is built (``pack_layout``); ``pack`` then gathers on the device without waiting for it.

The functions here are pure: tensors in, tensors out, no model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nla.core.errors import ConfigError
from nla.core.marker import Marker

IGNORE = -100
"""Label value the causal-LM loss skips."""

PACKED_CHOICES = (True, False, "auto")
"""Values of the ``packed`` switch: ``auto`` packs exactly when a variable-length kernel is active."""
VARLEN_NAME = "nla_varlen"
"""PyTorch's variable-length attention as registered by ``nla.models.varlen``."""


@dataclass
class PackLayout:
    """Where the real tokens of a padded ``[S, T]`` batch go in its packed row, computed once (on the
    host, in the collate step) so packing on the device needs no synchronisation."""

    index: Tensor
    """``[N]`` flat positions (``row x T + column``) of the real tokens, sequence after sequence."""
    position_ids: Tensor
    """``[1, N]`` positions, restarting at 0 at the start of each sequence."""
    cu_seqlens: Tensor
    """``[S + 1]`` int32 cumulative lengths."""
    first: Tensor
    """``[S]`` column of each row's first real token (0 with right padding)."""
    max_len: int
    """Length of the longest sequence."""


@dataclass
class Packed:
    """A micro-batch of S sequences packed into one row of N real tokens."""

    input_ids: Tensor
    """``[1, N]`` token ids, sequence after sequence, no padding."""
    position_ids: Tensor
    """``[1, N]`` positions, restarting at 0 at the start of each sequence."""
    cu_seqlens: Tensor
    """``[S + 1]`` int32 cumulative lengths: sequence i holds positions ``cu_seqlens[i]:cu_seqlens[i+1]``."""
    max_len: int
    """Length of the longest sequence (the flash kernel's ``max_seqlen``)."""
    last: Tensor
    """``[S]`` index into the packed row of each sequence's last token."""
    labels: Tensor | None
    """``[1, N]`` labels with the first token of every sequence set to ``IGNORE``, so the one-token shift
    of the causal-LM loss never makes a sequence's last token predict the next sequence's first token.
    None when no labels were packed."""
    source_mask: Tensor
    """``[S, T]`` bool mask of the real tokens in the padded batch the row came from (for ``unpack``)."""

    @property
    def num_sequences(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[1]


def _check_contiguous(mask: Tensor) -> Tensor:
    """Lengths of the rows of ``mask`` [B, T], each a single run of ones (left or right padding)."""
    if mask.dim() != 2:
        raise ValueError(f"attention_mask must be [batch, time], got shape {tuple(mask.shape)}")
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("every row needs at least one real token (found an all-padding row)")
    positions = torch.arange(mask.shape[1], device=mask.device)
    first = torch.where(mask, positions, mask.shape[1]).min(dim=1).values
    last = torch.where(mask, positions, -1).max(dim=1).values
    if bool((last - first + 1 != lengths).any()):
        raise ValueError("rows must be padded on one side only: a row's real tokens have to be contiguous")
    return lengths


def pack_layout(attention_mask: Tensor) -> PackLayout:
    """The packing layout of a padded batch's ``attention_mask`` [S, T] (left or right padding, one run
    of real tokens per row, none empty; ``ValueError`` otherwise)."""
    mask = attention_mask.bool()
    lengths = _check_contiguous(mask)
    cu_seqlens = torch.nn.functional.pad(lengths.cumsum(dim=0), (1, 0)).to(torch.int32)
    return PackLayout(
        index=mask.flatten().nonzero().flatten(),
        position_ids=(mask.long().cumsum(dim=1) - 1)[mask][None],
        cu_seqlens=cu_seqlens,
        first=mask.long().argmax(dim=1),
        max_len=int(lengths.max()),
    )


def pack(input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None = None,
         layout: PackLayout | None = None) -> Packed:
    """Pack a padded batch ``[B, T]`` (left or right padding) with its mask and, optionally, labels.
    ``layout`` is ``pack_layout(attention_mask)`` when the caller has it (then nothing here waits for
    the device); without it, it is computed here."""
    if input_ids.shape != attention_mask.shape or (labels is not None and labels.shape != input_ids.shape):
        raise ValueError("input_ids, attention_mask and labels must have the same [batch, time] shape")
    if layout is None:
        layout = pack_layout(attention_mask)
    index = layout.index.to(input_ids.device)
    cu_seqlens = layout.cu_seqlens.to(input_ids.device)
    packed_labels = None
    if labels is not None:
        packed_labels = labels.flatten()[index].index_fill(0, cu_seqlens[:-1].long(), IGNORE)[None]
    return Packed(
        input_ids=input_ids.flatten()[index][None],
        position_ids=layout.position_ids.to(input_ids.device),
        cu_seqlens=cu_seqlens,
        max_len=layout.max_len,
        last=cu_seqlens[1:].long() - 1,
        labels=packed_labels,
        source_mask=attention_mask.bool(),
    )


def packed_slots(layout: PackLayout, slots: Tensor) -> Tensor:
    """Positions in the packed row of per-row positions ``slots`` [S] of the padded batch."""
    return layout.cu_seqlens[:-1].long().to(slots.device) + slots - layout.first.to(slots.device)


def pack_rows(rows: Sequence[Sequence[int]], labels: Sequence[Sequence[int]] | None = None) -> Packed:
    """Pack token rows of different lengths (and their labels, row for row)."""
    if not rows:
        raise ValueError("nothing to pack: no rows")
    width = max(len(row) for row in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    padded_labels = None if labels is None else torch.full_like(ids, IGNORE)
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"{len(labels)} label rows for {len(rows)} token rows")
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.as_tensor(row, dtype=torch.long), 1
        if labels is not None:
            if len(labels[i]) != len(row):
                raise ValueError(f"row {i} has {len(row)} tokens but {len(labels[i])} labels")
            padded_labels[i, : len(row)] = torch.as_tensor(labels[i], dtype=torch.long)
    return pack(ids, mask, padded_labels)


def unpack(values: Tensor, packed: Packed, fill: float = 0) -> Tensor:
    """Per-token ``values`` ``[1, N, ...]`` of the packed row (logits, hidden states) back in the padded
    layout ``[B, T, ...]`` the batch came from, padding positions set to ``fill``."""
    if values.dim() < 2 or values.shape[0] != 1 or values.shape[1] != packed.num_tokens:
        raise ValueError(f"values must be [1, {packed.num_tokens}, ...], got shape {tuple(values.shape)}")
    out = values.new_full((*packed.source_mask.shape, *values.shape[2:]), fill)
    out[packed.source_mask] = values[0]
    return out


def segment_ids(cu_seqlens: Tensor) -> Tensor:
    """``[N]`` index of the sequence each packed position belongs to."""
    lengths = cu_seqlens.diff().long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths)


def find_packed_marker_slots(input_ids: Tensor, marker: Marker, cu_seqlens: Tensor) -> Tensor:
    """Position in the packed row ``input_ids`` [1, N] of the marker slot of each sequence
    ``cu_seqlens[i]:cu_seqlens[i+1]``. A slot's neighbours must lie in its own sequence, so the end of
    one sequence and the start of the next never form a slot. Exactly one per sequence, else ``ValueError``."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"a packed row must be [1, tokens], got shape {tuple(input_ids.shape)}")
    ids = input_ids[0]
    if int(cu_seqlens[-1]) != ids.numel():
        raise ValueError(f"cu_seqlens covers {int(cu_seqlens[-1])} tokens, the packed row holds {ids.numel()}")
    segment = segment_ids(cu_seqlens.to(ids.device))
    sequences = cu_seqlens.numel() - 1
    slots = torch.zeros_like(ids, dtype=torch.bool)
    slots[1:-1] = (
        (ids[1:-1] == marker.token_id) & (ids[:-2] == marker.left_id) & (ids[2:] == marker.right_id)
        & (segment[:-2] == segment[1:-1]) & (segment[2:] == segment[1:-1])
    )
    counts = torch.bincount(segment[slots], minlength=sequences)
    bad = (counts != 1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"packed sequence {bad[0]} has {int(counts[bad[0]])} marker slots (id {marker.token_id} "
            f"{marker.char!r} between ids {marker.left_id} and {marker.right_id}); expected exactly one"
            + (f" ({len(bad)} sequences are wrong)" if len(bad) > 1 else "")
        )
    # One slot per sequence, and sequences lie in order along the row: nonzero lists them in sequence order.
    return slots.nonzero().flatten()


def block_causal_mask(packed: Packed, dtype: torch.dtype) -> Tensor:
    """``[1, 1, N, N]`` additive mask: 0 where a token may attend (same sequence, not later), the dtype's
    minimum elsewhere. Transformers passes a 4D mask to eager and sdpa attention unchanged."""
    segment = segment_ids(packed.cu_seqlens.to(packed.input_ids.device))
    index = torch.arange(segment.numel(), device=segment.device)
    allowed = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def is_varlen(attn_implementation: str | None) -> bool:
    """Whether this attention implementation takes packed rows through a variable-length kernel
    (transformers' flash-attention forwards, or ``nla_varlen``)."""
    return bool(attn_implementation) and ("flash" in str(attn_implementation) or attn_implementation == VARLEN_NAME)


def sliding_window(config) -> int | None:
    """The attention window of ``config``'s text model when some of its layers use one, else None."""
    text = config.get_text_config()
    window = getattr(text, "sliding_window", None)
    if getattr(text, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return window


def attention_kwargs(packed: Packed, config, dtype: torch.dtype) -> dict:
    """Model keyword arguments that keep the packed sequences of a model with ``config`` apart: the
    varlen boundaries for flash attention, otherwise the block-diagonal causal mask. Always with the
    restarting ``position_ids``."""
    kwargs = {"position_ids": packed.position_ids}
    attn = getattr(config, "_attn_implementation", None)
    if is_varlen(attn):
        cu = packed.cu_seqlens.to(packed.input_ids.device)
        # nla_varlen gets an all-real 2D mask: with none, transformers would take the restarting
        # positions for packing and build an [N, N] block mask that the varlen kernel never reads.
        mask = torch.ones_like(packed.input_ids, dtype=torch.bool) if attn == VARLEN_NAME else None
        kwargs.update(attention_mask=mask, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                      max_length_q=packed.max_len, max_length_k=packed.max_len)
        return kwargs
    window = sliding_window(config)
    # One 4D mask serves every layer, so it cannot give sliding-window layers their narrower view.
    if window is not None and packed.max_len > window:
        raise ConfigError("packed", f"a {packed.max_len}-token sequence exceeds this model's {window}-token "
                          "sliding window; packing such models needs a variable-length kernel (flash_attention_2 "
                          "or nla_varlen) or packed: false")
    kwargs["attention_mask"] = block_causal_mask(packed, dtype)
    return kwargs


def check_packed(value: bool | str, field: str = "packed") -> bool | str:
    """``value`` if it is a valid ``packed`` setting, else a ``ConfigError`` naming ``field``."""
    if not any(value is choice or (isinstance(value, str) and value == choice) for choice in PACKED_CHOICES):
        raise ConfigError(field, f"must be true, false or auto, got {value!r}")
    return value


def use_packing(setting: bool | str, model) -> bool:
    """Resolve the ``packed`` switch for ``model``: ``auto`` packs when its attention has a
    variable-length kernel (flash attention, ``nla_varlen``); ``True`` packs on any kernel (through the
    block mask elsewhere); ``False`` never packs."""
    if setting == "auto":
        return is_varlen(getattr(model.config, "_attn_implementation", None))
    return bool(setting)
