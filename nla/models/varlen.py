"""Padding-free attention without the flash-attn package: PyTorch's own variable-length kernel,
registered with transformers as the attention implementation ``nla_varlen``.

``torch.nn.attention.varlen.varlen_attn`` (torch >= 2.10, CUDA) runs PyTorch's bundled
flash-attention kernel over sequences laid end to end, separated by ``cu_seqlens``. Transformers
calls any registered attention function by name and hands it the keyword arguments the model was
called with, so a packed forward (``nla.models.packing.attention_kwargs``) reaches it with
``cu_seq_lens_q/k`` and ``max_length_q/k``, as it would reach flash attention. The name does not
start with "flash": transformers would then look for the flash-attn package or a hub kernel.

Calls without ``cu_seq_lens_q`` (padded batches, sampling with a KV cache) run transformers' SDPA
attention with the SDPA mask (registered under the same name), so one model serves both. On CPU the
packed calls run ``varlen_reference``: the same arguments, a block-diagonal causal mask and plain
SDPA; it makes the registration testable without a GPU and is quadratic in the packed length.
"""

from __future__ import annotations

import importlib.util
import inspect
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from nla.models.packing import VARLEN_NAME as NAME  # the ``attn_implementation`` value


def available() -> bool:
    """Whether this torch ships the variable-length kernel (torch >= 2.10) and a CUDA device exists."""
    return torch.cuda.is_available() and importlib.util.find_spec("torch.nn.attention.varlen") is not None


def varlen_reference(query: Tensor, key: Tensor, value: Tensor, cu_seq_q: Tensor, cu_seq_k: Tensor, max_q: int,
                     max_k: int, *, scale: float | None = None, window_size: tuple[int, int] = (-1, -1),
                     enable_gqa: bool = False) -> Tensor:
    """``varlen_attn``'s result computed with SDPA: ``query`` [Nq, H, D], ``key``/``value``
    [Nk, Hkv, D]; sequence i holds ``cu_seq_q[i]:cu_seq_q[i+1]`` of the queries and
    ``cu_seq_k[i]:cu_seq_k[i+1]`` of the keys. ``window_size`` (left, right), -1 unbounded, counted
    from the diagonal aligned at each sequence's end ((-1, 0) is causal)."""
    if not query.dtype == key.dtype == value.dtype:
        raise ValueError(f"varlen attention takes query, key and value of one dtype (as the CUDA kernel does), "
                         f"got {query.dtype}, {key.dtype}, {value.dtype}")
    q_seq = torch.repeat_interleave(torch.arange(cu_seq_q.numel() - 1, device=query.device), cu_seq_q.diff().long())
    k_seq = torch.repeat_interleave(torch.arange(cu_seq_k.numel() - 1, device=query.device), cu_seq_k.diff().long())
    # Offsets from each sequence's end, so unequal query and key lengths align bottom-right as in flash.
    q_from_end = cu_seq_q[1:].long()[q_seq] - torch.arange(query.shape[0], device=query.device)
    k_from_end = cu_seq_k[1:].long()[k_seq] - torch.arange(key.shape[0], device=query.device)
    distance = k_from_end[None, :] - q_from_end[:, None]  # >0: the key lies before the query
    allowed = q_seq[:, None] == k_seq[None, :]
    left, right = window_size
    if left >= 0:
        allowed &= distance <= left
    if right >= 0:
        allowed &= distance >= -right
    out = F.scaled_dot_product_attention(query.transpose(0, 1)[None], key.transpose(0, 1)[None],
                                         value.transpose(0, 1)[None], attn_mask=allowed, scale=scale,
                                         enable_gqa=enable_gqa)
    return out[0].transpose(0, 1)


def _kernel(device: torch.device, dtype: torch.dtype):
    """The CUDA kernel takes float16/bfloat16 only; other calls attend through the reference."""
    if device.type != "cuda":
        return varlen_reference
    if dtype not in (torch.float16, torch.bfloat16):
        warnings.warn(f"{NAME}: {dtype} attention on CUDA runs the reference kernel, whose memory grows with the "
                      "square of the packed length; train with bf16-mixed precision, or set "
                      "attn_implementation: sdpa", RuntimeWarning, stacklevel=2)
        return varlen_reference
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


def _compute_dtype(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Query, key and value in one dtype. Under autocast over float32 weights (bf16-mixed training)
    RoPE leaves the query and key in float32 while the value leaves its projection in bf16; SDPA is
    cast by autocast, a custom kernel is not, so the cast to autocast's dtype happens here."""
    device = query.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return query.to(dtype), key.to(dtype), value.to(dtype)
    return query, key, value


def _window(sliding_window: int | None) -> tuple[int, int]:
    # transformers' sliding window W lets a query see itself and the W - 1 tokens before it.
    return (-1, 0) if sliding_window is None else (sliding_window - 1, 0)


def _call(kernel, query, key, value, cu_q, cu_k, max_q, max_k, scale, window, groups) -> Tensor:
    """``kernel`` with the arguments its torch version takes: torch 2.10's ``varlen_attn`` has
    ``is_causal`` instead of ``window_size``, and may lack ``enable_gqa`` (then the key/value heads
    are repeated here)."""
    accepted = inspect.signature(kernel).parameters
    kwargs = {"scale": scale}
    if "window_size" in accepted:
        kwargs["window_size"] = window
    elif window != (-1, 0):
        raise ValueError("this torch's varlen_attn has no window_size: sliding-window layers need torch >= 2.11")
    else:
        kwargs["is_causal"] = True
    if groups > 1:
        if "enable_gqa" in accepted:
            kwargs["enable_gqa"] = True
        else:
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return kernel(query, key, value, cu_q, cu_k, max_q, max_k, **kwargs)


def varlen_attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                             attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             sliding_window: int | None = None, softcap: float | None = None, **kwargs):
    """A transformers attention function: ``query`` [B, H, T, D], ``key``/``value`` [B, Hkv, S, D],
    returning ``([B, T, H, D], None)``. Packed calls (``cu_seq_lens_q`` given, B == 1) run the
    variable-length kernel; the others transformers' SDPA attention."""
    cu_q = kwargs.get("cu_seq_lens_q")
    if cu_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      softcap=softcap, **kwargs)
    if softcap is not None or (dropout and module.training):
        raise ValueError(f"{NAME} supports neither attention logit soft-capping nor attention dropout")
    if query.shape[0] != 1:
        raise ValueError(f"a packed call holds one row, got {query.shape[0]}")
    cu_k = kwargs.get("cu_seq_lens_k", cu_q)
    groups = query.shape[1] // key.shape[1]
    query, key, value = _compute_dtype(query, key, value)
    max_q = kwargs["max_length_q"]
    out = _call(_kernel(query.device, query.dtype), query[0].transpose(0, 1), key[0].transpose(0, 1),
                value[0].transpose(0, 1), cu_q, cu_k, max_q, kwargs.get("max_length_k", max_q), scaling,
                _window(sliding_window), groups)
    return out[None], None


def register() -> None:
    """Make ``nla_varlen`` a valid ``attn_implementation`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
