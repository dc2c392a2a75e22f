"""Positions depend on (seed, doc_id, tokens) only, respect min_position, skip special tokens, cap at k."""

from __future__ import annotations

import numpy as np
import pytest

from nla.data.corpus import Document, tokenize_documents
from nla.data.positions import choose_positions

K, MIN_POSITION, SEED = 6, 20, 1234


def corpus() -> list[Document]:
    # Written for this test; a special token appears inside some texts to check it is never chosen.
    words = "rivers bend around old stones and the miller listens to the wheel turning <|im_end|> slowly".split()
    return [
        Document(f"doc-{i:03d}", " ".join(words[(i * 7 + j) % len(words)] for j in range(3 + 4 * i)))
        for i in range(30)
    ]


def positions_by_doc(documents, tokenizer, seed=SEED, batch_size=64) -> dict[str, tuple[int, ...]]:
    tokenized = tokenize_documents(documents, tokenizer, 256, MIN_POSITION, batch_size=batch_size)
    return {
        doc.doc_id: tuple(choose_positions(doc.doc_id, doc.input_ids, doc.special_mask, seed, K, MIN_POSITION))
        for doc in tokenized
    }


def test_positions_do_not_depend_on_sharding_or_order(tiny_tokenizer):
    documents = corpus()
    whole = positions_by_doc(documents, tiny_tokenizer)
    assert len(whole) > 20
    sharded: dict[str, tuple[int, ...]] = {}
    for shard in range(3):  # round-robin shards, as data-parallel workers would read them
        sharded.update(positions_by_doc(documents[shard::3], tiny_tokenizer, batch_size=4))
    reordered = positions_by_doc(documents[::-1], tiny_tokenizer, batch_size=7)
    assert sharded == whole and reordered == whole


def test_positions_are_valid_and_capped(tiny_tokenizer):
    tokenized = list(tokenize_documents(corpus(), tiny_tokenizer, max_length=256, min_position=MIN_POSITION))
    assert any(doc.special_mask[1:].any() for doc in tokenized), "the corpus must contain in-text special tokens"
    counts = []
    for doc in tokenized:
        chosen = choose_positions(doc.doc_id, doc.input_ids, doc.special_mask, SEED, K, MIN_POSITION)
        candidates = np.flatnonzero(~doc.special_mask[MIN_POSITION:]) + MIN_POSITION
        assert chosen.dtype == np.int64 and np.all(np.diff(chosen) > 0), "sorted and distinct"
        assert np.all(chosen >= MIN_POSITION) and not doc.special_mask[chosen].any()
        assert len(chosen) == min(K, len(candidates))
        counts.append(len(chosen))
    assert min(counts) < K == max(counts), "the corpus must have documents with fewer than k candidates"


def test_seed_changes_positions_and_no_candidate_gives_none():
    ids = np.arange(200)
    special = np.zeros(200, dtype=bool)
    special[0] = True
    a = choose_positions("d", ids, special, seed=0, k=10, min_position=50)
    assert np.array_equal(a, choose_positions("d", ids, special, seed=0, k=10, min_position=50))
    assert not np.array_equal(a, choose_positions("d", ids, special, seed=1, k=10, min_position=50))
    assert not np.array_equal(a, choose_positions("e", ids, special, seed=0, k=10, min_position=50))
    special[50:] = True
    assert len(choose_positions("d", ids, special, seed=0, k=10, min_position=50)) == 0
    assert len(choose_positions("d", ids[:40], special[:40], seed=0, k=10, min_position=50)) == 0


def test_positions_spread_over_all_candidates():
    ids, special = np.arange(60), np.zeros(60, dtype=bool)
    hits = np.zeros(60, dtype=int)
    for n in range(2000):
        hits[choose_positions(f"doc{n}", ids, special, seed=0, k=1, min_position=50)] += 1
    assert hits[:50].sum() == 0
    # 2000 draws over 10 candidates: each expects 200 (sd ~13.4); 4.5 sd either side.
    assert hits[50:].min() > 140 and hits[50:].max() < 260


def test_mismatched_mask_is_rejected():
    with pytest.raises(ValueError, match="special-mask"):
        choose_positions("d", np.arange(10), np.zeros(9, dtype=bool), seed=0, k=1, min_position=0)
