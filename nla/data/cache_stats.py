"""Statistics computed once when a cache is complete, and the ``meta.json`` that marks it complete."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from nla.core import maths
from nla.data.cache_check import record_location
from nla.data.cache_format import BOUNDS, GROUPS, INDEX_DTYPE, MEANS, META, shard_files, shard_problem
from nla.data.cache_plan import FORMAT_VERSION, CacheArgs, CachePlan
from nla.data.corpus import CorpusArgs
from nla.data.splits import SPLITS, SplitArgs
from nla.data.storage import atomic_save_npy, atomic_write_json, decode_vectors
from nla.core.errors import NLAError
from nla.models.fingerprint import model_fingerprint
from nla.models import adapters
from nla.models.loading import ModelArgs


def wait_for_shards(directory: Path, num_shards: int, timeout_s: float = 24 * 3600) -> None:
    """Rank 0 waits for the other ranks' shards; it reads them but rewrites none."""
    deadline = time.monotonic() + timeout_s
    while missing := [i for i in range(num_shards) if shard_problem(directory, i)]:
        if time.monotonic() > deadline:
            raise NLAError(f"cache: shards {missing[:5]} never appeared in {directory}; did another rank fail?")
        time.sleep(1.0)


def split_statistics(directory: Path, num_shards: int, store_dtype: str) -> tuple[dict, np.ndarray, np.ndarray]:
    """Per split and overall: count, mean and 75th-percentile norm (for ``injection_scale: auto``), the
    FVE baseline variance (rawvar; meannorm for reporting) and the mean of the normalised vectors; and
    the per-dimension minimum and maximum of every vector (``bounds.npy``, for ``nla.data.cache_check``)."""
    norms: dict[str, list[np.ndarray]] = {g: [] for g in GROUPS}
    sums = {g: None for g in GROUPS}
    low = high = None
    for index in range(num_shards):
        files = shard_files(directory, index)
        vectors = decode_vectors(np.load(files["vectors"], mmap_mode="r"), store_dtype)
        if len(vectors):
            low = vectors.amin(0) if low is None else torch.minimum(low, vectors.amin(0))
            high = vectors.amax(0) if high is None else torch.maximum(high, vectors.amax(0))
        split_ids = np.load(files["index"])["split"]
        for group in GROUPS:
            rows = torch.ones(len(vectors), dtype=torch.bool) if group == "all" else torch.from_numpy(
                split_ids == SPLITS.index(group)
            )
            if not bool(rows.any()):
                continue
            chosen = vectors[rows]
            norms[group].append(torch.linalg.vector_norm(chosen.double(), dim=-1).numpy())
            shard_sums = maths.target_sums(chosen)
            sums[group] = shard_sums if sums[group] is None else tuple(a + b for a, b in zip(sums[group], shard_sums))
    d = vectors.shape[-1]
    stats, means = {}, np.zeros((len(GROUPS), d), dtype=np.float64)
    for row, group in enumerate(GROUPS):
        if sums[group] is None:
            stats[group] = {"count": 0}
            continue
        sum_normalized, sum_sq, count = sums[group]
        group_norms = np.concatenate(norms[group])
        means[row] = (sum_normalized / count).numpy()
        stats[group] = {
            "count": int(count),
            "mean_norm": float(group_norms.mean()),
            "p75_norm": float(np.percentile(group_norms, 75)),
            "variance": float(maths.rawvar_from_sums(sum_normalized, sum_sq, count)),
            "meannorm_variance": float(maths.meannorm_from_sums(sum_normalized, sum_sq, count)),
        }
    return stats, means, torch.stack([low, high]).numpy()


def finalize(
    directory: Path,
    plan: CachePlan,
    model: ModelArgs,
    corpus: CorpusArgs,
    cache: CacheArgs,
    splits: SplitArgs,
    config,
    layer: int,
    console: Console,
) -> None:
    wait_for_shards(directory, plan.num_shards)
    stats, means, bounds = split_statistics(directory, plan.num_shards, cache.store_dtype)
    atomic_save_npy(directory / MEANS, means)
    atomic_save_npy(directory / BOUNDS, bounds)
    record_location(directory)
    meta = {
        "format": FORMAT_VERSION,
        "fingerprint": plan.fingerprint,
        "model": {
            "name_or_path": model.name_or_path,
            "gguf_file": model.gguf_file,
            "revision": model.revision,
            "quantization": model.quantization,
            "fingerprint": model_fingerprint(model),
            "model_type": config.model_type,
            "num_layers": adapters.num_layers(config),
        },
        "layer": layer,
        "d_model": adapters.hidden_size(config),
        "store_dtype": cache.store_dtype,
        "index_dtype": INDEX_DTYPE.descr,
        "corpus": {**asdict(corpus), **asdict(plan.report)},
        "positions": {"per_document": cache.positions_per_document, "seed": cache.seed},
        "splits": asdict(splits),
        "counts": {"documents": len(plan.documents), "tokens": plan.tokens, "vectors": plan.vectors},
        "num_shards": plan.num_shards,
        "stats": stats,
        "stats_means": {"file": MEANS, "rows": list(GROUPS)},
    }
    atomic_write_json(directory / META, meta)
    console.print(
        f"cache complete: {plan.vectors:,} vectors; held-out FVE baseline variance "
        f"{stats['heldout'].get('variance', float('nan')):.4f}; p75 norm {stats['all']['p75_norm']:.4g}"
    )
