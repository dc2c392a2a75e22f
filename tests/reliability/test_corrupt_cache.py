"""Damaged activation caches never reach training: flipped bytes, NaN rows, truncated files and copies
that no longer match their checksums are one line naming the shard and the fix (exit 2), found before
any model loads; ``cache.repair`` re-extracts exactly the damaged shards. A full disk while caching is
one line too. (A cache killed mid-write resumes byte-identical: tests/data/test_cache.py.)"""

from __future__ import annotations

import errno
import json
import os
import stat

import numpy as np
import pytest
import yaml

from nla.data import storage
from nla.data.cache_format import shard_files
from tests.fixtures.commands import copy_cache, run_main, sft_argv

BOUNDS, LOCATION, META = "bounds.npy", "location.json", "meta.json"

SHARD, ROW, DIM = 1, 2, 5


def flip_bytes(cache, shard: int = SHARD, row: int = ROW, dim: int = DIM) -> float:
    """XOR the four bytes of one stored float32 with 0xFF (0.07 becomes about -60); returns the new value."""
    path = shard_files(cache, shard)["vectors"]
    offset = np.load(path, mmap_mode="r").offset + (row * 32 + dim) * 4
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = bytes(b ^ 0xFF for b in data[offset : offset + 4])
    path.write_bytes(bytes(data))
    return float(np.frombuffer(bytes(data[offset : offset + 4]), dtype="<f4")[0])


def damaged(cache, problem: str, key: str = "data.source.cache") -> str:
    return (f"nla: error: {key}.directory: shard {SHARD} of {cache} is damaged: {problem}; re-extract the damaged "
            f"shards with {key}.repair: true, or delete {cache / 'shards' / f'shard-{SHARD:05d}'}.* and rerun")


def test_flipped_bytes_stop_fit_before_training(tiny_sft, tmp_path, capsys):
    root, model_dir, clean = tiny_sft
    cache = copy_cache(clean, tmp_path / "cache")
    value = flip_bytes(cache)
    low, high = np.load(cache / BOUNDS)[:, DIM]
    assert abs(value) > 10 * max(abs(low), abs(high)), "the flip must produce an absurd but finite value"
    # checksums off: the range recorded at write time catches it alone, at the cost of one read.
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", cache, tmp_path / "run",
                                          "--data.init_args.source.cache.checksums", "never"))
    assert code == 2
    assert err == damaged(cache, f"shard-{SHARD:05d}.vectors.npy row {ROW} holds {value:.6g} in dimension {DIM}, "
                                 f"outside the range [{low:.6g}, {high:.6g}] recorded when the cache was written")
    assert not (tmp_path / "run" / "export").exists() and not list((tmp_path / "run").rglob("*.ckpt"))


def test_a_nan_row_is_refused(tiny_sft, tmp_path, capsys):
    root, model_dir, clean = tiny_sft
    cache = copy_cache(clean, tmp_path / "cache")
    path = shard_files(cache, SHARD)["vectors"]
    vectors = np.load(path)
    vectors[ROW, :] = np.nan
    # Same size, new bytes: only the values (or checksums) can tell.
    np.save(path, vectors)
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", cache, tmp_path / "run",
                                          "--data.init_args.source.cache.checksums", "never"))
    assert code == 2
    assert err == damaged(cache, f"shard-{SHARD:05d}.vectors.npy row {ROW} holds a non-finite value (nan in dimension 0)")


def test_a_truncated_shard_is_refused(tiny_sft, tmp_path, capsys):
    root, model_dir, clean = tiny_sft
    cache = copy_cache(clean, tmp_path / "cache")
    path = shard_files(cache, SHARD)["vectors"]
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-100])
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", cache, tmp_path / "run"))
    assert code == 2
    assert err == damaged(cache, f"shard-{SHARD:05d}.vectors.npy is truncated ({size - 100} of {size} bytes)")


def test_a_copied_cache_is_checksummed(tiny_sft, tmp_path, capsys):
    root, model_dir, clean = tiny_sft
    cache = copy_cache(clean, tmp_path / "cache")
    path = shard_files(cache, SHARD)["vectors"]
    vectors = np.load(path)
    # A value moved to its dimension's recorded minimum: inside the range, so only a checksum sees it.
    vectors[ROW, DIM] = np.load(cache / BOUNDS)[0, DIM]
    np.save(path, vectors)
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", cache, tmp_path / "run"))
    assert code == 2
    assert err == damaged(cache, f"shard-{SHARD:05d}.vectors.npy is corrupt (checksum mismatch)")


def test_checksums_follow_the_setting_and_the_location(tiny_sft, tmp_path):
    from nla.data.cache_check import validate_cache

    _, _, clean = tiny_sft
    cache = copy_cache(clean, tmp_path / "cache")
    meta = json.loads((cache / META).read_text())
    validate_cache(cache, meta, "auto")  # a copy: verified once, then its new location is recorded
    path = shard_files(cache, SHARD)["vectors"]
    vectors = np.load(path)
    vectors[ROW, DIM] = np.load(cache / BOUNDS)[0, DIM]
    np.save(path, vectors)
    validate_cache(cache, meta, "auto")  # in place, within range: the cheap checks cannot see it
    with pytest.raises(Exception, match="checksum mismatch"):
        validate_cache(cache, meta, "always")


