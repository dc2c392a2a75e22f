"""The audit query's shares and differences on hand-made tallies and fixed draws."""

from __future__ import annotations

import numpy as np
import pytest

from nla.evaluation.audit_stats import (Tallies, explanation_share, paired_difference, rates, tally, text_resamples,
                                        text_share, two_sample_difference)
from nla.evaluation.bootstrap import document_resamples


def percentiles(values: list[float]) -> tuple[float, float]:
    """2.5th and 97.5th percentiles by hand (linear between order statistics, as numpy's default)."""
    ordered = sorted(values)

    def at(q: float) -> float:
        place = q * (len(ordered) - 1)
        below = int(place)
        above = min(below + 1, len(ordered) - 1)
        return ordered[below] + (place - below) * (ordered[above] - ordered[below])

    return at(0.025), at(0.975)


def four_texts() -> Tallies:
    # a: 3 counted, 1 match; b: 2 counted, none; c: 1 counted match and an uncounted "match";
    # d: only uncounted rows (e.g. invalid answers).
    return tally(["a", "a", "a", "b", "b", "c", "c", "d"],
                 counted=[1, 1, 1, 1, 1, 1, 0, 0], matched=[1, 0, 0, 0, 0, 1, 1, 1])


def test_tally_counts_per_text_and_an_uncounted_row_never_matches():
    tallies = four_texts()
    assert tallies.texts.tolist() == ["a", "b", "c", "d"]
    assert tallies.explanations.tolist() == [3, 2, 1, 0] and tallies.matches.tolist() == [1, 0, 1, 0]
    # Text ids are compared as text: 7 and "7" are one text.
    assert tally([7, "7"], [1, 1], [0, 1]).texts.tolist() == ["7"]


def test_shares_count_texts_with_an_explanation_and_repeat_drawn_texts():
    tallies = four_texts()
    assert text_share(tallies) == pytest.approx(2 / 3)   # a and c of a, b, c; d has nothing counted
    assert explanation_share(tallies) == pytest.approx(2 / 6)
    assert text_share(tallies, np.array([0, 0, 1, 3])) == pytest.approx(2 / 3)
    assert explanation_share(tallies, np.array([0, 0, 1, 3])) == pytest.approx(2 / 8)
    assert np.isnan(text_share(tallies, np.array([3, 3]))) and np.isnan(explanation_share(tallies, np.array([3])))


def test_rates_take_percentiles_over_the_defined_draws():
    tallies = four_texts()
    draws = [np.array([0, 0, 1, 3]), np.array([1, 1, 3, 3]), np.array([3, 3, 3, 3]), np.array([2, 2, 2, 0])]
    result = rates(tallies, draws)
    assert (result.texts, result.matching_texts, result.explanations, result.matching_explanations) == (3, 2, 6, 2)
    # Per text: 2/3, 0, undefined (only d), 1.  Per explanation: 2/8, 0/4, undefined, 4/6.
    assert result.per_text.value == pytest.approx(2 / 3)
    assert (result.per_text.low, result.per_text.high) == pytest.approx(percentiles([2 / 3, 0, 1]))
    assert result.per_explanation.value == pytest.approx(1 / 3)
    assert (result.per_explanation.low, result.per_explanation.high) == pytest.approx(percentiles([0.25, 0, 4 / 6]))


def test_two_sample_difference_pairs_the_rth_draw_of_each_set():
    a = four_texts()
    b = Tallies(np.array(["x", "y"]), np.array([2, 2]), np.array([0, 2]))
    draws_a = [np.array([0, 1, 2, 3]), np.array([2, 2, 2, 2])]   # A per text: 2/3, 1;  per explanation 2/6, 1
    draws_b = [np.array([0, 0]), np.array([1, 1])]               # B per text: 0, 1;    per explanation 0, 1
    difference = two_sample_difference(a, b, draws_a, draws_b)
    assert not difference.paired
    assert difference.per_text.value == pytest.approx(2 / 3 - 1 / 2)
    assert (difference.per_text.low, difference.per_text.high) == pytest.approx(percentiles([2 / 3, 0]))
    assert difference.per_explanation.value == pytest.approx(1 / 3 - 1 / 2)
    assert (difference.per_explanation.low, difference.per_explanation.high) == pytest.approx(percentiles([2 / 6, 0]))
    with pytest.raises(ValueError, match="2 draws of A against 1 of B"):
        two_sample_difference(a, b, draws_a, draws_b[:1])


def test_paired_difference_takes_both_shares_on_one_draw():
    a = Tallies(np.array(["p", "q", "r"]), np.array([1, 1, 1]), np.array([1, 1, 0]))
    b = Tallies(np.array(["p", "q", "r"]), np.array([1, 1, 1]), np.array([1, 0, 0]))
    draws = [np.array([0, 0, 0]), np.array([1, 1, 2]), np.array([2, 2, 2])]
    difference = paired_difference(a, b, draws)
    # A − B per draw: 1 − 1, 2/3 − 0, 0 − 0.
    assert difference.paired and difference.per_text.value == pytest.approx(1 / 3)
    assert (difference.per_text.low, difference.per_text.high) == pytest.approx(percentiles([0, 2 / 3, 0]))
    with pytest.raises(ValueError, match="same texts"):
        paired_difference(a, Tallies(np.array(["p", "q", "s"]), b.explanations, b.matches), draws)


def test_pairing_removes_what_the_texts_share():
    """Texts differ a lot from each other, and B matches one more of each text's ten explanations
    than A: the paired interval is the one gap, the two-sample one is wide."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 9, 200)
    a = Tallies(np.arange(200).astype(str), np.full(200, 10), base)
    b = Tallies(a.texts, a.explanations, base + 1)
    draws = text_resamples(200, 300, seed=1)
    paired = paired_difference(a, b, draws).per_explanation
    assert paired.value == pytest.approx(-0.1) and (paired.low, paired.high) == pytest.approx((-0.1, -0.1))
    separate = two_sample_difference(a, b, draws, text_resamples(200, 300, seed=2)).per_explanation
    assert separate.value == pytest.approx(-0.1) and separate.high - separate.low > 0.05


def test_whole_texts_are_resampled_so_clumped_matches_widen_the_interval():
    """Twenty texts of ten positions, matching all or nothing: resampling texts sees twenty units,
    resampling positions would see two hundred and a far narrower interval."""
    matched = np.repeat(np.arange(20) % 2 == 0, 10)
    by_text = tally(np.repeat(np.arange(20), 10), np.ones(200), matched)
    by_row = tally(np.arange(200), np.ones(200), matched)
    wide = rates(by_text, text_resamples(20, 500, seed=0)).per_explanation
    narrow = rates(by_row, text_resamples(200, 500, seed=0)).per_explanation
    assert wide.value == narrow.value == pytest.approx(0.5)
    assert wide.high - wide.low > 2 * (narrow.high - narrow.low)


def test_text_resamples_are_the_document_bootstrap_with_one_document_per_text():
    draws = text_resamples(7, 20, seed=3)
    assert len(draws) == 20
    # Every pass makes the same draws again (the intervals of one set pass over them twice).
    for _ in range(2):
        assert [d.tolist() for d in draws] == [d.tolist() for d in document_resamples(np.arange(7), 20, seed=3)]
