"""Document-level splits: every position of a document lands in the same split, decided by its id.

A document's split is a pure function of (seed, doc_id, fractions), so it never depends on corpus
order, sharding or which other documents exist; the held-out split therefore shares no document, and
no left context, with the training splits.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from nla.core.errors import ConfigError

SPLITS = ("av_sft", "ar_sft", "rl", "heldout")
HELDOUT_PARTS = ("validation", "test")
"""The two halves of the held-out split, by document: ``validation`` serves every choice made while
training (curves, the best checkpoint, settings tried), ``test`` the figures a run reports; a
figure on rows that also chose it is biased upwards."""


@dataclass
class SplitArgs:
    av_sft: float = 0.25
    """Fraction of documents for supervised training of the verbalizer (AV)."""
    ar_sft: float = 0.25
    """Fraction of documents for supervised training of the reconstructor (AR)."""
    rl: float = 0.45
    """Fraction of documents for reinforcement learning (GRPO)."""
    heldout: float = 0.05
    """Fraction of documents kept out of all training, for evaluation."""
    seed: int = 0
    """Changing it reassigns documents to splits; keep it fixed across a project."""

    def __post_init__(self) -> None:
        check_fractions(self.fractions())

    def fractions(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in SPLITS}

    def split_of(self, doc_id: str) -> str:
        return split_of(doc_id, self.fractions(), self.seed)


def check_fractions(fractions: Mapping[str, float]) -> None:
    for name, value in fractions.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"splits.{name}", f"must be a number >= 0, got {value!r}")
    total = sum(fractions.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        listed = ", ".join(f"{name}={value}" for name, value in fractions.items())
        raise ConfigError("splits", f"fractions must sum to 1, got {total:.6g} ({listed})")


def unit_hash(seed: int, doc_id: str) -> float:
    """A uniform number in [0, 1) from (seed, doc_id), with its own domain so it is independent of positions."""
    digest = hashlib.sha256(f"split:{seed}:{doc_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(doc_id: str, fractions: Mapping[str, float], seed: int = 0) -> str:
    """The split (a key of ``fractions``) that ``doc_id`` belongs to; splits with fraction 0 are never chosen."""
    check_fractions(fractions)
    u = unit_hash(seed, doc_id)
    cumulative = 0.0
    for name, value in fractions.items():
        cumulative += value
        if u < cumulative:
            return name
    # Only reachable when the fractions sum to a hair under 1: the remainder joins the last non-empty split.
    return [name for name, value in fractions.items() if value > 0][-1]


def spread_over_documents(documents: np.ndarray, seed: int = 0) -> np.ndarray:
    """An order of the rows whose every prefix spreads over the documents: round after round, one row
    of each document (documents in a seeded order, each document's rows in a seeded order).

    ``documents[i]`` is row i's document. A held-out evaluation that reads only the first rows
    (``limit_val_batches``, ``eval_max_batches``) then sees as many documents as it has rows, at
    random positions, instead of the first documents whole; the FVE baseline, the variance of the
    whole split, describes such a prefix as well as the whole.
    """
    rng = np.random.default_rng(seed)
    unique, inverse = np.unique(np.asarray(documents), return_inverse=True)
    # Each row's (round, place of its document in the document order): sorting by it interleaves.
    place = rng.permutation(len(unique))[inverse]
    jitter = rng.permutation(len(inverse))
    by_document = np.lexsort((jitter, inverse))
    rounds = np.empty(len(inverse), dtype=np.int64)
    starts = np.searchsorted(inverse[by_document], np.arange(len(unique)))
    rounds[by_document] = np.arange(len(inverse)) - np.repeat(starts, np.bincount(inverse, minlength=len(unique)))
    return np.lexsort((place, rounds))


def heldout_part(doc_id: str, seed: int = 0) -> str:
    """Which half of the held-out split ``doc_id`` serves (``HELDOUT_PARTS``), half the documents each:
    a pure function of (seed, doc_id) in a hash domain of its own, so it never moves a document
    between the splits themselves."""
    digest = hashlib.sha256(f"heldout-part:{seed}:{doc_id}".encode("utf-8")).digest()
    return HELDOUT_PARTS[int.from_bytes(digest[:8], "big") >= 2**63]


def evaluation_order(documents: np.ndarray, part: str = "heldout", seed: int = 0) -> np.ndarray:
    """Positions of the held-out rows of ``part`` (``heldout`` for all of them, or one of
    ``HELDOUT_PARTS``) in the order every evaluation reads them (``spread_over_documents``);
    ``documents[i]`` is row i's document."""
    documents = np.asarray(documents)
    if part == "heldout":
        return spread_over_documents(documents, seed)
    if part not in HELDOUT_PARTS:
        raise ConfigError("split", f"must be heldout or one of its parts {', '.join(HELDOUT_PARTS)}, got {part!r}")
    chosen = np.flatnonzero([heldout_part(str(doc), seed) == part for doc in documents])
    return chosen[spread_over_documents(documents[chosen], seed)]
