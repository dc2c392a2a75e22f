"""The AV's causal LM, from a full HF directory or from an adapter directory put back on its base.

An adapter may be stacked on a warm start (EasyNLA-style releases: the GRPO adapter was trained on top
of the AV-SFT adapter, so loading it on the raw base is wrong): the sidecar's ``warm_start_adapter``
names that adapter's directory, and it is merged into the base weights before the AV's own adapter
goes on.
"""

from __future__ import annotations

from pathlib import Path

from nla.core.errors import ConfigError
from nla.models import lora
from nla.models.base_model import resolve_base
from nla.models.loading import ModelArgs, load_causal_lm
from nla.models.sidecar import SIDECAR_FILENAME, Sidecar


def warm_start(directory: Path, sidecar: Sidecar) -> Path | None:
    """The warm-start adapter's directory the sidecar names, checked to hold an adapter; None when none."""
    if sidecar.warm_start_adapter is None:
        return None
    if not lora.is_adapter_dir(directory):
        raise ConfigError("warm_start_adapter", f"is set in {directory / SIDECAR_FILENAME} but {directory} holds a "
                          "full model, not an adapter to stack on it; remove the field")
    path = directory / sidecar.warm_start_adapter
    lora.check_adapter_files(path, "warm_start_adapter")
    return path


def prepare_av(directory: Path, sidecar: Sidecar, base: str | None, quantization: str = "none") -> str | None:
    """Check the AV's files and return the base model its adapter goes on (None: a full model). Runs
    before any weights load, so a missing file or base is one line at once."""
    stacked = warm_start(directory, sidecar)
    if not lora.is_adapter_dir(directory):
        if not (directory / "config.json").is_file():
            raise ConfigError("av", f"{directory} holds neither config.json (a full model) nor {lora.ADAPTER_CONFIG} "
                              "(a LoRA adapter)")
        return None
    lora.check_adapter_files(directory, "av")
    if stacked is not None and quantization != "none":
        raise ConfigError("quantization", f"is {quantization!r} but {directory}'s adapter is stacked on a warm "
                          "start, which is merged into the base weights: load it with none")
    return resolve_base(base, sidecar.base_model, sidecar.base_model_source, lora.adapter_base(directory))


def load_av_model(directory: Path, sidecar: Sidecar, base: str | None, dtype: str, quantization: str,
                  trainable: bool):
    """The AV's causal LM: ``directory`` itself, or ``base`` (from ``prepare_av``) with the warm start
    merged and the AV's adapter on it (trainable with ``trainable``)."""
    if base is None:
        return load_causal_lm(ModelArgs(str(directory), dtype=dtype, quantization=quantization))
    model = load_causal_lm(ModelArgs(base, dtype=dtype, quantization=quantization))
    stacked = warm_start(directory, sidecar)
    if stacked is not None:
        lora.merge_adapter(model, stacked, "warm_start_adapter")
    return lora.load_adapter(model, directory, trainable, field="av")
