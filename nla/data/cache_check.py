"""Validation of a finished activation cache before training reads it, and repair of damaged shards.

Always, shard by shard (streamed, so memory stays flat): every file has its recorded size, and every
stored value lies within the per-dimension minimum and maximum recorded when the cache was finished
(``bounds.npy``). That one comparison catches NaN and infinite values and flipped bits that blow a
value up (four flipped bytes of a float32 can turn 0.07 into 256 or -60), at the cost of reading the
vectors once. Caches finished before bounds were recorded get the finiteness check alone.

Checksums (sha256 of every file, against the shard manifests) cost more and catch the rest, such as
corruption that stays inside the recorded range. They run when ``cache.checksums`` asks (``always``),
or under ``auto`` when the cache directory is not the one where it was written or last verified:
``location.json`` records that directory's host, device and inode, which a copy (``cp -r``,
``rsync``) changes and a rename on the same file system keeps.

A damaged shard is one line naming it and the two fixes: ``cache.repair: true`` (the writer discards
the shards ``shards_to_repair`` finds and re-extracts only those) or deleting its files and rerunning.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

import numpy as np

from nla.data.cache_format import BOUNDS, LOCATION, META, shard_files, shard_name, shard_problem
from nla.data.storage import atomic_write_json
from nla.core.errors import ConfigError, NLAError

CHECKSUM_MODES = ("auto", "always", "never")
CHUNK_BYTES = 64 << 20
"""Bytes of stored vectors compared at a time."""


def _identity(directory: Path) -> dict:
    status = os.stat(directory)
    return {"host": socket.gethostname(), "device": status.st_dev, "inode": status.st_ino}


def record_location(directory: Path) -> None:
    """Note where the cache now sits; a later open elsewhere (a copy) verifies checksums first."""
    atomic_write_json(Path(directory) / LOCATION, _identity(Path(directory)))


def was_moved(directory: Path) -> bool:
    """Whether the cache is not in the directory where it was written or last verified (also when no
    location was recorded: caches written before this check)."""
    path = Path(directory) / LOCATION
    if not path.is_file():
        return True
    recorded, here = json.loads(path.read_text()), _identity(Path(directory))
    return (recorded.get("device"), recorded.get("inode")) != (here["device"], here["inode"])


def _float32(stored: np.ndarray, store_dtype: str) -> np.ndarray:
    """Stored rows as float32 (bfloat16's raw bits shift exactly into float32's upper half)."""
    if store_dtype == "float32":
        return np.asarray(stored)
    return (np.asarray(stored).astype(np.uint32) << 16).view(np.float32)


def _bfloat16_keys(bits: np.ndarray) -> np.ndarray:
    """Integers ordered as the bfloat16 values whose raw bits are ``bits`` (sign-magnitude to two's
    complement); NaNs land beyond the infinities, so a range check catches them too."""
    signed = np.asarray(bits).view(np.int16)
    return signed ^ ((signed >> 15) & np.int16(0x7FFF))


def _range(store_dtype: str, bounds: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) to compare stored values with, in the domain the check runs in."""
    if bounds is None:
        largest = float(np.finfo(np.float32).max) if store_dtype == "float32" else 3.3895313892515355e38
        bounds = np.array([[-largest], [largest]], dtype=np.float32)
    if store_dtype == "float32":
        return bounds[0], bounds[1]
    keys = _bfloat16_keys(_bfloat16_bits(bounds))
    return keys[0], keys[1]


