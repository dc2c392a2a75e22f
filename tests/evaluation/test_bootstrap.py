"""The held-out comparison's statistics on hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nla.evaluation.bootstrap import RowVariance, difference_interval, document_resamples, fve_interval
from nla.core.maths import derangement
from nla.evaluation.round_trip import mean_predictor_mse, row_mse


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


def test_percentile_intervals_over_fixed_draws_of_three_documents_by_hand():
    # Document a holds rows 0 and 1 (MSE 0.2, 0.4), b row 2 (1.0), c row 3 (0.6); Var = 0.5.
    mse = np.array([0.2, 0.4, 1.0, 0.6])
    draws = [np.array([0, 1, 0, 1, 2]),   # a a b: mean (0.2 + 0.4 + 0.2 + 0.4 + 1.0) / 5 = 0.44 -> FVE 0.12
             np.array([2, 2, 3]),         # b b c: mean 2.6 / 3 -> FVE 1 - 5.2 / 3 = -0.7333...
             np.array([0, 1, 3, 3]),      # a c c: mean 1.8 / 4 = 0.45 -> FVE 0.1
             np.array([3, 0, 1, 2])]      # c a b: mean 2.2 / 4 = 0.55 -> FVE -0.1
    interval = fve_interval(mse, variance=0.5, draws=draws)
    # All rows: mean 0.55 -> FVE -0.1. Sorted draws: -0.7333, -0.1, 0.1, 0.12; numpy's linear
    # percentiles sit at positions 3 x 0.025 = 0.075 and 3 x 0.975 = 2.925 of that list.
    assert interval.value == pytest.approx(-0.1)
    assert interval.low == pytest.approx(-11 / 15 + 0.075 * (-0.1 + 11 / 15))
    assert interval.high == pytest.approx(0.1 + 0.925 * (0.12 - 0.1))
    # The paired difference against a predictor 0.1 worse on rows of a only: FVE gains by
    # 0.1 x (share of rows from a) / Var in each draw.
    worse = mse + np.array([0.1, 0.1, 0.0, 0.0])
    gain = difference_interval(mse, worse, variance=0.5, draws=draws)
    per_draw = sorted(0.2 * share for share in (4 / 5, 0, 2 / 4, 2 / 4))  # 0, 0.1, 0.1, 0.16
    assert gain.value == pytest.approx(0.2 * 2 / 4)
    assert gain.low == pytest.approx(per_draw[0] + 0.075 * (per_draw[1] - per_draw[0]))
    assert gain.high == pytest.approx(per_draw[2] + 0.925 * (per_draw[3] - per_draw[2]))


def test_each_draw_divides_by_the_variance_of_the_rows_it_drew():
    # d = 2, one row per document: e1, e2 and -e1, normalised to norm sqrt(2). rawvar = 1 - ||mu||^2 / d.
    vectors = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]])
    variance = RowVariance(vectors)
    assert variance() == pytest.approx(8 / 9)                      # mu = (0, sqrt2 / 3)
    draws = [np.array([0, 0, 1]),                                  # mu = (2 sqrt2 / 3, sqrt2 / 3): Var 4/9
             np.array([0, 2, 2]),                                  # mu = (-sqrt2 / 3, 0): Var 8/9
             np.array([1, 1, 1])]                                  # one direction: Var 0 -> FVE undefined
    assert variance(draws[0]) == pytest.approx(4 / 9)
    mse = np.array([0.2, 0.4, 0.6])
    interval = fve_interval(mse, variance, draws)
    # Draws: 1 - (0.8 / 3) / (4/9) = 0.4, 1 - (1.4 / 3) / (8/9) = 0.475; the third (x / 0) drops out.
    assert interval.value == pytest.approx(1 - 0.4 / (8 / 9))
    assert interval.low == pytest.approx(0.4 + 0.025 * 0.075)
    assert interval.high == pytest.approx(0.4 + 0.975 * 0.075)
    # The paired difference divides by the same per-draw variance.
    gain = difference_interval(mse, mse + 0.1, variance, draws[:2])
    assert gain.low == pytest.approx(0.1 / (8 / 9) + 0.025 * (0.1 / (4 / 9) - 0.1 / (8 / 9)))
    assert variance.subset(np.array([0, 2]))() == pytest.approx(1.0)  # e1 and -e1: mu = 0
