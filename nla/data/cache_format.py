"""File names and record layout of the activation cache (documented in docs/cache-format.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nla.data.splits import SPLITS
from nla.data.storage import atomic_save_npy, atomic_write_bytes, atomic_write_json, file_sha256

META = "meta.json"
PLAN = "plan.json"
MEANS = "split_means.npy"
BOUNDS = "bounds.npy"
LOCATION = "location.json"
SHARDS = "shards"

GROUPS = (*SPLITS, "all")
"""Rows of ``split_means.npy`` and groups of ``meta.json``'s statistics: one per split, then all vectors."""

INDEX_DTYPE = np.dtype(
    [("doc", "<i4"), ("position", "<i4"), ("token_id", "<i4"), ("char_end", "<i8"), ("split", "u1")]
)
"""One row per vector: the document's row in the shard's docs file, the token index, the token id, the
end of the token in the document text (its context is ``text[:char_end]``), and the split's index."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def shard_files(directory: Path, index: int) -> dict[str, Path]:
    stem = Path(directory) / SHARDS / shard_name(index)
    return {
        "vectors": stem.with_name(stem.name + ".vectors.npy"),
        "index": stem.with_name(stem.name + ".index.npy"),
        "docs": stem.with_name(stem.name + ".docs.jsonl"),
        "manifest": stem.with_name(stem.name + ".json"),
    }


def write_shard(directory: Path, index: int, vectors: np.ndarray, records: np.ndarray, docs: list[dict]) -> None:
    """Data files first, manifest last: a shard counts as written only once its manifest exists."""
    files = shard_files(directory, index)
    files["vectors"].parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(files["vectors"], vectors)
    atomic_save_npy(files["index"], records)
    atomic_write_bytes(files["docs"], "".join(json.dumps(doc, sort_keys=True) + "\n" for doc in docs).encode())
    manifest = {
        "shard": index,
        "vectors": int(len(vectors)),
        "documents": len(docs),
        "files": {
            kind: {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
            for kind, path in files.items()
            if kind != "manifest"
        },
    }
    atomic_write_json(files["manifest"], manifest)


NOT_WRITTEN = "not written"
"""The problem of a shard without a manifest: the writer has not finished it."""


def manifest_problem(manifest: object, path: Path) -> str | None:
    """Why a parsed manifest cannot be trusted, or None: it must record the size of every data file."""
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(listed, dict) or set(listed) != {"vectors", "index", "docs"} or not all(
            isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)
            for entry in listed.values()):
        return f"{path.name} does not record the sizes and checksums of the shard's files"
    return None


def read_manifest(directory: Path, index: int) -> dict | str:
    """The manifest of shard ``index``, or why there is none to trust (``NOT_WRITTEN`` when absent)."""
    path = shard_files(directory, index)["manifest"]
    if not path.is_file():
        return NOT_WRITTEN
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        return f"{path.name} is not valid JSON"
    return manifest_problem(manifest, path) or manifest


def shard_problem(directory: Path, index: int, verify_checksums: bool = False) -> str | None:
    """Why shard ``index`` is not usable (not written, manifest damaged, a file missing, truncated or
    corrupt), or None when it is."""
    manifest = read_manifest(directory, index)
    if isinstance(manifest, str):
        return manifest
    files = shard_files(directory, index)
    for kind, expected in manifest["files"].items():
        path = files[kind]
        if not path.is_file():
            return f"{path.name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{path.name} is truncated ({path.stat().st_size} of {expected['bytes']} bytes)"
        if verify_checksums and file_sha256(path) != expected["sha256"]:
            return f"{path.name} is corrupt (checksum mismatch)"
    return None
