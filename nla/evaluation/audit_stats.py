"""How often an audit's explanations say something, with document-level intervals: ``nla audit query``.

The rows of an audit (``nla.data.audit_table``) are explained positions, and positions of one text
are correlated, so the unit of resampling is the *text*: rows are first tallied per text (how many of
its explanations are counted, how many of those match), and every draw resamples texts with
replacement, each with all of its rows (``nla.evaluation.bootstrap``'s document-level bootstrap).
Two shares are reported for a set of texts:

- *per text*: the share of texts, among those with a counted explanation, holding at least one
  matching explanation (the paper's count of evaluation awareness is per transcript);
- *per explanation*: the share of counted explanations that match.

A draw where a share has no denominator (no text with a counted explanation) leaves it undefined
(NaN), and ``bootstrap_interval`` leaves such draws out. The difference between two sets A − B is
*two-sample* when their texts are unrelated (A's and B's texts resampled independently, each draw
pairing the r-th draw of each) or *paired* when both hold the same texts (the same transcripts
under two conditions): texts are resampled once and both shares taken on the same draw, so what the
texts share cancels out of the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from nla.evaluation.bootstrap import ALL_ROWS, Interval, bootstrap_interval


@dataclass
class Tallies:
    """One set of rows, per text."""

    texts: np.ndarray
    """The text ids, distinct and sorted."""
    explanations: np.ndarray
    """How many of each text's explanations are counted."""
    matches: np.ndarray
    """How many of those match."""


def tally(text_ids, counted, matched) -> Tallies:
    """Per-text counts of rows: ``counted`` (bool per row) says which explanations count, ``matched``
    (bool per row) which match; a matched row that is not counted is not a match. A text all of whose
    rows are uncounted stays, with 0 explanations (it belongs to the set, so a paired comparison still
    finds it, but it is in no share's denominator)."""
    texts, of_row = np.unique(np.asarray(text_ids, dtype=object).astype(str), return_inverse=True)
    counted = np.asarray(counted, dtype=bool)
    hits = counted & np.asarray(matched, dtype=bool)
    return Tallies(texts, np.bincount(of_row, weights=counted, minlength=len(texts)).astype(np.int64),
                   np.bincount(of_row, weights=hits, minlength=len(texts)).astype(np.int64))


def _ratio(top: float, bottom: float) -> float:
    return float(top / bottom) if bottom else float("nan")


def text_share(tallies: Tallies, units: np.ndarray | slice = ALL_ROWS) -> float:
    """Share of the texts ``units`` (indices into ``tallies``, repeats counted) with a counted
    explanation that hold a matching one."""
    explained = tallies.explanations[units] > 0
    return _ratio(np.count_nonzero(tallies.matches[units] > 0), np.count_nonzero(explained))


def explanation_share(tallies: Tallies, units: np.ndarray | slice = ALL_ROWS) -> float:
    """Share of the counted explanations of the texts ``units`` that match."""
    return _ratio(tallies.matches[units].sum(), tallies.explanations[units].sum())


class Draws:
    """A sequence of draws made afresh by ``make()`` on each pass: a thousand draws of an audit with
    many texts are never all held at once, and every pass sees the same draws."""

    def __init__(self, make: Callable[[], Iterator[np.ndarray]], length: int) -> None:
        self.make, self.length = make, length

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.make()

    def __len__(self) -> int:
        return self.length


Resamples = Sequence[np.ndarray] | Draws
"""Draws of texts (index arrays into a ``Tallies``) that can be passed over more than once."""


def text_resamples(count: int, resamples: int, seed: int) -> Draws:
    """``resamples`` draws of ``count`` texts with replacement, as indices: the same draws as
    ``bootstrap.document_resamples(np.arange(count), resamples, seed)`` (each text one document),
    without building a row list per text."""

    def make() -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed)
        return (rng.integers(0, count, count) for _ in range(resamples))

    return Draws(make, resamples)


@dataclass
class Rates:
    """How often the explanations of one set of texts match."""

    texts: int
    """Texts with at least one counted explanation."""
    matching_texts: int
    """Of those, texts with at least one matching explanation."""
    explanations: int
    """Counted explanations."""
    matching_explanations: int
    """Of those, explanations that match."""
    per_text: Interval
    """``matching_texts / texts``, with its 95% document-level interval."""
    per_explanation: Interval
    """``matching_explanations / explanations``, with its 95% document-level interval."""


def rates(tallies: Tallies, draws: Resamples) -> Rates:
    """Both shares of ``tallies`` with intervals over ``draws`` (index arrays into its texts)."""
    return Rates(
        texts=int(np.count_nonzero(tallies.explanations)),
        matching_texts=int(np.count_nonzero(tallies.matches)),
        explanations=int(tallies.explanations.sum()),
        matching_explanations=int(tallies.matches.sum()),
        per_text=bootstrap_interval(lambda units: text_share(tallies, units), draws),
        per_explanation=bootstrap_interval(lambda units: explanation_share(tallies, units), draws),
    )


@dataclass
class Difference:
    """A − B of both shares."""

    per_text: Interval
    """Difference of the per-text shares, with its 95% interval."""
    per_explanation: Interval
    """Difference of the per-explanation shares, with its 95% interval."""
    paired: bool
    """The draws resampled the texts both sets hold once (else each set's texts independently)."""


def two_sample_difference(a: Tallies, b: Tallies, draws_a: Resamples,
                          draws_b: Resamples) -> Difference:
    """A − B for unrelated texts: the r-th draw of each set's own texts (``draws_a``, ``draws_b``,
    drawn independently, as many of each) gives the r-th difference."""
    if len(draws_a) != len(draws_b):
        raise ValueError(f"{len(draws_a)} draws of A against {len(draws_b)} of B")
    # One draw of the pair is A's units then B's, B's offset by A's count; ALL_ROWS is both sets whole.
    offset = len(a.texts)
    draws = Draws(lambda: (np.concatenate([units_a, units_b + offset]) for units_a, units_b in zip(draws_a, draws_b)),
                  len(draws_a))

    def split(units):
        return (ALL_ROWS, ALL_ROWS) if isinstance(units, slice) else (units[units < offset], units[units >= offset] - offset)

    def difference(share):
        return lambda units: share(a, split(units)[0]) - share(b, split(units)[1])

    return Difference(bootstrap_interval(difference(text_share), draws),
                      bootstrap_interval(difference(explanation_share), draws), paired=False)


def paired_difference(a: Tallies, b: Tallies, draws: Resamples) -> Difference:
    """A − B for the same texts (``a.texts`` equal to ``b.texts``), both shares taken on each draw of
    those texts."""
    if not np.array_equal(a.texts, b.texts):
        raise ValueError("a paired difference needs the same texts in both sets")

    def difference(share):
        return lambda units: share(a, units) - share(b, units)

    return Difference(bootstrap_interval(difference(text_share), draws),
                      bootstrap_interval(difference(explanation_share), draws), paired=True)
