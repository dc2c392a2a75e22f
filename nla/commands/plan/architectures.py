"""Model configs without weights: a local ``config.json``, the hub's config, or a built-in table.

The table holds the published ``config.json`` numbers of every family nla ships configs for (as
litgpt's config registry does), so ``nla plan`` answers on a machine with no hub. Only the keys that
decide parameter counts and activation sizes are recorded; everything else takes the transformers
default of the model type. The hub is asked only when ``HF_HUB_OFFLINE`` is unset, with short
timeouts, and any failure (offline, gated, unknown id) falls back to the table.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from transformers import AutoConfig, PretrainedConfig

from nla.core.errors import ConfigError
from nla.models.packaged import PREFIX

HUB_TIMEOUT_S = 5.0

_SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                      image_size=896, patch_size=14, vision_use_head=False)

ARCHITECTURES: dict[str, dict] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "Qwen/Qwen2.5-0.5B-Instruct": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6),
    "Qwen/Qwen2.5-7B-Instruct": dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, rope_theta=1000000.0, rms_norm_eps=1e-6),
    "Qwen/Qwen3-8B": dict(
        model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False, rope_theta=1000000.0,
        rms_norm_eps=1e-6),
    "meta-llama/Llama-3.1-8B-Instruct": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
        rms_norm_eps=1e-5, max_position_embeddings=131072, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                             high_freq_factor=4.0, original_max_position_embeddings=8192)),
    "meta-llama/Llama-3.3-70B-Instruct": dict(
        model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
        rms_norm_eps=1e-5, max_position_embeddings=131072, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                             high_freq_factor=4.0, original_max_position_embeddings=8192)),
    "google/gemma-3-12b-it": dict(
        model_type="gemma3", mm_tokens_per_image=256, vision_config=_SIGLIP_SO400M,
        text_config=dict(hidden_size=3840, intermediate_size=15360, num_hidden_layers=48, num_attention_heads=16,
                         num_key_value_heads=8, head_dim=256, vocab_size=262208, sliding_window=1024,
                         rope_scaling=dict(rope_type="linear", factor=8.0))),
    "google/gemma-3-27b-it": dict(
        model_type="gemma3", mm_tokens_per_image=256, vision_config=_SIGLIP_SO400M,
        text_config=dict(hidden_size=5376, intermediate_size=21504, num_hidden_layers=62, num_attention_heads=32,
                         num_key_value_heads=16, head_dim=128, vocab_size=262208, sliding_window=1024,
                         query_pre_attn_scalar=168, rope_scaling=dict(rope_type="linear", factor=8.0))),
}
"""Hub id -> the architecture keys of its published ``config.json`` (Gemma-3: the text config of the
multimodal checkpoint, whose SigLIP vision tower the AV loads too)."""

PACKAGED_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""``packaged:NAME`` -> the hub id of the model the package ships."""


def table_config(name: str) -> PretrainedConfig:
    """The built-in config of ``name`` (a hub id of ``ARCHITECTURES``, case-insensitive)."""
    matches = [key for key in ARCHITECTURES if key.lower() == name.lower()]
    if not matches:
        known = ", ".join(ARCHITECTURES)
        raise ConfigError("data.source.target.name_or_path", f"{name!r} is neither a local directory, reachable on the hub, "
                          f"nor in nla's table of architectures ({known}); give a directory with its config.json")
    numbers = dict(ARCHITECTURES[matches[0]])
    return AutoConfig.for_model(numbers.pop("model_type"), **numbers)


def model_config(name_or_path: str, revision: str | None = None) -> tuple[PretrainedConfig, str]:
    """``(config, where it came from)`` for a model, never loading weights."""
    if name_or_path.startswith(PREFIX):
        return table_config(PACKAGED_IDS[name_or_path.removeprefix(PREFIX)]), "nla's table"
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError("data.source.target.name_or_path", f"{path} has no config.json")
        return AutoConfig.from_pretrained(path), f"{path / 'config.json'}"
    if path.suffix == ".gguf" or name_or_path.startswith((".", "/", "~")):
        raise ConfigError("data.source.target.name_or_path", f"{name_or_path} is not a directory with a config.json; "
                          "point at the HF directory (a GGUF file has no config.json to read)")
    hub = _hub_config(name_or_path, revision)
    if hub is not None:
        return hub, "the hub"
    return table_config(name_or_path), "nla's table"


def _hub_reachable() -> bool:
    """One TCP connection to the hub's endpoint, bounded in time (DNS included), so that a machine
    without network falls back to the table at once instead of waiting for the client's retries."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, 443), timeout=HUB_TIMEOUT_S).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT_S)
    return bool(result and result[0])


def _hub_config(repo_id: str, revision: str | None) -> PretrainedConfig | None:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on") or not _hub_reachable():
        return None
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import HfHubHTTPError

        file = hf_hub_download(repo_id, "config.json", revision=revision, etag_timeout=HUB_TIMEOUT_S)
        return AutoConfig.from_pretrained(Path(file).parent)
    except (OSError, ValueError, HfHubHTTPError):
        return None