def _bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """Raw bfloat16 bits of float32 values that are bfloat16 numbers already (the recorded bounds)."""
    return (np.ascontiguousarray(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def value_problem(directory: Path, index: int, store_dtype: str, bounds: np.ndarray | None) -> str | None:
    """The first stored value of shard ``index`` that is not finite or lies outside ``bounds`` ([2, d]:
    per-dimension min and max), described in words; None when every value is fine. Per chunk, the
    column maxima and minima are compared with the bounds (bfloat16 rows as ordered integers, where
    NaN and infinities fall outside any finite range), and only a failing chunk is searched element by
    element."""
    path = shard_files(directory, index)["vectors"]
    stored = np.load(path, mmap_mode="r")
    rows = max(1, CHUNK_BYTES // max(1, stored.shape[1] * stored.itemsize)) if stored.ndim == 2 else len(stored)
    low, high = _range(store_dtype, bounds)
    for start in range(0, len(stored), rows):
        chunk = stored[start : start + rows]
        if not len(chunk):
            continue
        ordered = np.asarray(chunk) if store_dtype == "float32" else _bfloat16_keys(chunk)
        if (ordered.max(0) <= high).all() and (ordered.min(0) >= low).all():
            continue
        values = _float32(chunk, store_dtype)
        row, dim = (int(i) for i in np.argwhere(~((ordered >= low) & (ordered <= high)))[0])
        value = float(values[row, dim])
        if not np.isfinite(value) or bounds is None:
            return f"{path.name} row {start + row} holds a non-finite value ({value} in dimension {dim})"
        return (f"{path.name} row {start + row} holds {value:.6g} in dimension {dim}, outside the range "
                f"[{float(bounds[0, dim]):.6g}, {float(bounds[1, dim]):.6g}] recorded when the cache was written")
    return None


def _bounds(directory: Path) -> np.ndarray | None:
    path = Path(directory) / BOUNDS
    return np.load(path) if path.is_file() else None


def damaged_shards(directory: Path, meta: dict, checksums: bool) -> dict[int, str]:
    """Shard index -> what is wrong with it, for every shard that fails the checks."""
    bounds = _bounds(directory)
    found = {}
    for index in range(int(meta["num_shards"])):
        problem = (shard_problem(directory, index, checksums)
                   or value_problem(directory, index, meta["store_dtype"], bounds))
        if problem:
            found[index] = problem
    return found


def damage_error(directory: Path, index: int, problem: str, key: str) -> NLAError:
    """The one line for a damaged shard: which, what, and the two fixes."""
    return NLAError(f"{key}.directory: shard {index} of {directory} is damaged: {problem}; re-extract the damaged "
                    f"shards with {key}.repair: true, or delete {Path(directory) / 'shards' / shard_name(index)}.* "
                    "and rerun")


def check_mode(checksums: str, field: str = "cache.checksums") -> str:
    if checksums not in CHECKSUM_MODES:
        raise ConfigError(field, f"must be one of {', '.join(CHECKSUM_MODES)}, got {checksums!r}")
    return checksums


def validate_cache(directory: Path, meta: dict, checksums: str = "auto", key: str = "cache") -> None:
    """Raise a one-line ``NLAError`` naming the first damaged shard and its fixes; ``key`` is where the
    cache's settings live in the user's config (``cache`` for ``nla cache``, ``data.cache`` for ``nla
    fit``). After checksums verified a moved cache, its new location is recorded (when writable), so
    the next open is cheap again."""
    directory = Path(directory)
    verify = check_mode(checksums, f"{key}.checksums") == "always" or (checksums == "auto" and was_moved(directory))
    damaged = damaged_shards(directory, meta, verify)
    if damaged:
        index, problem = next(iter(damaged.items()))
        others = f" ({len(damaged) - 1} more shards are damaged too)" if len(damaged) > 1 else ""
        raise damage_error(directory, index, problem + others, key)
    if verify:
        # A read-only copy stays unrecorded and is verified again next time.
        with contextlib.suppress(OSError):
            record_location(directory)


def discard_shards(directory: Path, indices: list[int]) -> None:
    """Remove the statistics marker and the files of ``indices`` (manifest first), so the writer sees
    an unfinished cache missing exactly those shards."""
    (Path(directory) / META).unlink(missing_ok=True)
    for index in indices:
        files = shard_files(directory, index)
        for kind in ("manifest", "vectors", "index", "docs"):
            files[kind].unlink(missing_ok=True)


def shards_to_repair(directory: Path) -> list[int]:
    """Damaged shards of the cache in ``directory`` under every check, checksums included; [] when the
    cache is unfinished (the writer then resumes it anyway) or whole."""
    meta_path = Path(directory) / META
    if not meta_path.is_file():
        return []
    return sorted(damaged_shards(directory, json.loads(meta_path.read_text()), checksums=True))
