"""The fingerprint of a base model: what binds a cache and both sides of a pair to the weights they
came from.

A name or path says where a model was, not what it is: weights replaced at the same path, or an AV
and an AR trained on different models, would otherwise combine without a word. The fingerprint of a
local model hashes its ``config.json`` and the weight files ``from_pretrained`` reads (safetensors,
bin, or the one GGUF file named); each file is hashed once and remembered by path, size and
modification time (``cache_root()/fingerprints.json``), so a 15 GB model is read once, not per
command. A hub id is hashed in its snapshot of the local HF cache, so it matches a local copy of the
same files. ``None`` when nothing identifies the model here (a hub id whose weights are not on this
machine): comparisons then fall back to names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from nla.core.errors import ConfigError
from nla.core.files import atomic_write_bytes
from nla.models.loading import ModelArgs, cache_root, is_local_model, local_source

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
INDEX_FILE = "fingerprints.json"
_CHUNK = 1 << 24


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _remembered_sha256(paths: list[Path]) -> list[str]:
    """The sha256 of each file, read from the index while path, size and mtime are unchanged."""
    index_path = cache_root() / INDEX_FILE
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    index = index if isinstance(index, dict) else {}
    digests, changed = [], False
    for path in paths:
        stat, key = path.stat(), str(path.resolve())
        entry = index.get(key)
        if not (isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns):
            entry, changed = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _sha256(path)}, True
            index[key] = entry
        digests.append(entry["sha256"])
    if changed:
        # Entries of deleted files (test models, moved checkpoints) would otherwise pile up.
        index = {key: value for key, value in index.items() if os.path.exists(key)}
        # A read-only home only costs hashing again next time.
        with contextlib.suppress(OSError):
            index_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(index_path, json.dumps(index, indent=0, sort_keys=True).encode())
    return digests


def _digest(parts: list) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _local_fingerprint(directory: Path, gguf_file: str | None) -> str:
    if gguf_file is not None:
        files = [directory / gguf_file]
    else:
        files = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    config = directory / "config.json"
    files = ([config] if config.is_file() else []) + files
    return _digest([[p.name, digest] for p, digest in zip(files, _remembered_sha256(files))])


def _hub_fingerprint(name: str, revision: str | None) -> str | None:
    """A hub model's snapshot in the local HF cache, hashed as a local copy of it would be; None
    before its weights are downloaded."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(name, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        return None
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent
    if not any(p.suffix in WEIGHT_SUFFIXES for p in snapshot.iterdir()):
        return None
    return _local_fingerprint(snapshot, None)


def model_fingerprint(model: ModelArgs) -> str | None:
    """``sha256:<16 hex>`` identifying the weights ``model`` names; None when nothing here identifies them."""
    directory, gguf_file = local_source(model)
    if directory is None:
        return _hub_fingerprint(model.name_or_path, model.revision)
    return _local_fingerprint(directory, gguf_file)


class BaseModelMismatch(ConfigError):
    """Two things to be combined come from different base models."""


def check_same_base(field: str, first: tuple[str, str | None, str | None], second: tuple[str, str | None, str | None],
                    fix: str) -> None:
    """Refuse to combine two things made from different base models. Each side is (what it is, base
    model name, fingerprint); fingerprints decide when both are known, else names of hub models."""
    (what_a, name_a, print_a), (what_b, name_b, print_b) = first, second
    if print_a and print_b:
        differ = print_a != print_b
    else:
        # Without fingerprints only hub ids can be compared: one local path may be written many ways.
        differ = bool(name_a and name_b and not is_local_model(name_a) and not is_local_model(name_b) and name_a != name_b)
    if differ:
        raise BaseModelMismatch(field, f"{what_a} comes from base model {name_a!r} ({print_a or 'no fingerprint'}) "
                                f"but {what_b} from {name_b!r} ({print_b or 'no fingerprint'}); {fix}")

