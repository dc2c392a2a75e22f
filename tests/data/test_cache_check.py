"""The always-on value check of ``nla.data.cache_check`` on hand-made shards, float32 and bfloat16:
every NaN, infinity and out-of-range value is found and named, nothing else is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nla.data.cache_check import value_problem
from nla.data.cache_format import INDEX_DTYPE, write_shard
from nla.data.storage import decode_vectors, encode_vectors


def shard(tmp_path, store_dtype: str, change=None) -> tuple[np.ndarray, np.ndarray]:
    """A shard of 6 x 4 vectors (one changed by ``change(decoded)``) and the bounds of the clean ones."""
    vectors = torch.arange(24, dtype=torch.float32).reshape(6, 4) / 10 - 1.0
    stored = encode_vectors(vectors, store_dtype)
    clean = decode_vectors(stored, store_dtype)
    bounds = torch.stack([clean.amin(0), clean.amax(0)]).numpy()
    if change is not None:
        changed = clean.clone()
        change(changed)
        stored = encode_vectors(changed, store_dtype)
    write_shard(tmp_path, 0, stored, np.zeros(6, dtype=INDEX_DTYPE), [])
    return stored, bounds


@pytest.mark.parametrize("store_dtype", ["float32", "bfloat16"])
def test_clean_shards_pass(tmp_path, store_dtype):
    _, bounds = shard(tmp_path, store_dtype)
    assert value_problem(tmp_path, 0, store_dtype, bounds) is None
    assert value_problem(tmp_path, 0, store_dtype, None) is None


@pytest.mark.parametrize("store_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("value, words", [
    (float("nan"), "holds a non-finite value (nan in dimension 2)"),
    (-float("inf"), "holds a non-finite value (-inf in dimension 2)"),
    (float("inf"), "holds a non-finite value (inf in dimension 2)"),
])
def test_non_finite_values_are_found_with_or_without_bounds(tmp_path, store_dtype, value, words):
    _, bounds = shard(tmp_path, store_dtype, lambda v: v.__setitem__((4, 2), value))
    for recorded in (bounds, None):
        assert value_problem(tmp_path, 0, store_dtype, recorded) == f"shard-00000.vectors.npy row 4 {words}"


@pytest.mark.parametrize("store_dtype", ["float32", "bfloat16"])
def test_values_outside_the_recorded_range_are_found(tmp_path, store_dtype):
    _, bounds = shard(tmp_path, store_dtype, lambda v: v.__setitem__((3, 1), 256.0))
    low, high = bounds[:, 1]
    assert value_problem(tmp_path, 0, store_dtype, bounds) == (
        f"shard-00000.vectors.npy row 3 holds 256 in dimension 1, outside the range [{low:.6g}, {high:.6g}] "
        "recorded when the cache was written")
    # Finite and without recorded bounds: nothing to compare with (caches written before bounds existed).
    assert value_problem(tmp_path, 0, store_dtype, None) is None


@pytest.mark.parametrize("store_dtype", ["float32", "bfloat16"])
def test_values_moved_inside_the_range_pass(tmp_path, store_dtype):
    # Only checksums can see this one (tests/reliability/test_corrupt_cache.py).
    _, bounds = shard(tmp_path, store_dtype, lambda v: v.__setitem__((3, 1), v[0, 1]))
    assert value_problem(tmp_path, 0, store_dtype, bounds) is None
