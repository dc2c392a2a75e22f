"""``nla cache``: build the activation cache on its own (also run by the DataModule when missing)."""

from __future__ import annotations

from nla.commands.preflight import run_cache_preflight
from nla.core.errors import field_scope
from nla.data.cache_writer import build_cache
from nla.data.source import DataSource


def cache(source: DataSource) -> None:
    """Cache residual-stream activations of the target model at layer ``source.cache.layer`` over
    ``source.corpus`` (a family's ``data.yaml``: ``nla cache --source configs/<family>/data.yaml``).

    Data-parallel with torchrun: each process writes the shards i with i % WORLD_SIZE == RANK, and
    rank 0 writes the statistics once every shard exists.

    Args:
        source: Where the rows come from: the target, the corpus, the cache and the splits (the teacher
            and the prompts are read by training, not here).
    """
    run_cache_preflight(source.target, source.corpus, source.cache)
    with field_scope("source"):
        build_cache(source.target, source.corpus, source.cache, source.splits, key="source.cache")
