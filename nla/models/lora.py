"""LoRA adapters (peft) for the AV and the AR: wrapping, switching, merging and the adapter files.

Adapters are injected into the HF model in place (``peft.inject_adapter_in_model``), so the model
keeps its class and every caller (injection hooks, ``adapters.decoder``, sampling) sees the same
object as without LoRA. The trained adapter is named ``default``; the GRPO reference adds a frozen
``reference`` adapter on the same base. Saved adapters use peft's file layout
(``adapter_config.json`` + ``adapter_model.safetensors``), so plain ``peft.PeftModel.from_pretrained``
reads them too.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from nla.core.errors import ConfigError
from nla.models import adapters

TRAINED = "default"
WARM_START = "warm_start"
"""The name a warm-start adapter has while it is merged into the base weights (``merge_adapter``)."""
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# peft's saved keys: the wrapper's prefix, and no adapter name.
_SAVED_PREFIX = "base_model.model."
LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraArgs:
    """A LoRA adapter on one model; the base weights stay frozen."""

    r: int = 16
    """Rank of each low-rank update."""
    alpha: float = 32.0
    """Scale numerator: the update is multiplied by ``alpha / r`` (``alpha / sqrt(r)`` with ``rslora``)."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training (GRPO runs in eval mode, so none there)."""
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LIKE))
    """Names of the linear layers that get an adapter; the default covers the attention and MLP
    projections of Llama, Qwen2, Mistral and Gemma."""
    rslora: bool = False
    """Rank-stabilised scaling (``alpha / sqrt(r)``): high ranks otherwise learn too slowly."""
    merge_on_export: bool = True
    """Export a standard HF directory with the adapter merged into the weights (the released layout);
    false writes only the adapter files next to the tokenizer and sidecar, and the loaders put it back
    on the base model the sidecar names."""


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("lora", "needs peft: pip install 'nla[lora]'") from None
    return peft


def as_args(args: LoraArgs | dict | None) -> LoraArgs | None:
    """``LoraArgs`` from a module's hyperparameters: LightningCLI's subclass mode hands nested
    dataclasses over as plain mappings."""
    return LoraArgs(**args) if isinstance(args, dict) else args


def merge_on_export(args: LoraArgs | dict | None) -> bool:
    """Whether an export merges the AV's adapter: yes unless its ``LoraArgs`` say otherwise."""
    args = as_args(args)
    return args is None or args.merge_on_export


def lora_config(args: LoraArgs, field_name: str):
    if args.r < 1:
        raise ConfigError(f"{field_name}.r", f"must be at least 1, got {args.r}")
    if not args.alpha > 0:
        raise ConfigError(f"{field_name}.alpha", f"must be positive, got {args.alpha}")
    if not 0 <= args.dropout < 1:
        raise ConfigError(f"{field_name}.dropout", f"must lie in [0, 1), got {args.dropout}")
    if not args.target_modules:
        raise ConfigError(f"{field_name}.target_modules", "names no layer")
    return _peft().LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout,
                              target_modules=list(args.target_modules), use_rslora=args.rslora, bias="none")


def _inject(config, model: nn.Module, name: str, field_name: str) -> None:
    with warnings.catch_warnings():
        # A second adapter on the same model is the point here, not an accident.
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        try:
            _peft().inject_adapter_in_model(config, model, adapter_name=name)
        except ValueError as error:
            raise ConfigError(f"{field_name}.target_modules", str(error).splitlines()[0]) from None
    activate(model, TRAINED)


def lora_layers(model: nn.Module) -> list[nn.Module]:
    # A model holds LoRA layers only once peft is imported; importing it just to look would pull in
    # bitsandbytes (slow, and noisy on CPU) on every plain run.
    if "peft" not in sys.modules:
        return []
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


def activate(model: nn.Module, name: str) -> None:
    """Route every LoRA layer through adapter ``name``; only ``default`` (the trained one) keeps gradients."""
    for layer in lora_layers(model):
        layer.set_adapter(name)
    for param_name, param in model.named_parameters():
        if ".lora_" in param_name:
            param.requires_grad_(f".{TRAINED}." in param_name)


