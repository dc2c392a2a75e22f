"""Fit and cache configs read as files, the way LightningCLI reads them: a data block given as a file
(``data.init_args.source: ../family/data.yaml``, or ``source:`` of a cache config) is read in its place,
relative to the folder of the file that names it, and names from before 0.1.0 are renamed
(``nla.commands.legacy``). ``nla plan`` and ``nla export`` read configs through here.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from nla.commands import legacy
from nla.core.errors import ConfigError


def _load(path: Path, field: str) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(field, f"cannot read {path}: {str(error).splitlines()[0]}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(field, f"{path} holds a {type(loaded).__name__}, not a mapping of keys")
    return loaded


def _included(value, folder: Path, field: str):
    """A block given as a file name, read relative to ``folder``; any other value as it is."""
    if isinstance(value, str):
        return _load((folder / value).expanduser(), field)
    return value


def read_config(path: str | Path, field: str = "config") -> dict:
    """The config at ``path`` as one mapping: its data block read in place, old names renamed (with a
    line on stderr saying which)."""
    path = Path(path)
    config = _load(path, field)
    config, notes = legacy.migrate(config)
    legacy.warn(str(path), notes)
    folder = path.parent
    if "source" in config:
        config["source"] = _included(config["source"], folder, "source")
    data = config.get("data")
    if isinstance(data, dict) and isinstance(data.get("init_args"), dict) and "source" in data["init_args"]:
        init = data["init_args"]
        data["init_args"] = {**init, "source": _included(init["source"], folder, "data.init_args.source")}
    return config
