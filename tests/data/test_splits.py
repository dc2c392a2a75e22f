"""Document splits: deterministic per id, matching the configured fractions, reshuffled by the seed."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from nla.data.splits import (HELDOUT_PARTS, SPLITS, SplitArgs, evaluation_order, heldout_part, split_of,
                             spread_over_documents, unit_hash)
from nla.core.errors import ConfigError

IDS = [f"doc-{i}" for i in range(10_000)]


def test_defaults_and_fractions_are_respected():
    args = SplitArgs()
    assert args.fractions() == {"av_sft": 0.25, "ar_sft": 0.25, "rl": 0.45, "heldout": 0.05}
    counts = Counter(args.split_of(doc_id) for doc_id in IDS)
    assert set(counts) == set(SPLITS)
    for name, fraction in args.fractions().items():
        # Four binomial standard deviations on 10k ids.
        tolerance = 4 * math.sqrt(fraction * (1 - fraction) / len(IDS))
        assert abs(counts[name] / len(IDS) - fraction) < tolerance, name


def test_assignment_is_deterministic_and_order_free():
    args = SplitArgs()
    forward = {doc_id: args.split_of(doc_id) for doc_id in IDS}
    backward = {doc_id: split_of(doc_id, args.fractions(), args.seed) for doc_id in reversed(IDS)}
    assert forward == backward


def test_seed_changes_assignment():
    a, b = SplitArgs(seed=0), SplitArgs(seed=1)
    moved = sum(a.split_of(doc_id) != b.split_of(doc_id) for doc_id in IDS) / len(IDS)
    # Independent draws disagree with probability 1 - sum(p^2) = 0.67.
    assert 0.62 < moved < 0.72


def test_custom_and_zero_fractions():
    args = SplitArgs(av_sft=0.5, ar_sft=0.0, rl=0.3, heldout=0.2, seed=7)
    counts = Counter(args.split_of(doc_id) for doc_id in IDS)
    assert counts["ar_sft"] == 0
    assert abs(counts["av_sft"] / len(IDS) - 0.5) < 4 * math.sqrt(0.25 / len(IDS))
    assert split_of("x", {"only": 1.0}) == "only"


def test_bad_fractions_name_the_field():
    with pytest.raises(ConfigError, match=r"^splits\.rl: must be a number >= 0") as caught:
        SplitArgs(rl=-0.1, heldout=0.6)
    assert caught.value.field == "splits.rl"
    with pytest.raises(ConfigError, match=r"^splits: fractions must sum to 1, got 1\.05 .*heldout=0\.1"):
        SplitArgs(heldout=0.1)
    with pytest.raises(ConfigError, match="splits.heldout"):
        split_of("x", {"rl": 1.0, "heldout": float("nan")})


def test_spread_over_documents_deals_one_row_per_document_per_round():
    documents = np.array(["a", "a", "a", "b", "c", "c", "d", "a", "b"])
    order = spread_over_documents(documents)
    assert sorted(order.tolist()) == list(range(len(documents)))
    dealt = documents[order].tolist()
    assert sorted(dealt[:4]) == ["a", "b", "c", "d"]  # round 0: every document once
    assert sorted(dealt[4:7]) == ["a", "b", "c"]      # round 1: those with a second row
    assert dealt[7:] == ["a", "a"]
    # One document order for every round, fixed by the seed.
    assert [d for d in dealt[:4] if d != "d"] == dealt[4:7]
    assert np.array_equal(spread_over_documents(documents), order)
    assert not all(np.array_equal(spread_over_documents(documents, seed), order) for seed in range(1, 6))


def test_heldout_parts_are_a_fixed_half_of_the_documents():
    documents = [f"doc-{i}" for i in range(2000)]
    parts = [heldout_part(doc) for doc in documents]
    assert parts == [heldout_part(doc) for doc in documents]
    assert set(parts) == set(HELDOUT_PARTS)
    assert abs(parts.count("validation") / len(parts) - 0.5) < 0.05
    # Its own hash domain: which half a held-out document serves is independent of the split hash.
    assert [unit_hash(0, doc) < 0.5 for doc in documents] != [part == "validation" for part in parts]


def test_evaluation_order_of_each_half_is_its_rows_spread_over_its_documents():
    documents = np.array([f"doc-{i // 3}" for i in range(60)])
    every = evaluation_order(documents)
    assert sorted(every.tolist()) == list(range(60))
    halves = {part: evaluation_order(documents, part) for part in HELDOUT_PARTS}
    assert sorted(np.concatenate(list(halves.values())).tolist()) == list(range(60))
    for part, rows in halves.items():
        assert {heldout_part(doc) for doc in documents[rows]} == {part}
        count = len(set(documents[rows].tolist()))
        assert len(set(documents[rows][:count].tolist())) == count, "the first rows come from distinct documents"
    with pytest.raises(ConfigError, match="split: must be heldout or one of its parts"):
        evaluation_order(documents, "train")