def wrap(model: nn.Module, args: LoraArgs | dict, field_name: str) -> nn.Module:
    """Add a trainable ``default`` adapter to ``model`` in place and freeze everything else in it."""
    model.requires_grad_(False)
    _inject(lora_config(as_args(args), field_name), model, TRAINED, field_name)
    return model


def has_lora(model: nn.Module) -> bool:
    return bool(lora_layers(model))


def add_frozen_copy(model: nn.Module, name: str) -> None:
    """A second adapter ``name`` holding the current values of ``default``, frozen: the starting
    policy at the cost of one adapter, on the same base weights."""
    config = model.peft_config[TRAINED]
    _inject(config, model, name, "model.verbalizer_lora")
    weights = adapter_state(model, TRAINED)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in weights.items():
            params[key.replace(f".{TRAINED}.", f".{name}.")].copy_(value)


@contextmanager
def using(model: nn.Module, name: str):
    """Run the block with adapter ``name`` active, then switch back to the trained one."""
    activate(model, name)
    try:
        yield
    finally:
        activate(model, TRAINED)


def adapter_state(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    return {key: value for key, value in model.state_dict().items() if ".lora_" in key and f".{name}." in key}


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict in its own (adapter-free) key layout with ``default`` merged into the
    weights, computed beside the model: merging in place and unmerging would round the trained
    base weights in bf16."""
    merged, layers = {}, set(lora_layers(model))
    for layer_name, module in model.named_modules():
        if module in layers and TRAINED in module.lora_A:
            weight = module.get_base_layer().weight
            merged[f"{layer_name}.weight"] = (weight + module.get_delta_weight(TRAINED).to(weight.dtype)).detach()
    state = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        state[key] = merged.get(key, value)
    return state


def save_adapter(model: nn.Module, directory: Path, base_model: str) -> None:
    """Write ``default`` in peft's layout: ``adapter_config.json`` and ``adapter_model.safetensors``."""
    config = model.peft_config[TRAINED]
    config.base_model_name_or_path = base_model
    config.save_pretrained(str(directory))
    weights = {_SAVED_PREFIX + key.replace(f".{TRAINED}.", "."): value.detach().cpu().contiguous()
               for key, value in adapter_state(model, TRAINED).items()}
    save_file(weights, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})


def save_model(model: nn.Module, directory: Path, merge: bool, base_model: str) -> None:
    """``model.save_pretrained`` for a model with or without LoRA: merged into a standard HF directory,
    or as the adapter files alone (``merge=False``)."""
    if not has_lora(model):
        model.save_pretrained(directory)
    elif merge:
        model.save_pretrained(directory, state_dict=merged_state(model))
    else:
        save_adapter(model, directory, base_model)


@contextmanager
def merged_saves(model: nn.Module):
    """Within the block, ``model.save_pretrained`` writes the merged weights: for callers that save the
    model themselves (``Reconstructor.save_pretrained``). Without LoRA it changes nothing."""
    if not has_lora(model):
        yield
        return
    model.save_pretrained = partial(type(model).save_pretrained, model, state_dict=merged_state(model))
    try:
        yield
    finally:
        del model.save_pretrained


