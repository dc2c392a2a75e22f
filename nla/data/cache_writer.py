"""Build the activation cache: batched early-exit forwards written to atomic, resumable memmap shards."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nla.data.cache_check import (check_metadata, check_readable, check_writable, discard_shards, shards_to_repair,
                                  validate_cache)
from nla.data.cache_format import INDEX_DTYPE, META, NOT_WRITTEN, PLAN, SHARDS, shard_name, shard_problem, write_shard
from nla.data.cache_meta import Unreadable, damaged_metadata, read_json
from nla.data.cache_plan import CacheArgs, CachePlan, PlannedDocument, PlannedDocuments, make_plan
from nla.data.cache_stats import finalize
from nla.data.corpus import CorpusArgs
from nla.data.splits import SPLITS, SplitArgs
from nla.data.storage import atomic_write_json, encode_vectors
from nla.data.tokens import TokenizedDocument
from nla.core.errors import ConfigError, NLAError, field_scope
from nla.core.sizes import human_size
from nla.models import adapters
from nla.models.loading import ModelArgs, load_causal_lm, load_config, load_tokenizer
from nla.models.residual import read_residual
from nla.core.padding import pad, pad_token_id


def length_sorted_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Group indices longest-first so each batch pads little, with at most ``batch_tokens`` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, current = [], []
    for i in order:
        # The first index of a batch is its longest, so it sets the padded width.
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * width > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


def extract_shard(
    model, layer: int, docs: list[TokenizedDocument], planned: list[PlannedDocument], batch_tokens: int, pad_id: int
) -> torch.Tensor:
    """Residuals at every planned position, in (document, position) order, as float32 [n, d]."""
    device = next(model.parameters()).device
    pieces: dict[int, torch.Tensor] = {}
    for batch in length_sorted_batches([len(doc.input_ids) for doc in docs], batch_tokens):
        ids, mask = pad([docs[i].input_ids.tolist() for i in batch], pad_id, "right")
        rows, cols = [], []
        for row, i in enumerate(batch):
            rows += [row] * len(planned[i].positions)
            cols += planned[i].positions.tolist()
        hidden = read_residual(
            model, layer, ids.to(device), mask.to(device), torch.tensor(rows, device=device), torch.tensor(cols, device=device)
        ).float().cpu()
        start = 0
        for i in batch:
            count = len(planned[i].positions)
            pieces[i] = hidden[start : start + count]
            start += count
    return torch.cat([pieces[i] for i in range(len(docs))])


def shard_records(docs: list[TokenizedDocument], planned: list[PlannedDocument]) -> tuple[np.ndarray, list[dict]]:
    rows = []
    for doc_row, (doc, plan) in enumerate(zip(docs, planned)):
        for position in plan.positions:
            end = int(doc.offsets[: position + 1, 1].max())
            rows.append((doc_row, position, doc.input_ids[position], end, SPLITS.index(plan.split)))
    texts = [{"doc_id": doc.doc_id, "split": plan.split, "text": doc.text} for doc, plan in zip(docs, planned)]
    return np.array(rows, dtype=INDEX_DTYPE), texts


def recorded_fingerprint(directory: Path) -> tuple[str | None, bool]:
    """The fingerprint of the configuration that built the cache in ``directory``, and whether
    ``plan.json`` holds it; a damaged ``plan.json`` falls back on ``meta.json`` (None: neither says)."""
    for name in (PLAN, META):
        try:
            fingerprint = read_json(directory / name).get("fingerprint")
        except (Unreadable, FileNotFoundError):
            continue
        if isinstance(fingerprint, str):
            return fingerprint, name == PLAN
    return None, False


def prepare_directory(directory: Path, plan: CachePlan, cache: CacheArgs, key: str) -> None:
    """Refuse (or, with overwrite, clear) a cache built from another configuration; then record the plan
    (again, when ``plan.json`` was damaged but ``meta.json`` shows this configuration built the cache)."""
    plan_path = directory / PLAN
    if plan_path.is_file():
        existing, intact = recorded_fingerprint(directory)
        if existing == plan.fingerprint and intact:
            return
        if existing is None and not cache.overwrite:
            raise NLAError(f"{key}.directory: {plan_path} is damaged and no readable {META} says which configuration "
                           f"built {directory}; delete {directory} and rerun, or set {key}.overwrite: true")
        if existing not in (None, plan.fingerprint) and not cache.overwrite:
            raise ConfigError(
                "cache.overwrite",
                f"{directory} holds a cache built from a different configuration (fingerprint {existing}, "
                f"now {plan.fingerprint}); set overwrite: true or choose another directory",
            )
        if existing != plan.fingerprint:
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan_path, {"fingerprint": plan.fingerprint, "shards": plan.num_shards})


def remove_stale_temporaries(directory: Path, shards: list[int], own_top_level: bool) -> None:
    """A killed run leaves its half-written temporary files behind (SIGKILL runs no cleanup). Each rank
    removes those of the shards it owns, so a resumed cache ends with exactly the files of a clean run."""
    stale = [p for i in shards for p in (directory / SHARDS).glob(f".{shard_name(i)}.*.tmp")]
    if own_top_level:
        stale += list(directory.glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)


def vector_bytes(vectors: int, d: int, store_dtype: str) -> int:
    """Disk taken by ``vectors`` cached rows of width ``d`` (vectors and index rows)."""
    return vectors * (d * (4 if store_dtype == "float32" else 2) + INDEX_DTYPE.itemsize)


def check_disk(plan: CachePlan, d: int, cache: CacheArgs, directory: Path, key: str) -> int:
    """Refuse to start when the shards still to write cannot fit; returns the bytes they need."""
    needed = vector_bytes(plan.vectors, d, cache.store_dtype)
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise NLAError(f"{key}.directory: {directory} needs {human_size(needed)} but has {human_size(free)} free; "
                       "free space or choose another directory")
    return needed


def preflight(console: Console, plan: CachePlan, d: int, cache: CacheArgs, directory: Path, seconds_per_token: float,
              layer_note: str = ""):
    needed = vector_bytes(plan.vectors, d, cache.store_dtype)
    free = shutil.disk_usage(directory).free
    console.print(
        f"[bold]activation cache[/bold] {directory}: {len(plan.documents)} documents, {plan.tokens:,} tokens, "
        f"{plan.vectors:,} vectors of d={d} ({cache.store_dtype}) in {plan.num_shards} shards{layer_note}; "
        f"disk {human_size(needed)} of {human_size(free)} free; "
        f"about {plan.tokens * seconds_per_token / 60:,.1f} min; {plan.report.summary()}"
    )


def seconds_per_token(model, layer: int, batch_tokens: int, width: int, vocab_size: int) -> float:
    """One timed forward of a batch as wide as the longest document, for the pre-flight estimate."""
    width = min(width, batch_tokens)
    ids = torch.randint(0, vocab_size, (max(1, batch_tokens // width), width), device=next(model.parameters()).device)
    start = time.perf_counter()
    read_residual(model, layer, ids, torch.ones_like(ids), torch.tensor([0]), torch.tensor([0]))
    return (time.perf_counter() - start) / ids.numel()


def build_cache(
    model: ModelArgs,
    corpus: CorpusArgs,
    cache: CacheArgs,
    splits: SplitArgs | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    console: Console | None = None,
    key: str = "cache",
) -> Path:
    """Write every shard this rank owns (shard i belongs to rank i % world_size) that is not already
    complete; rank 0 then waits for all shards and writes the statistics and ``meta.json``. A finished
    cache is validated instead (``cache.repair`` first discards what is damaged, so it is unfinished
    again). ``key`` is where the cache's settings sit in the user's config, for messages."""
    splits = splits or SplitArgs()
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    console = console or Console(stderr=True)
    directory = Path(cache.directory)
    with field_scope("target"):
        config, tokenizer = load_config(model), load_tokenizer(model)
    layer = adapters.default_layer(config) if cache.layer == -1 else adapters.check_layer(config, cache.layer, "cache.layer")
    # Before the corpus is read: a finished cache is only read (it may be shared read-only).
    check_readable(directory, key)
    if cache.repair or not (directory / META).is_file():
        check_writable(directory, key)
    plan = make_plan(model, corpus, cache, splits, tokenizer, layer)
    prepare_directory(directory, plan, cache, key)
    if cache.repair:
        repair(directory, plan.num_shards, adapters.hidden_size(config), cache.store_dtype, world_size, console)
    finished = (directory / META).is_file()
    # A finished cache gets back only shards deleted as its damage line says; other damage is validation's
    # to name and cache.repair's to fix, never silently rewritten under the recorded statistics.
    todo = [i for i in range(plan.num_shards) if i % world_size == rank
            and (problem := shard_problem(directory, i)) and (problem == NOT_WRITTEN or not finished)]
    remove_stale_temporaries(directory, todo, own_top_level=rank == 0)
    if todo:
        check_disk(plan, adapters.hidden_size(config), cache, directory, key)
        network = load_causal_lm(model, keep_layers=layer + 1, config=config).eval()
        # A bitsandbytes model is placed on the GPU as it loads and refuses to be moved.
        if torch.cuda.is_available() and not getattr(network, "is_quantized", False):
            network = network.cuda()
        pad_id = pad_token_id(tokenizer)
        width = max(doc.length for doc in plan.documents)
        rate = seconds_per_token(network, layer, cache.batch_tokens, width, len(tokenizer))
        note = "" if cache.layer != -1 else (f"; cache.layer -1: K = {layer}, the default (about two thirds of "
                                              f"{adapters.num_layers(config)} blocks)")
        preflight(console, plan, adapters.hidden_size(config), cache, directory, rate, note)
        write_shards(network, layer, plan, todo, PlannedDocuments(corpus, tokenizer, cache, splits), cache, pad_id, directory, console)
    if rank == 0 and finished:
        # Finished before: statistics are never recomputed over shards that may have been damaged since.
        validate_cache(directory, check_metadata(directory, key), cache.checksums, key=key)
        console.print(f"cache complete and valid: {directory}")
    elif rank == 0:
        finalize(directory, plan, model, corpus, cache, splits, config, layer, console)
    return directory


def repair(directory: Path, num_shards: int, d: int, store_dtype: str, world_size: int, console: Console) -> None:
    """``cache.repair``: discard the shards that fail validation, checksums included, so the writer
    re-extracts exactly those, and ``meta.json`` when they or any statistics file are damaged, so the
    statistics, bounds and means are computed again from the (then whole) shards. A shard whose
    manifest is damaged is re-extracted too: the manifest is the only record of its checksums."""
    if world_size > 1:
        raise ConfigError("cache.repair", "runs in one process; rerun without torchrun")
    damaged, stale = shards_to_repair(directory, num_shards, d, store_dtype), damaged_metadata(directory)
    console.print(f"cache repair: {len(damaged)} damaged shards" + (f" to re-extract: {damaged}" if damaged else "")
                  + (f"; {', '.join(stale)} to rebuild from the shards" if stale else ""))
    if damaged or stale:
        discard_shards(directory, damaged)


def write_shards(network, layer, plan, todo, pairs, cache, pad_id, directory, console) -> None:
    wanted = set(todo)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("caching shards", total=len(todo), rate="")
        tokens, start = 0, time.perf_counter()
        docs, planned, shard = [], [], 0
        for doc, plan_row in pairs:
            docs.append(doc)
            planned.append(plan_row)
            if len(docs) < cache.shard_documents:
                continue
            tokens += _flush(network, layer, shard, docs, planned, wanted, cache, pad_id, directory)
            shard, docs, planned = shard + 1, [], []
            progress.update(task, completed=len([i for i in todo if i < shard]), rate=f"{tokens / (time.perf_counter() - start):,.0f} tok/s")
        if docs:
            tokens += _flush(network, layer, shard, docs, planned, wanted, cache, pad_id, directory)
            shard += 1
        progress.update(task, completed=len(todo), rate=f"{tokens / max(time.perf_counter() - start, 1e-9):,.0f} tok/s")
    if shard != plan.num_shards:
        raise NLAError(f"corpus changed while caching: planned {plan.num_shards} shards, read {shard}")


def _flush(network, layer, shard, docs, planned, wanted, cache, pad_id, directory) -> int:
    if shard not in wanted:
        return 0
    vectors = extract_shard(network, layer, docs, planned, cache.batch_tokens, pad_id)
    if not bool(torch.isfinite(vectors).all()):
        raise ConfigError("target.dtype", f"the forward produced non-finite activations at layer {layer} in shard "
                          f"{shard}; nothing of that shard was written; use float32 (or check the model's weights)")
    records, texts = shard_records(docs, planned)
    write_shard(directory, shard, encode_vectors(vectors, cache.store_dtype), records, texts)
    return sum(len(doc.input_ids) for doc in docs)
