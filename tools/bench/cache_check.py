"""Cost of validating an activation cache when training opens it: the always-on checks (sizes, and every
stored value against the per-dimension range recorded at write time) against sha256 checksums.

    python tools/bench/cache_check.py [--megabytes 512] [--d 3584] [--store_dtype float32]

Writes a synthetic cache of about ``--megabytes`` of vectors (shards of 64 MiB, random values like
residuals) in a temporary directory, then times ``nla.data.cache_check.damaged_shards`` with and
without checksums, each twice (the second pass reads from the page cache, as a restart does). The
figures are read rates over the vectors' bytes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nla.data.cache_check import damaged_shards
from nla.data.cache_format import BOUNDS, INDEX_DTYPE, write_shard
from nla.data.storage import atomic_save_npy, encode_vectors


def build(directory: Path, megabytes: int, d: int, store_dtype: str) -> dict:
    width = 4 if store_dtype == "float32" else 2
    rows_per_shard = max(1, (64 << 20) // (d * width))
    shards = max(1, (megabytes << 20) // (rows_per_shard * d * width))
    generator = torch.Generator().manual_seed(0)
    low, high = None, None
    for index in range(shards):
        vectors = torch.randn(rows_per_shard, d, generator=generator) * 0.1
        stored = encode_vectors(vectors, store_dtype)
        write_shard(directory, index, stored, np.zeros(rows_per_shard, dtype=INDEX_DTYPE), [])
        low = vectors.amin(0) if low is None else torch.minimum(low, vectors.amin(0))
        high = vectors.amax(0) if high is None else torch.maximum(high, vectors.amax(0))
    if store_dtype == "bfloat16":
        low, high = low.bfloat16().float(), high.bfloat16().float()
    atomic_save_npy(directory / BOUNDS, torch.stack([low, high]).numpy())
    return {"num_shards": shards, "store_dtype": store_dtype, "bytes": shards * rows_per_shard * d * width}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=512)
    parser.add_argument("--d", type=int, default=3584)
    parser.add_argument("--store_dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        meta = build(Path(scratch), args.megabytes, args.d, args.store_dtype)
        size = meta["bytes"] / 2**20
        print(f"| check ({meta['num_shards']} shards, {size:.0f} MiB of {args.store_dtype} vectors, d={args.d}) "
              "| pass | seconds | MiB/s |")
        print("|---|---|---|---|")
        for label, checksums in (("sizes + value range (always)", False), ("+ sha256 checksums", True)):
            for attempt in (1, 2):
                start = time.perf_counter()
                bounds = np.load(Path(scratch) / BOUNDS)
                assert not damaged_shards(Path(scratch), meta["num_shards"], meta["store_dtype"], bounds, checksums)
                seconds = time.perf_counter() - start
                print(f"| {label} | {attempt} | {seconds:.2f} | {size / seconds:,.0f} |")


if __name__ == "__main__":
    main()
