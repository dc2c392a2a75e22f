"""Claim consistency: do explanations of neighbouring positions repeat their claims, and are the
claims true of the text?

A *claim* is one sentence of an explanation (``nla.evaluation.text``) with at least one content
word. Two claims *match* when the Jaccard overlap of their content-word sets is at least
``threshold``. The *neighbours* of an explained position are the explained positions of the same
text within ``window`` ranks of it on either side (with every token explained, the ``2 * window``
adjacent tokens). A claim's *recurrence* is the share of its position's neighbours whose
explanation holds a matching claim; it is *recurring* when that share is at least ``recurring_at``,
and undefined for a position without neighbours.

A claim is *specific* when it quotes text or names the final, last, current or next token, word or
character; otherwise *thematic* (topic, genre, register). With a judge provider, each claim is put
to the judge beside the text read so far, and *supported* is its YES or NO.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nla.evaluation.bootstrap import bootstrap_interval
from nla.evaluation.text import content_words, sentences

_SPECIFIC = re.compile(r"[\"“”‘]|(?<!\w)'\S|\b(final|last|current|next|this)\s+(token|word|character|char)s?\b",
                       re.I)

JUDGE = """\
Below is the beginning of a text, cut off where a language model has just read it, and one claim \
about what that model is thinking at that moment.

<text>
{context}
</text>

<claim>{claim}</claim>

Does the text support the claim (is it a fair reading of what the text is about, how it is written, \
or what must come next)? Answer with one word: YES or NO."""

_VERDICT = re.compile(r"\b(YES|NO)\b", re.I)


@dataclass
class Claim:
    row: int
    """The explanation (held-out row) it comes from."""
    text: str
    words: frozenset[str]
    """Its content words."""
    specific: bool
    recurrence: float = float("nan")
    supported: bool | None = None
    """The judge's verdict; None without a judge or when its answer had no YES or NO."""


def split_claims(row: int, explanation: str | None) -> list[Claim]:
    found = []
    for sentence in sentences(explanation or ""):
        words = content_words(sentence)
        if words:
            found.append(Claim(row, sentence, frozenset(words), bool(_SPECIFIC.search(sentence))))
    return found


def overlap(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard overlap of two word sets: 1 same words, 0 none shared."""
    return len(a & b) / len(a | b) if a or b else 0.0


def neighbours(documents: Sequence, positions: Sequence[int], window: int) -> list[list[int]]:
    """For each row, the rows of the same document within ``window`` ranks of it (by position)."""
    by_document: dict = defaultdict(list)
    for row, (document, position) in enumerate(zip(documents, positions)):
        by_document[document].append((position, row))
    result: list[list[int]] = [[] for _ in positions]
    for members in by_document.values():
        ordered = [row for _, row in sorted(members)]
        for rank, row in enumerate(ordered):
            result[row] = [other for other in ordered[max(0, rank - window) : rank + window + 1] if other != row]
    return result


def score_recurrence(claims: list[Claim], around: list[list[int]], threshold: float) -> None:
    """Set each claim's ``recurrence`` (see the module docstring) in place."""
    by_row: dict[int, list[Claim]] = defaultdict(list)
    for claim in claims:
        by_row[claim.row].append(claim)
    for claim in claims:
        others = around[claim.row]
        if others:
            hits = sum(any(overlap(claim.words, other.words) >= threshold for other in by_row[j]) for j in others)
            claim.recurrence = hits / len(others)


def verdict(answer: str | None) -> bool | None:
    found = _VERDICT.search(answer or "")
    return None if found is None else found.group(1).upper() == "YES"


def judge_claims(claims: list[Claim], contexts: Sequence[str], teacher) -> None:
    """Ask ``teacher`` (any provider with ``answer``) whether each claim's text supports it; sets
    ``supported`` in place."""
    answers = teacher.answer([JUDGE.format(context=contexts[c.row], claim=c.text) for c in claims])
    for claim, answer in zip(claims, answers):
        claim.supported = verdict(answer)


def _rate(claims: list[Claim], rows: int, draws, numerator, denominator) -> dict:
    """Share of the claims meeting ``denominator`` that also meet ``numerator``, with an interval
    over the draws (which resample rows, hence documents)."""
    top = np.bincount([c.row for c in claims if denominator(c) and numerator(c)], minlength=rows).astype(float)
    bottom = np.bincount([c.row for c in claims if denominator(c)], minlength=rows).astype(float)
    if not bottom.sum():
        return {"claims": 0}

    def share(index) -> float:
        total = bottom[index].sum()
        return float(top[index].sum() / total) if total else float("nan")

    return {"claims": int(bottom.sum()), "rate": bootstrap_interval(share, draws)}


def summary(claims: list[Claim], rows: int, draws, recurring_at: float) -> dict:
    """The headline figures: claims per explanation, mean recurrence, share recurring and, judged,
    the supported rate of recurring vs single and thematic vs specific claims."""
    scored = [c for c in claims if np.isfinite(c.recurrence)]

    def recurring(c: Claim) -> bool:
        return c.recurrence >= recurring_at

    result = {
        "claims": len(claims),
        "claims_per_explanation": len(claims) / max(rows, 1),
        "with_neighbours": len(scored),
        "mean_recurrence": float(np.mean([c.recurrence for c in scored])) if scored else None,
        "recurring": _rate(scored, rows, draws, recurring, lambda c: True),
        "specific": _rate(claims, rows, draws, lambda c: c.specific, lambda c: True),
    }
    judged = [c for c in claims if c.supported is not None]
    if judged:
        supported = lambda c: bool(c.supported)  # noqa: E731
        result["supported"] = {
            "all": _rate(judged, rows, draws, supported, lambda c: True),
            "recurring": _rate(judged, rows, draws, supported, lambda c: np.isfinite(c.recurrence) and recurring(c)),
            "single": _rate(judged, rows, draws, supported, lambda c: np.isfinite(c.recurrence) and not recurring(c)),
            "thematic": _rate(judged, rows, draws, supported, lambda c: not c.specific),
            "specific": _rate(judged, rows, draws, supported, lambda c: c.specific),
        }
    return result

