"""The small files that describe a finished cache, read so that damage is named, not met later.

``meta.json`` (what the cache holds and its statistics), ``bounds.npy`` (the range of every stored
value) and ``split_means.npy`` (the mean normalised vector of each split) are all computed from the
shards when the cache is finished (``nla.data.cache_stats``), so ``cache.repair`` can rebuild any of
them. Reading them here checks what the readers rely on (valid JSON, the fields they use, shapes,
counts that agree, positive statistics): a truncated or edited file is one line naming it, instead of
a JSONDecodeError in the pre-flight or a ValueError once the modules are built.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from nla.core.errors import NLAError
from nla.data.cache_format import BOUNDS, GROUPS, MEANS, META
from nla.data.storage import STORE_DTYPES

STATISTICS = ("mean_norm", "p75_norm", "variance", "meannorm_variance")
"""What ``meta.json`` records of every non-empty split; each is a positive number."""


class CacheDamage(NLAError):
    """A damaged file of a cache, which ``cache.repair`` rebuilds from the shards (or re-extracts)."""


class Unreadable(Exception):
    """What is wrong with a metadata file, in words (turned into a ``CacheDamage`` by the caller)."""


def metadata_error(directory: Path, name: str, problem: str, key: str) -> CacheDamage:
    return CacheDamage(f"{key}.directory: {Path(directory) / name} is damaged ({problem}); rebuild it from the shards "
                       f"with {key}.repair: true")


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; ``Unreadable`` when the file holds something else."""
    try:
        value = json.loads(Path(path).read_bytes())
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise Unreadable("not valid JSON") from None
    if not isinstance(value, dict):
        raise Unreadable("not a JSON object")
    return value


def _whole(record: dict, name: str, least: int, label: str = "") -> int:
    """``record[name]``, an integer of at least ``least``; ``label`` is its dotted place in the file."""
    value, label = record.get(name), label or name
    if name not in record:
        raise Unreadable(f"{label} is missing")
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise Unreadable(f"{label} is {value!r}, not an integer of at least {least}")
    return value


def _check_meta(meta: dict) -> None:
    """Raise ``Unreadable`` for the first field the readers rely on that is missing or impossible."""
    for name, least in (("num_shards", 1), ("d_model", 1), ("layer", 0)):
        _whole(meta, name, least)
    if meta.get("store_dtype") not in STORE_DTYPES:
        raise Unreadable(f"store_dtype is {meta.get('store_dtype')!r}, not one of {', '.join(STORE_DTYPES)}")
    vectors = _whole(meta.get("counts") if isinstance(meta.get("counts"), dict) else {}, "vectors", 1, "counts.vectors")
    stats = meta.get("stats")
    if not isinstance(stats, dict) or any(not isinstance(stats.get(group), dict) for group in GROUPS):
        raise Unreadable(f"stats does not hold the groups {', '.join(GROUPS)}")
    counts = {group: _whole(stats[group], "count", 0, f"stats.{group}.count") for group in GROUPS}
    for group in GROUPS:
        for name in STATISTICS if counts[group] else ():
            value = stats[group].get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise Unreadable(f"stats.{group}.{name} is {value!r}, not a positive number")
    if sum(counts[group] for group in GROUPS if group != "all") != counts["all"] or counts["all"] != vectors:
        raise Unreadable(f"its split counts add up to {sum(counts.values()) - counts['all']}, stats.all.count is "
                         f"{counts['all']} and counts.vectors is {vectors}")


def read_meta(directory: Path, key: str) -> dict:
    """``meta.json`` of a finished cache, checked; a ``CacheDamage`` line when it is damaged."""
    try:
        meta = read_json(Path(directory) / META)
        _check_meta(meta)
    except Unreadable as problem:
        raise metadata_error(directory, META, str(problem), key) from None
    return meta


def _read_array(path: Path, shape: tuple[int, int]) -> np.ndarray:
    if path.stat().st_size == 0:
        raise Unreadable("empty")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError):
        raise Unreadable("not a readable .npy array") from None
    if array.shape != shape:
        raise Unreadable(f"holds an array of shape {array.shape}, not {shape}")
    if not np.isfinite(array).all():
        raise Unreadable("holds non-finite values")
    return array


def read_bounds(directory: Path, d: int, key: str) -> np.ndarray | None:
    """``bounds.npy`` ([2, d]: per-dimension minimum and maximum), or None for caches finished before
    bounds were recorded."""
    path = Path(directory) / BOUNDS
    if not path.is_file():
        return None
    try:
        bounds = _read_array(path, (2, d))
        if (bounds[0] > bounds[1]).any():
            raise Unreadable("holds a minimum above its maximum")
    except Unreadable as problem:
        raise metadata_error(directory, BOUNDS, str(problem), key) from None
    return bounds


def read_means(directory: Path, d: int, key: str) -> np.ndarray:
    """``split_means.npy``: one mean normalised vector per group of ``GROUPS``."""
    try:
        if not (Path(directory) / MEANS).is_file():
            raise Unreadable("missing")
        return _read_array(Path(directory) / MEANS, (len(GROUPS), d))
    except Unreadable as problem:
        raise metadata_error(directory, MEANS, str(problem), key) from None


def damaged_metadata(directory: Path) -> list[str]:
    """Names of the statistics files of a finished cache that are damaged (``meta.json`` alone when it
    is, since the others are checked against it); [] when all read, or when the cache is unfinished."""
    if not (Path(directory) / META).is_file():
        return []
    try:
        d = read_meta(directory, "cache")["d_model"]
    except CacheDamage:
        return [META]
    damaged = []
    for name, read in ((BOUNDS, read_bounds), (MEANS, read_means)):
        try:
            read(directory, d, "cache")
        except CacheDamage:
            damaged.append(name)
    return damaged
