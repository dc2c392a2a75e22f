"""Read a finished activation cache: memory-mapped shards, per-split indices, contexts and statistics."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from nla.data.cache_check import check_metadata, damage_error
from nla.data.cache_format import GROUPS, META, shard_files, shard_problem
from nla.data.cache_meta import read_means
from nla.data.splits import SPLITS
from nla.data.storage import decode_vectors
from nla.core.errors import ConfigError, NLAError


class ActivationCache:
    """All vectors of a cache addressed by one global index, in shard order.

    Opening checks the small files (``nla.data.cache_check.check_metadata``: ``meta.json``, the bounds
    and means, every shard's manifest and sizes, so a truncated shard is found before training starts),
    and ``meta.json`` against the model that asks (d, K); ``verify_checksums`` also hashes every file
    to find corruption. Memory maps open lazily and are dropped when pickled, so DataLoader
    workers map the files themselves instead of receiving copies.
    """

    def __init__(
        self,
        directory: str | Path,
        expect_d: int | None = None,
        expect_layer: int | None = None,
        verify_checksums: bool = False,
        field: str = "cache.directory",
    ) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / META
        if not meta_path.is_file():
            raise NLAError(f"{field}: {self.directory} holds no finished cache (no {META}); run `nla cache` first")
        key = field.rsplit(".", 1)[0]
        self.meta = check_metadata(self.directory, key)
        if expect_d is not None and self.d != expect_d:
            raise ConfigError(field, f"cache has d={self.d} but the model has d={expect_d}; rebuild the cache for this model")
        if expect_layer is not None and self.layer != expect_layer:
            raise ConfigError(field, f"cache holds layer {self.layer} but layer {expect_layer} was asked for; rebuild it")
        if verify_checksums:
            for index in range(self.meta["num_shards"]):
                problem = shard_problem(self.directory, index, verify_checksums=True)
                if problem:
                    raise damage_error(self.directory, index, problem, key)
        self.key = key
        self._maps: dict[int, np.ndarray] = {}
        self._docs: dict[int, list[dict]] = {}

    @property
    def d(self) -> int:
        return int(self.meta["d_model"])

    @property
    def layer(self) -> int:
        return int(self.meta["layer"])

    def __len__(self) -> int:
        return int(self.meta["counts"]["vectors"])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}, "_docs": {}}

    @cached_property
    def index(self) -> np.ndarray:
        """The index rows of all shards, concatenated (small: ~25 bytes a vector)."""
        return np.concatenate([np.load(shard_files(self.directory, i)["index"]) for i in range(self.meta["num_shards"])])

    @cached_property
    def _offsets(self) -> np.ndarray:
        sizes = [len(np.load(shard_files(self.directory, i)["index"], mmap_mode="r")) for i in range(self.meta["num_shards"])]
        return np.concatenate([[0], np.cumsum(sizes)])

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"vector {i} out of range for a cache of {len(self)}")
        shard = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return shard, i - int(self._offsets[shard])

    def _shard(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            self._maps[shard] = np.load(shard_files(self.directory, shard)["vectors"], mmap_mode="r")
        return self._maps[shard]

    def vectors(self, indices) -> torch.Tensor:
        """float32 ``[len(indices), d]`` for global indices."""
        rows = [self._shard(s)[r] for s, r in map(self._locate, np.asarray(indices, dtype=np.int64).tolist())]
        return decode_vectors(np.stack(rows) if rows else np.zeros((0, self.d)), self.meta["store_dtype"])

    def split_indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ConfigError("split", f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.index["split"] == SPLITS.index(split))

    def record(self, i: int) -> dict:
        """Where vector ``i`` comes from: document id, split, token position and id, the context text
        (the document up to and including that token) and the document's whole ``text``."""
        shard, row = self._locate(int(i))
        if shard not in self._docs:
            lines = shard_files(self.directory, shard)["docs"].read_text().splitlines()
            self._docs[shard] = [json.loads(line) for line in lines]
        entry = self.index[i]
        doc = self._docs[shard][int(entry["doc"])]
        return {
            "doc_id": doc["doc_id"],
            "split": doc["split"],
            "position": int(entry["position"]),
            "token_id": int(entry["token_id"]),
            "context": doc["text"][: int(entry["char_end"])],
            "text": doc["text"],
        }

    def stats(self, split: str = "all") -> dict:
        """count, mean_norm, p75_norm, variance (the FVE baseline), meannorm_variance, and ``mean`` (the
        mean normalised vector) of one split or of ``all``."""
        if split not in GROUPS:
            raise ConfigError("split", f"unknown split '{split}'; use one of {', '.join(GROUPS)}")
        means = read_means(self.directory, self.d, self.key)
        return {**self.meta["stats"][split], "mean": torch.from_numpy(means[GROUPS.index(split)])}
