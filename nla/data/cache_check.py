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
``check_metadata`` runs the checks that read only small files (``nla.data.cache_meta``, and each
shard's manifest and sizes), so the pre-flight finds that damage before anything else is read.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import numpy as np

from nla.data.cache_format import LOCATION, META, NOT_WRITTEN, shard_files, shard_name, shard_problem
from nla.data.cache_meta import CacheDamage, Unreadable, read_bounds, read_json, read_means, read_meta
from nla.data.permissions import first_unreadable, first_unwritable, unreadable_message
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
    try:
        recorded = read_json(path)
    except Unreadable:  # a damaged record tells nothing: verify, and record it again
        return True
    here = _identity(Path(directory))
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
    try:
        stored = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError):
        return f"{path.name} is not a readable .npy array"
    if stored.ndim != 2:
        return f"{path.name} holds an array of shape {stored.shape}, not rows of vectors"
    rows = max(1, CHUNK_BYTES // max(1, stored.shape[1] * stored.itemsize))
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


def damaged_shards(directory: Path, num_shards: int, store_dtype: str, bounds: np.ndarray | None,
                   checksums: bool) -> dict[int, str]:
    """Shard index -> what is wrong with it, for every shard that fails the checks."""
    found = {}
    for index in range(num_shards):
        problem = shard_problem(directory, index, checksums) or value_problem(directory, index, store_dtype, bounds)
        if problem:
            found[index] = problem
    return found


def damage_error(directory: Path, index: int, problem: str, key: str) -> CacheDamage:
    """The one line for a damaged shard: which, what, and the two fixes."""
    return CacheDamage(f"{key}.directory: shard {index} of {directory} is damaged: {problem}; re-extract the "
                       f"damaged shards with {key}.repair: true, or delete "
                       f"{Path(directory) / 'shards' / shard_name(index)}.* and rerun")


def check_mode(checksums: str, field: str = "cache.checksums") -> str:
    if checksums not in CHECKSUM_MODES:
        raise ConfigError(field, f"must be one of {', '.join(CHECKSUM_MODES)}, got {checksums!r}")
    return checksums


def check_readable(directory: Path, key: str) -> None:
    """One line when this user cannot list a folder of the cache or read one of its files."""
    unreadable = first_unreadable(directory) if Path(directory).exists() else None
    if unreadable is not None:
        raise NLAError(f"{key}.directory: {unreadable_message(unreadable)}")


def check_writable(directory: Path, key: str) -> None:
    """One line when this user cannot create the cache in ``directory`` or write into its folders."""
    unwritable = first_unwritable(directory)
    if unwritable is not None:
        raise NLAError(f"{key}.directory: cannot write the cache into {directory}: {unwritable} is not writable by "
                       f"this user (permission denied); fix its permissions (chmod u+wx {unwritable}) or point "
                       f"{key}.directory elsewhere")


def check_metadata(directory: Path, key: str = "cache") -> dict:
    """``meta.json`` of the finished cache in ``directory`` after the checks that read only small files:
    permissions, the statistics files (``nla.data.cache_meta``), then every shard's manifest and file
    sizes. Raises the one line of the first problem found."""
    check_readable(directory, key)
    meta = read_meta(directory, key)
    read_bounds(directory, meta["d_model"], key)
    read_means(directory, meta["d_model"], key)
    for index in range(meta["num_shards"]):
        problem = shard_problem(directory, index)
        if problem:
            raise damage_error(directory, index, problem, key)
    return meta


def validate_cache(directory: Path, meta: dict, checksums: str = "auto", key: str = "cache") -> None:
    """Raise a one-line ``NLAError`` naming the first damaged shard and its fixes; ``key`` is where the
    cache's settings live in the user's config (``cache`` for ``nla cache``, ``data.cache`` for ``nla
    fit``). After checksums verified a moved cache, its new location is recorded (when writable), so
    the next open is cheap again."""
    directory = Path(directory)
    verify = check_mode(checksums, f"{key}.checksums") == "always" or (checksums == "auto" and was_moved(directory))
    bounds = read_bounds(directory, meta["d_model"], key)
    damaged = damaged_shards(directory, meta["num_shards"], meta["store_dtype"], bounds, verify)
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


def shards_to_repair(directory: Path, num_shards: int, d: int, store_dtype: str) -> list[int]:
    """Written shards of the cache in ``directory`` that fail any check, checksums included (shards not
    written yet are the writer's to do anyway). The plan gives their number and layout, so this works
    whatever state ``meta.json`` is in; damaged bounds leave the finiteness check to the values, and
    the checksums to the rest."""
    try:
        bounds = read_bounds(directory, d, "cache")
    except CacheDamage:
        bounds = None
    damaged = damaged_shards(directory, num_shards, store_dtype, bounds, checksums=True)
    return sorted(index for index, problem in damaged.items() if problem != NOT_WRITTEN)
