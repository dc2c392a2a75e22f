"""The target model an exported pair was trained on, recorded so the pair still finds it elsewhere.

A sidecar's ``base_model`` is the name as the user gave it (``Qwen/Qwen2.5-7B-Instruct``,
``packaged:smollm2``, or a path such as ``runs/tiny-model``, relative to where training ran). For a
local directory the sidecar also records ``base_model_source``: its absolute ``path`` and the
``config_sha256`` of its ``config.json``. ``locate_base_model`` then finds the model from any
working directory, and refuses a directory whose config changed since (another model at that path).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from nla.core.errors import ConfigError


def config_sha256(directory: str | Path) -> str | None:
    path = Path(directory) / "config.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def describe_base_model(name_or_path: str) -> dict:
    """``base_model_source`` for a local model directory; {} for hub ids and packaged models."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return {}
    return {"path": str(path.resolve()), "config_sha256": config_sha256(path)}


def locate_base_model(name: str | None, source: dict, field: str = "target") -> str | None:
    """What to load for the base model ``name``: the recorded local directory when its config still
    matches (from where training ran, or by its absolute path), else ``name`` itself for hub ids.
    A local base that cannot be found is a one-line error asking for ``--target``."""
    if not name or not source.get("path"):
        return name
    expected = source.get("config_sha256")
    for candidate in (Path(name).expanduser(), Path(source["path"])):
        if candidate.is_dir() and config_sha256(candidate) == expected:
            return str(candidate)
    raise ConfigError(field, f"the pair's base model {name!r} (recorded at {source['path']}) is not there, or its "
                      "config.json changed since; pass --target with the model the pair was trained on")
