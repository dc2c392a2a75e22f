"""Where each model family keeps its decoder layers, final norm and input embeddings.

Everything in nla that reaches inside a HF model goes through this table, so supporting a new family
means adding one ``Family`` row to ``FAMILIES`` below and a tiny model to ``tests/fixtures/tiny.py``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from nla.core.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    """Short name used in messages."""
    model_types: tuple[str, ...]
    """``config.model_type`` values this row covers."""
    decoder: str = "model"
    """Dotted path from the causal LM to the module that owns layers, norm and embeddings."""
    layers: str = "layers"
    """Attribute of the decoder holding the ``nn.ModuleList`` of blocks."""
    norm: str = "norm"
    """Attribute of the decoder holding the final norm."""
    embeddings: str = "embed_tokens"
    """Attribute of the decoder holding the input embedding module."""
    num_layers_key: str = "num_hidden_layers"
    """Config key that counts the blocks."""
    hidden_size_key: str = "hidden_size"
    """Config key that holds d."""
    text_config: str | None = None
    """For multimodal wrappers: the config attribute holding the language model's config."""
    scaled_embeddings: bool = False
    """The embedding module itself multiplies by sqrt(d) (Gemma). Its output already carries the scale,
    so a vector written over that output must not be scaled again; a manual ``weight[ids]`` lookup
    would miss it."""
    learned_positions: bool = False
    """Positions are rows of a learned table (GPT-2): a sequence past the position limit fails with an
    IndexError, where rotary positions only drift into ones never trained."""


FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",)),
    Family("mistral", ("mistral",)),
    Family("qwen2", ("qwen2",)),
    Family("qwen3", ("qwen3",)),
    Family("phi3", ("phi3",)),
    Family("gemma2", ("gemma2",), scaled_embeddings=True),
    Family("gemma3", ("gemma3_text",), scaled_embeddings=True),
    Family(
        "gemma3-multimodal",
        ("gemma3",),
        decoder="model.language_model",
        text_config="text_config",
        scaled_embeddings=True,
    ),
    Family(
        "gpt2",
        ("gpt2",),
        decoder="transformer",
        layers="h",
        norm="ln_f",
        embeddings="wte",
        num_layers_key="n_layer",
        hidden_size_key="n_embd",
        learned_positions=True,
    ),
)

SUPPORTED_MODEL_TYPES = tuple(t for f in FAMILIES for t in f.model_types)


def family_of(config: PretrainedConfig) -> Family:
    for family in FAMILIES:
        if config.model_type in family.model_types:
            return family
    raise ConfigError(
        "model",
        f"unsupported architecture '{config.model_type}'; supported: {', '.join(SUPPORTED_MODEL_TYPES)} "
        "(add a Family row in nla/modules/adapters.py to extend)",
    )


def text_config(config: PretrainedConfig) -> PretrainedConfig:
    """The language model's own config (the wrapper's ``text_config`` for multimodal checkpoints)."""
    family = family_of(config)
    return getattr(config, family.text_config) if family.text_config else config


def num_layers(config: PretrainedConfig) -> int:
    return int(getattr(text_config(config), family_of(config).num_layers_key))


def hidden_size(config: PretrainedConfig) -> int:
    return int(getattr(text_config(config), family_of(config).hidden_size_key))


def embedding_scale(config: PretrainedConfig) -> float:
    """The factor the embedding module applies to its looked-up rows (sqrt(d) for Gemma, else 1)."""
    return math.sqrt(hidden_size(config)) if family_of(config).scaled_embeddings else 1.0


def default_layer(config: PretrainedConfig) -> int:
    """About two thirds of the depth, as the released NLAs chose (Gemma-3-12B: 32 of 48, Llama-3.3-70B:
    53 of 80)."""
    return min(round(2 * num_layers(config) / 3), num_layers(config) - 1)


def check_layer(config: PretrainedConfig, layer: int, field: str = "model.layer") -> int:
    n = num_layers(config)
    if not 0 <= layer < n:
        raise ConfigError(field, f"layer {layer} is out of range for a {n}-layer model; use 0 to {n - 1}")
    return layer


def truncated_config(config: PretrainedConfig, keep_layers: int) -> PretrainedConfig:
    """A copy of ``config`` that builds only the first ``keep_layers`` blocks.

    Per-layer lists (``layer_types`` and the like) are sliced too, so sliding-window and full-attention
    blocks keep their pattern.
    """
    n = num_layers(config)
    if not 1 <= keep_layers <= n:
        raise ConfigError("model.layer", f"cannot keep {keep_layers} of {n} layers; use 1 to {n}")
    config = copy.deepcopy(config)
    family = family_of(config)
    inner = text_config(config)
    for key, value in list(vars(inner).items()):
        if isinstance(value, (list, tuple)) and len(value) == n and key != "architectures":
            setattr(inner, key, type(value)(value[:keep_layers]))
    setattr(inner, family.num_layers_key, keep_layers)
    return config


def _walk(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def decoder(model: PreTrainedModel) -> nn.Module:
    """The module that runs embeddings then blocks then final norm (no LM head)."""
    return _walk(model, family_of(model.config).decoder)


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    return getattr(decoder(model), family_of(model.config).layers)


def final_norm(model: PreTrainedModel) -> nn.Module:
    return getattr(decoder(model), family_of(model.config).norm)


def replace_final_norm(model: PreTrainedModel, module: nn.Module) -> None:
    setattr(decoder(model), family_of(model.config).norm, module)


def input_embeddings(model: PreTrainedModel) -> nn.Module:
    return getattr(decoder(model), family_of(model.config).embeddings)


def position_limit(config: PretrainedConfig) -> int | None:
    """How many positions the model was built for (``max_position_embeddings``; GPT-2's ``n_positions``
    answers to that name too), or None when its config says nothing. Learned position embeddings
    (GPT-2) fail with an IndexError beyond it; rotary ones drift into positions never trained."""
    limit = getattr(text_config(config), "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def check_length(config: PretrainedConfig, tokens: int, field: str, what: str) -> None:
    """Refuse ``tokens`` positions beyond the model's limit, naming ``field`` and ``what`` needs them."""
    limit = position_limit(config)
    if limit is not None and tokens > limit:
        raise ConfigError(field, f"{what} needs {tokens} positions but the model has {limit} "
                          "(max_position_embeddings); lower it")
