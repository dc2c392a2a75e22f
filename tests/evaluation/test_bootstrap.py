"""The held-out comparison's statistics on hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nla.evaluation.bootstrap import difference_interval, document_resamples, fve_interval
from nla.evaluation.round_trip import derangement, mean_predictor_mse, row_mse


def test_derangement_moves_every_row_and_is_seeded():
    for count in (2, 3, 10, 257):
        order = derangement(count, seed=4)
        assert sorted(order.tolist()) == list(range(count))
        assert not bool((order == torch.arange(count)).any())
    assert torch.equal(derangement(50, seed=1), derangement(50, seed=1))
    assert not torch.equal(derangement(50, seed=1), derangement(50, seed=2))


def test_document_resamples_draw_whole_documents():
    documents = np.array(["a", "a", "a", "b", "c", "c"])
    for rows in document_resamples(documents, resamples=200, seed=0):
        picked = documents[rows]
        # Every document drawn comes with all of its rows: "a" in threes, "c" in twos.
        counts = {doc: int((picked == doc).sum()) for doc in "abc"}
        assert counts["a"] % 3 == 0 and counts["c"] % 2 == 0
        assert counts["a"] // 3 + counts["b"] + counts["c"] // 2 == 3


def test_fve_interval_of_constant_rows_is_a_point():
    mse = np.full(8, 0.25)
    interval = fve_interval(mse, variance=0.5, draws=document_resamples(np.arange(8), 100, seed=0))
    assert interval.value == pytest.approx(0.5)
    assert interval.low == pytest.approx(0.5) and interval.high == pytest.approx(0.5)


def test_paired_difference_sees_a_constant_gain_that_unpaired_noise_would_hide():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 1.8, size=400)  # rows differ a lot from each other ...
    better = base - 0.05                     # ... but b beats a by exactly 0.05 on every row
    draws = document_resamples(np.arange(400), 500, seed=0)
    difference = difference_interval(better, base, variance=0.5, draws=draws)
    assert difference.value == pytest.approx(0.1)
    assert difference.low == pytest.approx(0.1) and difference.high == pytest.approx(0.1)
    separate = fve_interval(base, 0.5, draws)
    assert separate.high - separate.low > 0.1  # each FVE alone is far less certain than the gap


def test_mean_predictor_of_the_rows_own_mean_scores_their_variance():
    targets = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-1.0, 0.0]])
    unit = targets / targets.norm(dim=-1, keepdim=True) * 2**0.5
    mse = mean_predictor_mse(targets, unit.mean(dim=0))
    variance = float((unit - unit.mean(dim=0)).square().sum(dim=-1).mean() / 2)
    assert mse.mean() == pytest.approx(variance)  # FVE exactly 0 for the rows' own mean


def test_row_mse_is_two_minus_two_cosine():
    predictions = torch.tensor([[1.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    targets = torch.tensor([[2.0, 0.0], [3.0, 0.0], [-1.0, -1.0]])
    assert row_mse(predictions, targets) == pytest.approx([0.0, 2.0, 4.0])


def test_bootstrap_interval_skips_draws_where_the_statistic_is_undefined():
    from nla.evaluation.bootstrap import ALL_ROWS, bootstrap_interval

    values = np.array([1.0, 2.0, 3.0])
    draws = [np.array([0, 1]), np.array([2, 2]), np.array([0, 0])]

    def ratio(rows) -> float:
        picked = values[rows]
        return float("nan") if (picked == 1.0).all() else float(picked.mean())

    interval = bootstrap_interval(ratio, draws)
    assert interval.value == 2.0 and ratio(ALL_ROWS) == 2.0
    expected = np.percentile([1.5, 3.0], [2.5, 97.5])
    assert (interval.low, interval.high) == pytest.approx(tuple(expected))
    assert interval.beyond_noise and not bootstrap_interval(lambda rows: values[rows].mean() - 2, draws).beyond_noise
