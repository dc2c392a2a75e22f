"""Which token positions of a document get an activation: a function of (seed, doc_id, tokens) only.

Keying the generator by a hash of the seed and the document id, never by a shared stream, means the
same document gets the same positions whichever shard, worker or order it is processed in.
"""

from __future__ import annotations

import hashlib

import numpy as np


def document_rng(seed: int, doc_id: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``doc_id`` (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def choose_positions(
    doc_id: str,
    token_ids: np.ndarray,
    special_mask: np.ndarray,
    seed: int,
    k: int,
    min_position: int,
) -> np.ndarray:
    """Up to ``k`` distinct positions, sorted (int64): each ``>= min_position`` and not a special token.

    Fewer than ``k`` come back when the document has fewer candidates; none when it has none.
    """
    if len(token_ids) != len(special_mask):
        raise ValueError(f"{doc_id}: {len(token_ids)} token ids but {len(special_mask)} special-mask entries")
    if k < 0 or min_position < 0:
        raise ValueError(f"k and min_position must be >= 0, got {k} and {min_position}")
    candidates = np.flatnonzero(~np.asarray(special_mask, dtype=bool)[min_position:]) + min_position
    chosen = document_rng(seed, doc_id).choice(candidates, size=min(k, len(candidates)), replace=False)
    return np.sort(chosen).astype(np.int64)
