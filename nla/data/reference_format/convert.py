"""Reference-format datasets -> nla's activation cache (docs/cache-format.md) and teacher summaries.

Stages map to splits: ``av_sft`` -> av_sft, ``ar_sft`` -> ar_sft, ``rl`` and ``base`` -> rl. The
reference has no held-out split, so ``heldout_fraction`` of the av_sft documents (chosen by a hash of
(seed, doc_id), so the same documents whatever the file order) become heldout: they have teacher text
for both models' evaluation. A document in two files is refused (splits are by document). Each
document's text is its longest ``detokenized_text_truncated`` prefix, and each row's ``char_end`` the
length of its own prefix, so ``ActivationCache.record`` returns the same context the reference stored.

The explanations become the summaries of ``summaries/imported/``, which the DataModule reads for an
imported cache instead of asking a teacher. ``meta.json`` carries an ``imported`` record (the files,
their SHA-256 and sidecars), which the DataModule recognises in place of a corpus configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from nla.data.cache_check import record_location
from nla.data.cache_format import BOUNDS, INDEX_DTYPE, MEANS, META, PLAN, write_shard
from nla.data.cache_plan import FORMAT_VERSION
from nla.data.cache_stats import GROUPS, split_statistics
from nla.data.reference_format.dataset import ReferenceDataset
from nla.data.splits import SPLITS
from nla.data.storage import atomic_save_npy, atomic_write_json, file_sha256
from nla.data.summaries import IMPORTED_SUMMARIES
from nla.core.errors import ConfigError
from nla.core.files import check_replaceable, swap_into_place

STAGE_SPLIT = {"av_sft": "av_sft", "ar_sft": "ar_sft", "rl": "rl", "base": "rl"}


def heldout_documents(doc_ids: set[str], fraction: float, seed: int) -> set[str]:
    def draw(doc_id: str) -> float:
        digest = hashlib.sha256(f"{seed}:heldout:{doc_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    return {doc_id for doc_id in doc_ids if draw(doc_id) < fraction}


def is_cache(directory: Path) -> bool:
    """Whether ``directory`` holds an nla cache (finished or not): ``meta.json`` or ``plan.json``."""
    return (directory / META).is_file() or (directory / PLAN).is_file()


def check_output(directory: Path, field: str = "output") -> None:
    """One line naming ``field`` unless ``directory`` may be replaced by a cache (absent, empty, a cache)."""
    check_replaceable(Path(os.path.abspath(directory)), field, is_cache, "an nla cache (meta.json)")


def write_imported_cache(datasets: list[ReferenceDataset], directory: Path, model: dict, model_type: str,
                         num_layers: int, heldout_fraction: float, seed: int, shard_documents: int,
                         token_ids) -> dict:
    """Write the cache (shards, statistics, summaries, then ``meta.json`` last) into ``directory``,
    replacing what is there only once it is complete; returns the meta. ``directory`` must be new,
    empty or a cache (``check_output``).

    ``token_ids(text) -> list[int]`` tokenizes a document prefix; its last id is the row's token."""
    owner: dict[str, str] = {}
    for dataset in datasets:
        for doc_id in sorted(set(dataset.doc_ids)):
            if owner.setdefault(doc_id, dataset.path.name) != dataset.path.name:
                raise ConfigError(f"datasets: {dataset.path.name}", f"document {doc_id!r} is also in {owner[doc_id]}; "
                                  "the datasets must split by document")
    av_docs = {d for ds in datasets if ds.stage == "av_sft" for d in ds.doc_ids}
    heldout = heldout_documents(av_docs, heldout_fraction, seed)
    rows: dict[str, list[tuple[ReferenceDataset, int]]] = defaultdict(list)
    for dataset in datasets:
        for row, doc_id in enumerate(dataset.doc_ids):
            rows[doc_id].append((dataset, row))
    # Written beside the target and swapped into place at the end: a failure leaves nothing half-written.
    final = Path(os.path.abspath(directory))
    directory = final.with_name(f".{final.name}.importing")
    shutil.rmtree(directory, ignore_errors=True)
    order = sorted(rows)
    summaries: dict[str, dict[str, list[str]]] = {split: {} for split in SPLITS}
    d = datasets[0].d_model
    index = 0
    num_shards = (len(order) + shard_documents - 1) // shard_documents
    for shard in range(num_shards):
        docs, records, vectors = [], [], []
        for doc_row, doc_id in enumerate(order[shard * shard_documents : (shard + 1) * shard_documents]):
            members = sorted(rows[doc_id], key=lambda item: int(item[0].positions[item[1]]))
            dataset = members[0][0]
            split = "heldout" if doc_id in heldout else STAGE_SPLIT[dataset.stage]
            prefixes = [m[0].texts[m[1]] or "" for m in members]
            text = max(prefixes, key=len)
            docs.append({"doc_id": doc_id, "split": split, "text": text})
            for (source, row), prefix in zip(members, prefixes):
                ids = token_ids(prefix) if prefix else []
                records.append((doc_row, int(source.positions[row]), ids[-1] if ids else -1, len(prefix),
                                SPLITS.index(split)))
                vectors.append(source.vectors[row])
                explanation = source.explanations[row]
                if explanation:
                    summaries[split][str(index)] = [line for line in explanation.splitlines() if line.strip()]
                index += 1
        write_shard(directory, shard, np.stack(vectors).astype(np.float32), np.array(records, dtype=INDEX_DTYPE), docs)
    stats, means, bounds = split_statistics(directory, num_shards, "float32")
    atomic_save_npy(directory / MEANS, means)
    atomic_save_npy(directory / BOUNDS, bounds)
    summary_dir = directory / "summaries" / IMPORTED_SUMMARIES
    summary_dir.mkdir(parents=True)
    for split, features in summaries.items():
        atomic_write_json(summary_dir / f"{split}.json", {"split": split, "identity": {"provider": "imported"},
                                                          "features": features})
    sources = [{"file": str(ds.path.resolve()), "sha256": file_sha256(ds.path), "stage": ds.stage,
                "dataset_id": ds.meta.get("dataset_id"), "rows": len(ds.doc_ids),
                "base_model": (ds.meta.get("extraction") or {}).get("base_model")} for ds in datasets]
    fingerprint = hashlib.sha256(json.dumps([s["sha256"] for s in sources] + [heldout_fraction, seed, model],
                                            sort_keys=True).encode()).hexdigest()[:16]
    meta = {
        "format": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "imported": {"kind": "nla_dataset", "sources": sources, "heldout_fraction": heldout_fraction, "seed": seed},
        "model": {**model, "model_type": model_type, "num_layers": num_layers},
        "layer": datasets[0].layer,
        "d_model": d,
        "store_dtype": "float32",
        "index_dtype": INDEX_DTYPE.descr,
        "counts": {"documents": len(order), "tokens": 0, "vectors": index},
        "num_shards": num_shards,
        "stats": stats,
        "stats_means": {"file": MEANS, "rows": list(GROUPS)},
    }
    atomic_write_json(directory / META, meta)
    swap_into_place(directory, final)
    record_location(final)
    return meta
