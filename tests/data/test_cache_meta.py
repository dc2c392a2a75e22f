"""``nla.data.cache_meta`` on hand-written metadata: every field the readers rely on is checked, and
each damage is named in words; sound metadata reads back unchanged."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from nla.data.cache_format import GROUPS
from nla.data.cache_meta import CacheDamage, damaged_metadata, read_bounds, read_means, read_meta

D = 4
STATS = {"count": 5, "mean_norm": 1.5, "p75_norm": 1.8, "variance": 0.9, "meannorm_variance": 0.7}


def write(tmp_path, meta: dict | None = None, bounds=None, means=None):
    meta = meta or {"num_shards": 1, "d_model": D, "layer": 1, "store_dtype": "float32", "counts": {"vectors": 15},
                    "stats": {"av_sft": dict(STATS), "ar_sft": dict(STATS), "rl": {"count": 0},
                              "heldout": dict(STATS), "all": {**STATS, "count": 15}}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    np.save(tmp_path / "bounds.npy", np.array([[-1.0] * D, [1.0] * D]) if bounds is None else bounds)
    np.save(tmp_path / "split_means.npy", np.zeros((len(GROUPS), D)) if means is None else means)
    return meta


def test_sound_metadata_reads_back(tmp_path):
    meta = write(tmp_path)
    assert read_meta(tmp_path, "cache") == meta
    assert read_bounds(tmp_path, D, "cache").shape == (2, D) and read_means(tmp_path, D, "cache").shape == (5, D)
    assert damaged_metadata(tmp_path) == []


@pytest.mark.parametrize("edit, problem", [
    (lambda meta: meta.pop("num_shards"), "num_shards is missing"),
    (lambda meta: meta.update(d_model="32"), "d_model is '32', not an integer of at least 1"),
    (lambda meta: meta.update(store_dtype="float16"), "store_dtype is 'float16', not one of float32, bfloat16"),
    (lambda meta: meta["stats"].pop("rl"), "stats does not hold the groups av_sft, ar_sft, rl, heldout, all"),
    (lambda meta: meta["stats"]["all"].update(p75_norm=float("nan")), "stats.all.p75_norm is nan, not a positive number"),
    (lambda meta: meta["stats"]["heldout"].update(count=4),
     "its split counts add up to 14, stats.all.count is 15 and counts.vectors is 15"),
])
def test_each_impossible_field_is_named(tmp_path, edit, problem):
    meta = write(tmp_path)
    edit(meta)
    write(tmp_path, meta)
    with pytest.raises(CacheDamage) as damage:
        read_meta(tmp_path, "data.source.cache")
    assert str(damage.value) == (f"data.source.cache.directory: {tmp_path / 'meta.json'} is damaged ({problem}); "
                                 "rebuild it from the shards with data.source.cache.repair: true")
    assert damaged_metadata(tmp_path) == ["meta.json"]


@pytest.mark.parametrize("bounds, problem", [
    (np.zeros((3, D)), f"holds an array of shape (3, {D}), not (2, {D})"),
    (np.array([[1.0] * D, [-1.0] * D]), "holds a minimum above its maximum"),
    (np.array([[-1.0] * D, [np.inf] * D]), "holds non-finite values"),
])
def test_bounds_that_cannot_be_a_range_are_named(tmp_path, bounds, problem):
    write(tmp_path, bounds=bounds)
    with pytest.raises(CacheDamage, match=re.escape(f"bounds.npy is damaged ({problem})")):
        read_bounds(tmp_path, D, "cache")
    assert damaged_metadata(tmp_path) == ["bounds.npy"]


def test_a_missing_means_file_is_named(tmp_path):
    write(tmp_path)
    (tmp_path / "split_means.npy").unlink()
    with pytest.raises(CacheDamage, match=r"split_means.npy is damaged \(missing\)"):
        read_means(tmp_path, D, "cache")
    assert damaged_metadata(tmp_path) == ["split_means.npy"]
