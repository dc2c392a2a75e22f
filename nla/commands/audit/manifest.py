"""``audit.json``: what an audit directory was run with, so a rerun resumes only the same audit.

The manifest records the settings every row depends on (the pair and its sidecars, the target, the
data and its digest, the position rule, the cap, the batching, the variance). A rerun compares its
own settings with them before any model loads: the first key that differs is one line naming it,
since resuming would mix rows of two audits in one table. The number of processes is not a
setting: the shards are the same whatever it is (``nla.commands.audit.worker``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from nla.core.errors import ConfigError
from nla.core.files import atomic_write_bytes, check_replaceable
from nla.data.audit_table import MANIFEST, SHARDS
from nla.models.sidecar import Sidecar

KIND = "nla_audit"
VERSION = 1


def sidecar_digest(sidecar: Sidecar) -> str:
    """A hash of a sidecar's content: a pair exported again into the same directory is another pair."""
    return hashlib.sha256(json.dumps(sidecar.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ours(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


def read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError("out", f"{path} cannot be read ({error}); use a new --out, or --overwrite true") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND or not isinstance(manifest.get("settings"), dict):
        raise ConfigError("out", f"{path} is not an nla audit manifest; use a new --out")
    return manifest


def check_out(out: Path, settings: dict, overwrite: bool) -> bool:
    """Whether ``out`` holds this audit begun earlier (to resume); ``ConfigError`` when it holds files
    nla did not write, or an audit of other settings (unless ``overwrite``). Writes nothing."""
    check_replaceable(out, "out", _ours, "an nla audit")
    manifest = read_manifest(out)
    if manifest is None or overwrite:
        return False
    earlier = manifest["settings"]
    for key in dict.fromkeys([*settings, *earlier]):
        if settings.get(key) != earlier.get(key):
            what = ("the data changed since" if key == "data_digest" else
                    f"is {settings.get(key)!r} but")
            raise ConfigError(key, f"{what} the audit in {out} was begun with {earlier.get(key)!r}; use a new "
                              "--out, or --overwrite true to start it again")
    return True


def begin(out: Path, settings: dict, overwrite: bool, counts: dict) -> None:
    """Make ``out`` ready for the rows (one process does this, before any writes a shard): an
    overwritten audit's shards and manifest removed, temporary files of a killed write removed, the
    manifest written."""
    if overwrite:
        shutil.rmtree(out / SHARDS, ignore_errors=True)
        (out / MANIFEST).unlink(missing_ok=True)
    # atomic_write's temporary names: what a kill -9 in the middle of a shard's write leaves.
    for stale in (out / SHARDS).glob(".part-*.tmp"):
        stale.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"kind": KIND, "version": VERSION, "settings": settings, **counts}
    # The manifest first: a directory that holds anything of an audit holds its manifest.
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
    (out / SHARDS).mkdir(exist_ok=True)
