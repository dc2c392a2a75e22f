"""Random-weight models built in-process from real configurations (no weights can be downloaded on
the device machine), and the tokenizer that goes with them.

Configurations as published with the checkpoints (see /work/shared/GPU_NOTES.md): Qwen2.5-0.5B and
Qwen2.5-7B (Qwen2 architecture), Llama-3.1-8B (llama3 RoPE). ``tiny`` is the CPU dry run's shape.
Random weights never emit an end-of-turn token, so sampling always runs to the cap.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

QWEN_TOKENIZER = Path(os.environ.get("NLA_QWEN_TOKENIZER", "/tmp/nla-gpu/qwen2.5-tokenizer"))
"""Where ``check.sh`` unpacks the Qwen2.5 vocabulary that ``prepare.sh`` converted."""

_QWEN = dict(rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768, hidden_act="silu",
             use_sliding_window=False, bos_token_id=151643, eos_token_id=151645)
SHAPES = {
    "qwen2.5-0.5b": (Qwen2Config, dict(_QWEN, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                        tie_word_embeddings=True)),
    "qwen2.5-7b": (Qwen2Config, dict(_QWEN, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                      num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                                      tie_word_embeddings=False)),
    "llama-3.1-8b": (LlamaConfig, dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                        tie_word_embeddings=False, rms_norm_eps=1e-5, max_position_embeddings=131072,
                                        rope_theta=5e5, rope_scaling=dict(rope_type="llama3", factor=8.0,
                                        low_freq_factor=1.0, high_freq_factor=4.0,
                                        original_max_position_embeddings=8192))),
    "tiny": (Qwen2Config, dict(_QWEN, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                                tie_word_embeddings=True, max_position_embeddings=1024)),
}
LAYERS = {"qwen2.5-0.5b": 16, "qwen2.5-7b": 20, "llama-3.1-8b": 21, "tiny": 2}
"""The AR's layer K per shape: about two thirds of the depth (Qwen2.5-7B: 20 of 28, as released)."""


def tokenizer_for(shape: str):
    """The real Qwen2.5 vocabulary for the Qwen shapes when ``prepare.sh`` converted it, else the test
    fixtures' small byte-level tokenizer (its ids fit any vocabulary; prompts are then shorter than
    with the real one). Never the 152k vocabulary with the Llama shape: its ids would overflow."""
    if shape.startswith("qwen") and (QWEN_TOKENIZER / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(QWEN_TOKENIZER))
    from tests.fixtures.tiny import build_tokenizer

    return build_tokenizer()


def config_for(shape: str, tokenizer, attn_implementation: str = "sdpa"):
    kind, values = SHAPES[shape]
    ids = {} if shape.startswith("qwen") and tokenizer.vocab_size > 100_000 else dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = kind(**{**values, **ids, "pad_token_id": tokenizer.pad_token_id})
    config._attn_implementation = attn_implementation
    return config


def build_model(shape: str, tokenizer, device: str, dtype: torch.dtype, attn_implementation: str = "sdpa",
                layers: int | None = None):
    """A random-weight causal LM of ``shape`` made directly on ``device`` (``layers``: only the first
    blocks, as the AR loads them)."""
    if attn_implementation == "nla_varlen":
        from nla.models import varlen

        varlen.register()
    config = config_for(shape, tokenizer, attn_implementation)
    if layers is not None:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return model.eval()
