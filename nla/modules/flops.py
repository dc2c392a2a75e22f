"""Model FLOPs of a training step and the accelerator's peak, for model FLOPs utilisation (MFU).

A step's model FLOPs, per sequence of s tokens on a decoder of L layers with attention width
A = query heads x head dim and P dense (matmul) parameters, of which P_t are trained:

- dense: ``(2 P + 2 P + 2 P_t) x s`` (forward; gradients of the activations; gradients of the trained
  weights): ``6 P s`` for full fine-tuning, about ``4 P s`` for LoRA;
- attention: each of a layer's two attention matmuls (scores, weighted values) costs
  ``2 A`` per (query, key) pair, and a causal sequence has ``s (s + 1) / 2`` pairs: forward
  ``2 A s (s + 1)``, backward twice that, so ``6 L A s (s + 1)`` per sequence.

The input embedding is a lookup, not a matmul: it is not counted (unless tied to the LM head, whose
matmul it then is). Recomputation (activation checkpointing, flash attention's backward) is not model
FLOPs and is not counted. Sliding-window layers are counted as full causal attention.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from nla.models import adapters

PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("GH200", 989.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)
"""Nominal dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's datasheets, matched in
order against the CUDA device name: the SXM parts (``NVIDIA H100 80GB HBM3``, ``NVIDIA H200``) come
after their PCIe/NVL variants. Measured matmuls reach about 80% of them (790 of 989 on an H200)."""


@dataclass(frozen=True)
class ModelCounts:
    """What the FLOP count needs to know of a model."""

    dense: int
    """Parameters multiplying every token's activations (all but the input embedding)."""
    trained: int
    """Those of ``dense`` that receive gradients."""
    layers: int
    """Decoder blocks."""
    attention_width: int
    """Query heads x head dim."""


def peak_tflops(device_name: str) -> float | None:
    """The nominal dense bf16 peak of the accelerator called ``device_name``; None when not in the table."""
    name = device_name.lower()
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key.lower() in name), None)


def training_flops(lengths: Iterable[int], counts: ModelCounts) -> float:
    """Model FLOPs of one forward and backward pass over sequences of ``lengths`` real tokens."""
    lengths = [int(n) for n in lengths]
    dense = (4 * counts.dense + 2 * counts.trained) * sum(lengths)
    attention = 6 * counts.layers * counts.attention_width * sum(n * (n + 1) for n in lengths)
    return float(dense + attention)


def model_counts(model: nn.Module, extra: nn.Module | None = None) -> ModelCounts:
    """``ModelCounts`` of the language model in the HF model ``model`` (its decoder and LM head, not a
    multimodal wrapper's vision tower) plus ``extra`` (the AR's head). Embedding lookups (token and
    learned position embeddings) are left out, except a token embedding that is also the LM head."""
    head = model.get_output_embeddings()
    modules = [adapters.decoder(model), *(m for m in (head, extra) if m is not None)]
    params = {id(p): p for module in modules for p in module.parameters()}
    head_weight = getattr(head, "weight", None)
    for module in adapters.decoder(model).modules():
        if isinstance(module, nn.Embedding) and module.weight is not head_weight:
            params.pop(id(module.weight), None)
    text = adapters.text_config(model.config)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head")
    head_dim = getattr(text, "head_dim", None) or adapters.hidden_size(model.config) // heads
    return ModelCounts(
        dense=sum(p.numel() for p in params.values()),
        trained=sum(p.numel() for p in params.values() if p.requires_grad),
        layers=adapters.num_layers(model.config),
        attention_width=heads * head_dim,
    )
