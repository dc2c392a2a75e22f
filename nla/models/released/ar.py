"""The AR of any layout: a full HF directory (ours, the reference release, a full-depth AR truncated
when it loads), a LoRA AR over a truncated base (``ar_lora``), or a per-layer one (``per_layer``)."""

from __future__ import annotations

from pathlib import Path

from nla.core.errors import ConfigError
from nla.models import adapters, lora
from nla.models.base_model import resolve_base
from nla.models.loading import ModelArgs, load_causal_lm, load_config
from nla.models.reconstructor import VALUE_HEAD_FILENAME, Reconstructor
from nla.models.released import ar_lora, per_layer
from nla.models.sidecar import Sidecar


def layout(directory: Path) -> str:
    """``lora`` (``ar_meta.json``), ``per_layer`` (``value_heads.safetensors``) or ``full``."""
    if ar_lora.is_lora_ar(directory):
        return "lora"
    return "per_layer" if (Path(directory) / per_layer.VALUE_HEADS_FILENAME).is_file() else "full"


def prepare_ar(directory: Path, sidecar: Sidecar, base: str | None) -> str | None:
    """Check the AR's files and return the base model it is built on (None: a full directory). Runs
    before any weights load."""
    directory = Path(directory)
    kind = layout(directory)
    if kind == "full":
        if not (directory / VALUE_HEAD_FILENAME).is_file():
            raise ConfigError("ar", f"{directory / VALUE_HEAD_FILENAME} is missing; an AR directory needs its head")
        return None
    if kind == "lora":
        ar_lora.check_files(directory)
        fallback = None
    else:
        lora.check_adapter_files(directory, "ar")
        fallback = lora.adapter_base(directory)
    return resolve_base(base, sidecar.base_model, sidecar.base_model_source, fallback, "the AR's base model")


def load_reconstructor(directory: Path, sidecar: Sidecar, base: str | None, dtype: str) -> Reconstructor:
    """The AR in eval mode; ``base`` comes from ``prepare_ar``."""
    directory = Path(directory)
    kind = layout(directory)
    if kind == "full":
        return Reconstructor.from_pretrained(directory, dtype=dtype).eval()
    if kind == "lora":
        return ar_lora.load_lora_reconstructor(directory, ar_lora.read_ar_meta(directory), base, dtype).eval()
    layer = sidecar.extraction_layer_index
    args = ModelArgs(base, dtype=dtype)
    config = load_config(args)
    adapters.check_layer(config, layer, "layer")
    head, d = per_layer.value_head(directory, layer), adapters.hidden_size(config)
    if tuple(head.shape) != (d, d):
        raise ConfigError("ar", f"{directory / per_layer.VALUE_HEADS_FILENAME} holds layer_{layer}.weight of shape "
                          f"{tuple(head.shape)}; expected ({d}, {d})")
    reconstructor = Reconstructor(load_causal_lm(args, keep_layers=layer + 1, config=config, without_head=True),
                                  layer, head)
    lora.load_adapter(reconstructor.model, directory, trainable=False, keep_layers=layer + 1, field="ar")
    return reconstructor.eval()
