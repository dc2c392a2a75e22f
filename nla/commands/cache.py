"""``nla cache``: build the activation cache on its own (also run by the DataModule when missing)."""

from __future__ import annotations

from nla.data.cache_plan import CacheArgs
from nla.data.cache_writer import build_cache
from nla.data.corpus import CorpusArgs
from nla.data.splits import SplitArgs
from nla.models.loading import ModelArgs
from nla.commands.preflight import run_cache_preflight


def cache(model: ModelArgs, corpus: CorpusArgs, cache: CacheArgs, splits: SplitArgs | None = None) -> None:
    """Cache residual-stream activations of ``model`` at layer ``cache.layer`` over ``corpus``.

    Data-parallel with torchrun: each process writes the shards i with i % WORLD_SIZE == RANK, and
    rank 0 writes the statistics once every shard exists.
    """
    run_cache_preflight(model, corpus, cache)
    build_cache(model, corpus, cache, splits or SplitArgs())
