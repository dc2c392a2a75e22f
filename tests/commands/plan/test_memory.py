"""The memory model's pure functions on hand-computed shapes."""

from __future__ import annotations

from nla.commands.plan.memory import Setting, activations, block_elements, gathered_units, kv_cache, model_state, reference_state
from nla.commands.plan.shapes import ModelShape

SHAPE = ModelShape(params=1000, grad_params=900, lora_params=10, largest_unit=300, layers=2, hidden=4,
                   intermediate=8, heads=2, q_dim=4, kv_dim=2, vocab=10)


def test_full_fine_tuning_costs_16_bytes_per_trained_parameter_divided_over_shards():
    assert model_state(SHAPE, lora=False, s=Setting(shards=2)) == {"weights": 2000, "gradients": 1800, "optimizer": 3600}
    assert model_state(SHAPE, lora=False, s=Setting(optimizer="adamw8bit"))["optimizer"] == 1800
    assert model_state(SHAPE, lora=False, s=Setting(cpu_offload=True)) == {"weights": 0, "gradients": 0, "optimizer": 0}


def test_lora_loads_the_base_as_the_trained_model_and_trains_only_the_adapters():
    # The base is loaded as the model it adapts, float32 (nla.modules.precision), not in the frozen dtype.
    state = model_state(SHAPE, lora=True, s=Setting(shards=2, frozen_bytes=2))
    assert state == {"weights": (1000 * 4 + 10 * 4) / 2, "gradients": 20, "optimizer": 40}


def test_reference_placements():
    assert reference_state(SHAPE, Setting(shards=2, frozen_bytes=2)) == 1000
    assert reference_state(SHAPE, Setting(reference="cpu")) == 0
    assert reference_state(SHAPE, Setting(shards=4, reference="8bit")) == 1000  # quantized: never sharded
    assert reference_state(SHAPE, Setting(reference="4bit")) == 500
    assert reference_state(SHAPE, Setting(reference="adapter")) == 40
    assert reference_state(SHAPE, Setting(reference="none")) == 0


def test_the_stochastic_rounding_adamw_keeps_float32_moments():
    state = model_state(SHAPE, lora=False, s=Setting(trained_bytes=2, optimizer="adamw_bf16_stochastic"))
    assert state["optimizer"] == SHAPE.grad_params * 8


def test_activations_per_token_and_block_logits_checkpointing_and_scores():
    assert block_elements(SHAPE) == 4 * 4 + 4 * 4 + 3 * 2 + 4 * 8 == 70
    bf16 = Setting(compute_bytes=2)
    logits = 3 * 10 * (2 + 4 + 8)  # bf16 logits, their float32 copy, log-softmax and its gradient
    assert activations(SHAPE, 1, 3, bf16) == 3 * 70 * 2 * 2 + logits
    # Checkpointing: each block's input, one block's full set.
    assert activations(SHAPE, 1, 3, Setting(compute_bytes=2, checkpointing=True)) == 3 * 4 * 2 * 2 + 3 * 70 * 2 + logits
    # Without flash attention the scores and probabilities (heads x s^2 each) stay too.
    assert activations(SHAPE, 1, 3, Setting(compute_bytes=2, flash=False)) == (420 + 2 * 2 * 9 * 2) * 2 + logits
    fp32 = 3 * 70 * 4 * 2 + 3 * 10 * (4 + 8)  # no separate float32 copy of float32 logits
    assert activations(SHAPE, 1, 3, Setting(compute_bytes=4)) == fp32


def test_kv_cache_and_gathered_units():
    assert kv_cache(SHAPE, sequences=1, length=3, s=Setting(compute_bytes=2)) == 2 * 3 * 2 * 2 * 2
    assert gathered_units(SHAPE, Setting(shards=1)) == 0
    assert gathered_units(SHAPE, Setting(shards=8, compute_bytes=2)) == 2 * 300 * 2
