"""The memory model of ``nla plan``: bytes per accelerator, as pure functions of shapes and settings.

Model state (per model, divided over the FSDP shards):
- full fine-tuning: float32 master weights (4 B/param), float32 gradients of the parameters that get
  one (4 B), AdamW's two moments (8 B; 8-bit AdamW: 2 B) -- 16 B per trained parameter;
- LoRA: the frozen base loads with the trained weights, in float32 (4 B/param), adapters as above;
- the GRPO reference: a frozen copy in the compute dtype (sharded like the AV), in host memory with
  ``reference_device: cpu``, 1 or 0.5 B/param quantized (never sharded), or a copy of the adapters.

Activations kept for backward, per token and decoder block, in the compute dtype (HF's Llama-style
block: two norms' inputs and outputs, q, k, v and their rotated copies, the attention output and its
reshaped copy, and the MLP's gate, up, activation and product): ``4h + 4 q_dim + 3 kv_dim + 4 I``
elements; with activation checkpointing only each block's input (``h``) plus one block's full set.
Kernels without flash attention (CPU) also keep the ``heads x s^2`` scores and probabilities. The AV's
logits add ``tokens x vocab`` in the compute dtype, a float32 copy for the loss (when the compute
dtype is not float32), the float32 log-softmax and, in backward, its float32 gradient.

GRPO peaks in one of three phases, each on top of the model state: sampling (the KV cache of every
sequence of the step, and under FSDP the AV gathered whole in the compute dtype), the AV update (one
micro-batch at the longest rollout) or the AR update. SFT holds the AV's and the AR's activations at
once (one loss over both). Under FSDP two units are gathered at a time in the compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

from nla.commands.plan.shapes import ModelShape

GIB = 1024**3
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw8bit": 2.0, "paged_adamw8bit": 2.0, "adamw_bf16_stochastic": 8.0}
"""Optimizer state per trained parameter: AdamW's two float32 moments, or two 8-bit moments."""
QUANTIZED_BYTES = {"8bit": 1.0, "4bit": 0.5}


@dataclass(frozen=True)
class Setting:
    """How the models are held and run; every field is read from the config (``nla.commands.plan.settings``)."""

    shards: int = 1
    """Processes the FSDP strategy shards over (1: no sharding)."""
    trained_bytes: int = 4
    """Bytes per trained weight: float32 masters (4); 2 only under ``bf16-true``."""
    frozen_bytes: int = 2
    """Bytes per frozen weight: the GRPO reference in the compute dtype; the cache target in
    ``data.target.dtype``."""
    compute_bytes: int = 2
    """Bytes per activation: bf16 under bf16-mixed or FSDP's ``param_dtype: bfloat16``, else 4."""
    optimizer: str = "adamw"
    av_lora: bool = False
    ar_lora: bool = False
    checkpointing: bool = False
    """Each block's activations recomputed in backward (FSDP ``activation_checkpointing``)."""
    flash: bool = True
    """The attention kernel never materialises the score matrix (flash / memory-efficient SDPA)."""
    reference: str = "copy"
    """GRPO reference: ``copy`` (frozen copy on the device), ``cpu`` (in host memory), ``8bit``,
    ``4bit``, ``adapter`` (a frozen copy of the LoRA adapters) or ``none`` (``kl_coef: 0``: not built)."""
    cpu_offload: bool = False
    """FSDP keeps shards, gradients and optimizer state in host memory."""


def model_state(shape: ModelShape, lora: bool, s: Setting) -> dict[str, float]:
    """Weights, gradients and optimizer state of one trained model, bytes per device."""
    if s.cpu_offload:
        return {"weights": 0.0, "gradients": 0.0, "optimizer": 0.0}
    trained = shape.lora_params if lora else shape.grad_params
    base = shape.params * s.trained_bytes
    adapters = shape.lora_params * s.trained_bytes if lora else 0.0
    return {"weights": (base + adapters) / s.shards, "gradients": trained * s.trained_bytes / s.shards,
            "optimizer": trained * OPTIMIZER_BYTES[s.optimizer] / s.shards}


def reference_state(shape: ModelShape, s: Setting) -> float:
    """The frozen GRPO reference AV, bytes per device."""
    if s.reference in ("cpu", "none"):
        return 0.0
    if s.reference == "adapter":
        return shape.lora_params * s.trained_bytes
    if s.reference in QUANTIZED_BYTES:
        return shape.params * QUANTIZED_BYTES[s.reference]
    return shape.params * s.frozen_bytes / s.shards


def gathered_units(shape: ModelShape, s: Setting) -> float:
    """FSDP's working set: the unit computing and the one prefetched, whole, in the compute dtype."""
    return 2 * shape.largest_unit * s.compute_bytes if s.shards > 1 else 0.0


def block_elements(shape: ModelShape) -> int:
    """Activation elements one token leaves in one block for backward (see the module docstring)."""
    return 4 * shape.hidden + 4 * shape.q_dim + 3 * shape.kv_dim + 4 * shape.intermediate


def activations(shape: ModelShape, sequences: int, length: int, s: Setting, grad: bool = True) -> float:
    """Bytes one forward (and its backward when ``grad``) keeps for ``sequences`` rows of ``length``."""
    tokens = sequences * length
    per_block = tokens * block_elements(shape) * s.compute_bytes
    scores = 0 if s.flash else 2 * sequences * shape.heads * length * length * s.compute_bytes
    if not grad:
        blocks = per_block / max(shape.layers, 1) + scores  # one block's transients at a time
    elif s.checkpointing:
        blocks = tokens * shape.hidden * s.compute_bytes * shape.layers + per_block + scores
    else:
        blocks = (per_block + scores) * shape.layers
    upcast = 0 if s.compute_bytes == 4 else 4
    logits = tokens * shape.vocab * (s.compute_bytes + upcast + (8 if grad else 0))
    return blocks + logits


def kv_cache(shape: ModelShape, sequences: int, length: int, s: Setting) -> float:
    """Keys and values of every block for ``sequences`` rows of ``length`` tokens while sampling."""
    return 2.0 * sequences * length * shape.layers * shape.kv_dim * s.compute_bytes