def is_adapter_dir(directory: Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file() and not (Path(directory) / "config.json").is_file()


def adapter_base(directory: Path) -> str | None:
    """The base model an adapter's config names (peft's ``base_model_name_or_path``); None when none."""
    path = Path(directory) / ADAPTER_CONFIG
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        raise ConfigError("lora", f"{path} is not a JSON mapping; is this a PEFT adapter directory?") from None
    return str(name) if name else None


def load_adapter(model: nn.Module, directory: Path, trainable: bool, keep_layers: int | None = None,
                 field: str = "lora") -> nn.Module:
    """Put the adapter saved in ``directory`` on ``model`` (its base) as ``default``. The file must hold
    exactly the adapter's tensors: a layer whose tensors were missing would silently keep the fresh
    adapter's values (an update of zero). ``keep_layers``: ``model`` holds only the first blocks of
    the adapter's base (a truncated AR), and the file's tensors of the blocks above are not read."""
    _put(model, directory, TRAINED, field, keep_layers)
    if not trainable:
        model.requires_grad_(False)
    return model


def merge_adapter(model: nn.Module, directory: Path, field: str = "lora") -> None:
    """Add the update of the adapter saved in ``directory`` to ``model``'s weights, in float32, and leave
    no trace of it (no LoRA layer, no config): the warm start another adapter was trained on top of.
    Call it before any adapter is put on ``model``."""
    if has_lora(model):
        raise ValueError("merge the warm-start adapter before putting another adapter on the model")
    _put(model, directory, WARM_START, field)
    layers = set(lora_layers(model))
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if module in layers:
                base = module.get_base_layer()
                base.weight.copy_((base.weight.float() + module.get_delta_weight(WARM_START).float()).to(base.weight.dtype))
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, base)
    model.peft_config.pop(WARM_START, None)


def check_adapter_files(directory: Path, field: str) -> None:
    """One line naming ``field`` and the file unless ``directory`` holds peft's two adapter files."""
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (Path(directory) / name).is_file():
            raise ConfigError(field, f"{Path(directory) / name} is missing; a LoRA adapter directory holds "
                              f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")


def _put(model: nn.Module, directory: Path, name: str, field: str, keep_layers: int | None = None) -> None:
    directory = Path(directory)
    check_adapter_files(directory, field)
    path = directory / ADAPTER_WEIGHTS
    try:
        config = _peft().LoraConfig.from_pretrained(str(directory))
    except (TypeError, ValueError) as error:
        raise ConfigError(field, f"{directory / ADAPTER_CONFIG} is not a LoRA config ({str(error).splitlines()[0]})") \
            from None
    model.requires_grad_(False)
    _inject(config, model, name, field)
    block = re.compile(rf"\.{re.escape(adapters.family_of(model.config).layers)}\.(\d+)\.")

    def above_kept(key: str) -> bool:
        hit = block.search(key)
        return keep_layers is not None and hit is not None and int(hit.group(1)) >= keep_layers

    copy_adapter(model, read_tensors(path, field), lambda param: _SAVED_PREFIX + param.replace(f".{name}.", "."),
                 path, name, field, above_kept)


def read_tensors(path: Path, field: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a damaged file is one line naming it."""
    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise ConfigError(field, f"{path} cannot be read as safetensors ({str(error).splitlines()[0]})") from None


def copy_adapter(model: nn.Module, saved: dict[str, torch.Tensor], file_key, path: Path, name: str, field: str,
                 skip=None) -> None:
    """Copy adapter ``name``'s tensors out of ``saved`` (a file's tensors, ``file_key`` mapping a model
    parameter name to its key there): every one must be there with its shape, and nothing else but
    what ``skip`` accepts; else one line naming ``path`` and the key."""
    expected = {file_key(param): param for param in adapter_state(model, name)}
    for key in saved:
        if key not in expected and not (skip is not None and skip(key)):
            raise ConfigError(field, f"{path} holds {key}, which this base model lacks")
    missing = sorted(set(expected) - set(saved))
    if missing:
        raise ConfigError(field, f"{path} lacks {len(missing)} of the adapter's {len(expected)} tensors (first: "
                          f"{', '.join(missing[:2])}); those layers would keep a zero update: export the adapter again")
    params = dict(model.named_parameters())
    for key, param in expected.items():
        if saved[key].shape != params[param].shape:
            raise ConfigError(field, f"{path} holds {key} of shape {tuple(saved[key].shape)} where this base model "
                              f"needs {tuple(params[param].shape)}; made for another base model or rank?")
    with torch.no_grad():
        for key, param in expected.items():
            params[param].copy_(saved[key])