def cache_config(tmp_path, model_dir, corpus) -> str:
    config = {"source": {"target": {"name_or_path": str(model_dir)},
                         "corpus": {"path": str(corpus), "min_position": 8, "max_length": 64},
                         "cache": {"directory": str(tmp_path / "cache"), "layer": 1, "positions_per_document": 3,
                                   "shard_documents": 8}}}
    path = tmp_path / "cache.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def snapshot(cache) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(cache)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(cache.rglob("*"))
            if p.is_file() and p.name != LOCATION}


def test_repair_re_extracts_only_the_damaged_shard(tiny_sft, tmp_path, capsys):
    root, model_dir, _ = tiny_sft
    config = cache_config(tmp_path, model_dir, root / "docs.jsonl")
    assert run_main(capsys, ["cache", "--config", config])[0] is None
    cache = tmp_path / "cache"
    before = snapshot(cache)
    flip_bytes(cache)
    # Rerunning `nla cache` on a finished cache checks it, and never recomputes statistics over damage.
    code, err = run_main(capsys, ["cache", "--config", config])
    assert code == 2 and err.startswith(f"nla: error: source.cache.directory: shard {SHARD} of {cache} is damaged: ")
    assert err.endswith("re-extract the damaged shards with source.cache.repair: true, or delete "
                        f"{cache / 'shards' / f'shard-{SHARD:05d}'}.* and rerun")
    assert run_main(capsys, ["cache", "--config", config, "--source.cache.repair", "true"])[0] is None
    after = snapshot(cache)
    assert {name: data for name, (data, _) in after.items()} == {name: data for name, (data, _) in before.items()}
    rewritten = {name for name in before if after[name][1] != before[name][1]}
    assert {name for name in rewritten if name.startswith("shards/")} == {
        f"shards/shard-{SHARD:05d}.{kind}" for kind in ("vectors.npy", "index.npy", "docs.jsonl", "json")}


def test_deleting_a_damaged_shard_and_rerunning_re_extracts_it(tiny_sft, tmp_path, capsys):
    root, model_dir, _ = tiny_sft
    config = cache_config(tmp_path, model_dir, root / "docs.jsonl")
    assert run_main(capsys, ["cache", "--config", config])[0] is None
    cache = tmp_path / "cache"
    before = snapshot(cache)
    flip_bytes(cache)
    # The second fix the damage line gives: delete the shard's files, rerun.
    for path in (cache / "shards").glob(f"shard-{SHARD:05d}.*"):
        path.unlink()
    assert run_main(capsys, ["cache", "--config", config])[0] is None
    assert {name: data for name, (data, _) in snapshot(cache).items()} == {name: data for name, (data, _) in before.items()}


def test_a_full_disk_while_caching_is_one_line(tiny_sft, tmp_path, capsys, monkeypatch):
    root, model_dir, _ = tiny_sft
    config = cache_config(tmp_path, model_dir, root / "docs.jsonl")
    real_save, calls = np.save, []

    def save_until_full(stream, array, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(stream, array, **kwargs)

    monkeypatch.setattr(storage.np, "save", save_until_full)
    code, err = run_main(capsys, ["cache", "--config", config])
    shards = tmp_path / "cache" / "shards"
    assert code == 2
    assert err == f"nla: error: disk full while writing {shards / 'shard-00001.vectors.npy'}; free space on {shards} and rerun"
    assert not [p for p in shards.iterdir() if p.name.startswith("shard-00001") or p.suffix == ".tmp"]


def test_a_forward_producing_nan_writes_no_shard(tiny_sft, tmp_path, capsys, monkeypatch):
    from nla.data import cache_writer

    root, model_dir, _ = tiny_sft
    config = cache_config(tmp_path, model_dir, root / "docs.jsonl")
    extract = cache_writer.extract_shard
    monkeypatch.setattr(cache_writer, "extract_shard", lambda *args: extract(*args) * float("nan"))
    code, err = run_main(capsys, ["cache", "--config", config])
    assert (code, err) == (2, "nla: error: source.target.dtype: the forward produced non-finite activations at layer 1 in "
                              "shard 0; nothing of that shard was written; use float32 (or check the model's weights)")
    shards = tmp_path / "cache" / "shards"
    assert not shards.exists() or not list(shards.iterdir())


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_cache_files_honour_the_umask(tiny_sft, tmp_path, capsys, umask):
    root, model_dir, _ = tiny_sft
    config = cache_config(tmp_path, model_dir, root / "docs.jsonl")
    previous = os.umask(umask)
    try:
        assert run_main(capsys, ["cache", "--config", config])[0] is None
    finally:
        os.umask(previous)
    for path in [tmp_path / "cache", *(tmp_path / "cache").rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
