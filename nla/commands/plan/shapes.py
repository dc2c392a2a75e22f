"""Parameter counts and activation dimensions of the three models, from a config on the meta device.

Building the model on PyTorch's meta device allocates nothing, so counts are exact for any family
transformers knows (tied embeddings, biases, extra norms, a multimodal wrapper's vision tower).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

from nla.models import adapters
from nla.models.loading import _quiet_transformers


@dataclass(frozen=True)
class ModelShape:
    """One model's sizes as the memory model needs them."""

    params: int
    """Every parameter the model loads."""
    grad_params: int
    """Parameters that receive gradients when it trains: all but an untied LM head it never uses
    (the AR) and a vision tower the text path never reaches (Gemma-3)."""
    lora_params: int
    """Adapter parameters at the configured rank and target modules (0 without LoRA)."""
    largest_unit: int
    """Parameters of the largest FSDP unit (one block, or the root: embeddings, head and norms)."""
    layers: int
    """Decoder blocks run in a forward."""
    hidden: int
    intermediate: int
    heads: int
    q_dim: int
    """Query width: attention heads x head dim (differs from ``hidden`` in Gemma-3 and Qwen3)."""
    kv_dim: int
    """Key (= value) width: key-value heads x head dim."""
    vocab: int
    """Logit width; 0 for the AR, which has no LM head."""


@dataclass(frozen=True)
class Shapes:
    av: ModelShape
    """The AV: the whole target chat model (the reference has the same shape)."""
    ar: ModelShape
    """The AR: the first K+1 blocks, embeddings and a d x d head."""
    layer: int
    """K."""


def _meta_model(config: PretrainedConfig) -> nn.Module:
    with torch.device("meta"), _quiet_transformers():
        return AutoModelForCausalLM.from_config(config)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _lora(model: nn.Module, rank: int, targets: list[str]) -> int:
    # peft wraps every nn.Linear whose last name component is a target, vision tower included.
    return sum(rank * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets)


def _shape(model: nn.Module, config: PretrainedConfig, lora: tuple[int, list[str]] | None, ar: bool) -> ModelShape:
    text = adapters.text_config(config)
    hidden = adapters.hidden_size(config)
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    blocks = adapters.decoder_layers(model)
    params = _count(model)
    decoder_params = _count(adapters.decoder(model))
    tied = model.get_output_embeddings() is None or (
        model.get_output_embeddings().weight is adapters.input_embeddings(model).weight)
    head = 0 if tied else _count(model.get_output_embeddings())
    if ar:
        grad_params = decoder_params + hidden * hidden
        params += hidden * hidden
    else:
        grad_params = decoder_params + head
    root = params - sum(_count(block) for block in blocks)
    return ModelShape(
        params=params, grad_params=grad_params,
        lora_params=_lora(model, *lora) if lora else 0,
        largest_unit=max(root, max(_count(block) for block in blocks)),
        layers=len(blocks), hidden=hidden, intermediate=int(text.intermediate_size), heads=heads,
        q_dim=heads * head_dim, kv_dim=int(getattr(text, "num_key_value_heads", heads)) * head_dim,
        vocab=0 if ar else int(text.vocab_size))


_MEMO: dict[str, Shapes] = {}


def model_shapes(config: PretrainedConfig, layer: int, av_lora: tuple[int, list[str]] | None = None,
                 ar_lora: tuple[int, list[str]] | None = None) -> Shapes:
    """The AV's and the AR's shapes for layer ``layer`` (K; -1: the default two thirds). Remembered
    per (config, layer, adapters): the fixes ``nla plan`` tries reuse them."""
    layer = adapters.default_layer(config) if layer == -1 else adapters.check_layer(config, layer, "cache.layer")
    key = json.dumps([config.to_dict(), layer, av_lora, ar_lora], sort_keys=True, default=str)
    if key not in _MEMO:
        av = _shape(_meta_model(config), config, av_lora, ar=False)
        ar = _shape(_meta_model(adapters.truncated_config(config, layer + 1)), config, ar_lora, ar=True)
        _MEMO[key] = Shapes(av=av, ar=ar, layer=layer)
    return _MEMO[key]
