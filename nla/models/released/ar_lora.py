"""A LoRA AR over its base's first K + 1 blocks (the DeepSeek-V4-Flash release, EasyNLA's LoRA ARs).

The AR directory holds ``ar_meta.json`` and ``ar_lora_value_head.safetensors``, and no model: the AR is
the base truncated to ``ar_num_layers`` blocks with the LoRA put back and the head on top. The
tensors keep the trainer's names: the LoRA ones its in-model names under ``backbone.`` (e.g.
``backbone.model.layers.0.self_attn.q_proj.lora_A.default.weight``), the head ``value_head.weight``.
No sidecar of ours ships with it: the AR's is the AV's with K and d from ``ar_meta.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from nla.core.errors import ConfigError
from nla.models import adapters, lora
from nla.models.loading import ModelArgs, load_causal_lm, load_config
from nla.models.reconstructor import Reconstructor
from nla.models.sidecar import Sidecar

AR_META_FILENAME = "ar_meta.json"
AR_WEIGHTS_FILENAME = "ar_lora_value_head.safetensors"
HEAD_KEY = "value_head.weight"
TENSOR_PREFIX = "backbone."
"""What the trainer's AR module calls the causal LM it wraps: the prefix of every LoRA tensor's name."""


@dataclass
class ArMeta:
    """``ar_meta.json``, the fields we read (others, such as the trainer's ``quant``, are ignored)."""

    num_layers: int
    """``ar_num_layers``: the base's blocks the AR keeps, K + 1."""
    lora: lora.LoraArgs
    """``lora_r``, ``lora_alpha``, ``target_modules`` and ``use_rslora`` (default true: the trainers
    that write this file build the AR's LoRA with rank-stabilised scaling)."""
    base_model: str | None = None
    """``base_model``: the model the AR truncates; None when the file names none (then ``--base`` or
    the AV sidecar's)."""
    d_model: int | None = None
    """``d_model`` when recorded; checked against the base's hidden size."""


def is_lora_ar(directory: Path) -> bool:
    return (Path(directory) / AR_META_FILENAME).is_file()


def read_ar_meta(directory: Path) -> ArMeta:
    """``directory/ar_meta.json`` checked field by field: a missing or wrong one is one line naming the
    field and the file."""
    path = Path(directory) / AR_META_FILENAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ConfigError(AR_META_FILENAME, f"{path} is not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(AR_META_FILENAME, f"{path} is not a JSON mapping")

    def field(key: str, kinds: tuple, valid, expected: str, default=ConfigError):
        if key not in raw:
            if default is ConfigError:
                raise ConfigError(key, f"missing from {path}; expected {expected}")
            return default
        value = raw[key]
        if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds) or not valid(value):
            raise ConfigError(key, f"is {value!r} in {path}; expected {expected}")
        return value

    num_layers = field("ar_num_layers", (int,), lambda v: v >= 1, "the number of blocks the AR keeps, K + 1")
    args = lora.LoraArgs(
        r=field("lora_r", (int,), lambda v: v >= 1, "the LoRA rank, a positive integer"),
        alpha=float(field("lora_alpha", (int, float), lambda v: v > 0, "the LoRA alpha, a positive number")),
        target_modules=list(field("target_modules", (list,), lambda v: v and all(isinstance(m, str) for m in v),
                                  "a list of the module names the LoRA targets")),
        rslora=field("use_rslora", (bool,), lambda v: True, "true or false", default=True),
    )
    # Older files lack the key and kept the final norm; nla's AR always drops it.
    if raw.get("final_norm_stripped") is not True:
        raise ConfigError("final_norm_stripped", f"is {raw.get('final_norm_stripped')!r} in {path}; nla reads only "
                          "ARs trained without the final norm (true)")
    # Only checked when present: K is ar_num_layers - 1 either way.
    field("extraction_layer_index", (int,), lambda v: v == num_layers - 1, f"K = ar_num_layers - 1 = {num_layers - 1}",
          default=None)
    return ArMeta(num_layers, args, field("base_model", (str,), bool, "a hub id or a path", default=None),
                  field("d_model", (int,), lambda v: v >= 1, "the hidden size, a positive integer", default=None))


def sidecar_for(meta: ArMeta, av: Sidecar) -> Sidecar:
    """The AR's sidecar this layout does not ship: the AV's (prompts, marker, MSE scale, base model)
    with K and d from ``ar_meta.json``, and its base model when it names one."""
    return dataclasses.replace(
        av, role="ar", extraction_layer_index=meta.num_layers - 1, layers=[], d_model=meta.d_model or av.d_model,
        extraction=dataclasses.replace(av.extraction, injection_scale=None),
        base_model=meta.base_model or av.base_model, base_model_source={} if meta.base_model else av.base_model_source,
        warm_start_adapter=None, training={}, extra={})


def check_files(directory: Path) -> None:
    path = Path(directory) / AR_WEIGHTS_FILENAME
    if not path.is_file():
        raise ConfigError("ar", f"{path} is missing; a LoRA AR needs its LoRA and value head tensors")


def load_lora_reconstructor(directory: Path, meta: ArMeta, base: str, dtype: str) -> Reconstructor:
    """The base's first ``meta.num_layers`` blocks with the LoRA and the head of
    ``ar_lora_value_head.safetensors``; every tensor must be there with its shape."""
    path = Path(directory) / AR_WEIGHTS_FILENAME
    saved = lora.read_tensors(path, "ar")
    head = saved.pop(HEAD_KEY, None)
    if head is None:
        raise ConfigError("ar", f"{path} holds no {HEAD_KEY}; the AR's value head is missing")
    args = ModelArgs(base, dtype=dtype)
    config = load_config(args)
    layer = adapters.check_layer(config, meta.num_layers - 1, "ar_num_layers")
    d = adapters.hidden_size(config)
    if meta.d_model is not None and meta.d_model != d:
        raise ConfigError("d_model", f"is {meta.d_model} in {Path(directory) / AR_META_FILENAME} but the base "
                          f"'{base}' has hidden size {d}")
    if tuple(head.shape) != (d, d):
        raise ConfigError("ar", f"{path} holds {HEAD_KEY} of shape {tuple(head.shape)}; expected ({d}, {d})")
    model = load_causal_lm(args, keep_layers=layer + 1, config=config, without_head=True)
    reconstructor = Reconstructor(model, layer, head)
    lora.wrap(reconstructor.model, meta.lora, "ar")
    lora.copy_adapter(reconstructor.model, saved, lambda name: TENSOR_PREFIX + name, path, lora.TRAINED, "ar")
    reconstructor.model.requires_grad_(False)
    return reconstructor
