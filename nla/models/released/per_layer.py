"""Pairs that serve several layers (the Phi-4 and Qwen3-4B releases): one AV whose prompt names the
layer in a ``{layer}`` slot, one AR value head per layer.

Both sidecars list the layers under ``layers``; the AR directory holds ``value_heads.safetensors``,
one ``[d, d]`` tensor per layer under the key ``layer_{K}.weight``. Loading picks one layer
(``choose_layer``), after which the pair is a pair of that layer like any other.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from safetensors import SafetensorError, safe_open
from torch import Tensor

from nla.core.errors import ConfigError
from nla.models.sidecar import PromptTemplates, Sidecar

VALUE_HEADS_FILENAME = "value_heads.safetensors"
# ``{layer}`` but not a doubled literal ``{{layer}}``: the templates are filled with ``str.format`` later.
LAYER_SLOT = re.compile(r"(?<!\{)\{layer\}(?!\})")
HEAD_KEY = re.compile(r"layer_(\d+)\.weight")


def choose_layer(sidecar: Sidecar, layer: int | None, file: Path) -> Sidecar:
    """``sidecar`` read at ``layer``: K set and ``{layer}`` filled in both templates. A sidecar of one
    layer comes back as it is (``layer`` must then be None or its K); a per-layer one needs a layer
    it lists, or records a default K. Anything else is one line naming ``layer`` and the choices."""
    if not sidecar.layers:
        if layer is not None and layer != sidecar.extraction_layer_index:
            raise ConfigError("layer", f"is {layer} but {file} serves layer {sidecar.extraction_layer_index} only; "
                              "leave it out")
        return sidecar
    chosen = sidecar.extraction_layer_index if layer is None else layer
    if chosen not in sidecar.layers:
        listed = ", ".join(map(str, sidecar.layers))
        state = "is missing" if chosen is None else f"is {chosen}"
        raise ConfigError("layer", f"{state}; {file} serves layers {listed}: pass --layer with one of them")
    templates = PromptTemplates(LAYER_SLOT.sub(str(chosen), sidecar.prompt_templates.av),
                                LAYER_SLOT.sub(str(chosen), sidecar.prompt_templates.ar))
    return dataclasses.replace(sidecar, extraction_layer_index=chosen, prompt_templates=templates)


def value_head(directory: Path, layer: int) -> Tensor:
    """The value head of ``layer`` (only that tensor is read); one line naming the file when it is
    missing, damaged or holds no head for ``layer``."""
    path = Path(directory) / VALUE_HEADS_FILENAME
    if not path.is_file():
        raise ConfigError("ar", f"{path} is missing; a per-layer AR needs its value heads")
    key = f"layer_{layer}.weight"
    try:
        with safe_open(str(path), framework="pt") as heads:
            if key in heads.keys():
                return heads.get_tensor(key)
            held = sorted(int(hit.group(1)) for name in heads.keys() if (hit := HEAD_KEY.fullmatch(name)))
    except SafetensorError as error:
        raise ConfigError("ar", f"{path} cannot be read as safetensors ({str(error).splitlines()[0]})") from None
    raise ConfigError("ar", f"{path} holds no {key} (heads for layers {held or 'none'}); expected one "
                      "[d, d] tensor per layer named layer_K.weight")
