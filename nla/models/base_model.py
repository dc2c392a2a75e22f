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
from nla.models.loading import is_local_model


def config_sha256(directory: str | Path) -> str | None:
    path = Path(directory) / "config.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def describe_base_model(name_or_path: str) -> dict:
    """``base_model_source`` for a local model directory; {} for hub ids and packaged models."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return {}
    return {"path": str(path.resolve()), "config_sha256": config_sha256(path)}


def locate_base_model(name: str | None, source: dict, field: str = "target", option: str = "--target") -> str | None:
    """What to load for the base model ``name``: the recorded local directory when its config still
    matches (from where training ran, or by its absolute path), else ``name`` itself for hub ids.
    A local base that cannot be found is a one-line error asking for ``option``."""
    if not name or not source.get("path"):
        return name
    expected = source.get("config_sha256")
    for candidate in (Path(name).expanduser(), Path(source["path"])):
        if candidate.is_dir() and config_sha256(candidate) == expected:
            return str(candidate)
    raise ConfigError(field, f"the pair's base model {name!r} (recorded at {source['path']}) is not there, or its "
                      f"config.json changed since; pass {option} with the model the pair was trained on")


def resolve_base(given: str | None, name: str | None, source: dict, fallback: str | None = None,
                 what: str = "the adapter's base model") -> str:
    """The base model to put an adapter (or a truncated AR) on: ``given`` (``--base``) when set, else
    the recorded ``name`` found as ``locate_base_model`` finds it, else ``fallback`` (the adapter's
    own ``base_model_name_or_path``). Released adapters name a path on their trainer's disk: a local
    path that is not here is a one-line error asking for ``--base``, before any weights load."""
    if given:
        if is_local_model(given) and not Path(given).expanduser().exists():
            raise ConfigError("base", f"'{given}' does not exist; give a hub id or a local model directory")
        return given
    candidate = locate_base_model(name, source, "base", "--base NAME_OR_DIR") or fallback
    if not candidate:
        raise ConfigError("base", f"nothing names {what}; pass --base NAME_OR_DIR")
    if is_local_model(candidate) and not Path(candidate).expanduser().exists():
        raise ConfigError("base", f"{what} '{candidate}' does not exist here; pass --base NAME_OR_DIR")
    return candidate
