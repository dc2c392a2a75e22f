"""Fit and cache configs read as files, the way LightningCLI reads them: a data block given as a file
(``data.init_args.source: ../family/data.yaml``, or ``source:`` of a cache config) is read in its place,
relative to the folder of the file that names it, and names from before 0.1.0 are renamed
(``nla.commands.legacy``). ``nla plan`` and ``nla export`` read configs through here; every other
command has its ``--config`` files checked here first (``check_config_files``): a file that is empty or
holds no mapping is one line naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from nla.commands import legacy
from nla.core.errors import ConfigError


def _load(path: Path, field: str) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(field, f"cannot read {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        problem = "is empty" if loaded is None else f"holds a {type(loaded).__name__}, not a mapping of keys"
        raise ConfigError(field, f"{path} {problem}; write its settings as a YAML mapping (key: value lines)")
    return loaded


def check_config_files(argv: list[str]) -> None:
    """Every ``--config FILE`` of a command line holds a mapping of settings: jsonargparse would reject
    an empty file, or one whose top level is a list, with "Unexpected config:" and no file name. A value
    that is no file (YAML text given inline) is left to the parser."""
    for index, arg in enumerate(argv):
        key, equals, inline = arg.partition("=")
        value = inline if equals else argv[index + 1] if index + 1 < len(argv) else ""
        # os.path.isfile, not Path.is_file: inline YAML text can be too long a name to stat.
        if key in ("--config", "-c") and os.path.isfile(os.path.expanduser(value)):
            _load(Path(value).expanduser(), "config")


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
