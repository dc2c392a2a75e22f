"""Claim consistency: do explanations of neighbouring positions repeat their claims, and are the
claims true of the text?

A *claim* is one sentence of an explanation (``nla.evaluation.text``) with at least one content
word. Two claims *match* when the Jaccard overlap of their content-word sets is at least
``threshold``. The *neighbours* of an explained position are the explained positions of the same
text within ``window`` ranks of it on either side (with every token explained, the ``2 * window``
adjacent tokens). A claim's *recurrence* is the share of its position's neighbours whose
explanation holds a matching claim; it is *recurring* when that share is at least ``recurring_at``,
and undefined for a position without neighbours.

Recurrence alone rewards collapse: a claim the AV makes whatever the text (an opening clause it
writes every time) recurs at every neighbour. Its *control* is the same share over the positions of
the other documents: what the recurrence would be if a position's neighbours were positions of
unrelated texts. All of those positions rather than a sample of as many as the neighbours: the
sample's expected value without its noise, and no seed. *Excess recurrence* = recurrence − control:
how much more a claim recurs where the text is the same than where it is not; a constant claim has
recurrence 1, control 1, excess 0. Two diversity figures show collapse directly: the mean
content-word Jaccard overlap between explanations of different documents (1: every document gets
the same words) and the share of documents holding the most widespread claim.

A claim is *specific* when it quotes text or names the final, last, current or next token, word or
character; otherwise *thematic* (topic, genre, register). With a judge provider, each claim is put
to the judge beside the text read so far, and *supported* is its YES or NO.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nla.evaluation.bootstrap import Interval, bootstrap_interval
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
    control: float = float("nan")
    """The recurrence's control (module docstring); undefined with a single document."""
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


def matching_rows(claims: list[Claim], rows: int, threshold: float) -> np.ndarray:
    """``[claims, rows]`` bool: whether row r's explanation holds a claim matching claim i (its own row
    included). Vectorised over the distinct word sets (a collapsed AV repeats few), since every claim
    is compared with every other: Jaccard = shared / (|a| + |b| − shared), shared from a product of
    float32 word-indicator matrices (word counts are exact there), divided in float64 so the threshold
    compares exactly as ``overlap`` does."""
    sets = sorted({c.words for c in claims}, key=sorted)
    index = {words: i for i, words in enumerate(sets)}
    vocabulary = {word: j for j, word in enumerate(sorted(set().union(*sets)))}
    indicator = np.zeros((len(sets), len(vocabulary)), dtype=np.float32)
    holds = np.zeros((len(sets), rows), dtype=np.float32)
    for i, words in enumerate(sets):
        indicator[i, [vocabulary[word] for word in words]] = 1
    for claim in claims:
        holds[index[claim.words], claim.row] = 1
    size = indicator.sum(axis=1, dtype=np.float64)
    found = np.zeros((len(sets), rows), dtype=bool)
    for start in range(0, len(sets), 1024):  # chunks bound the memory of the set-by-set products
        shared = (indicator[start : start + 1024] @ indicator.T).astype(np.float64)
        match = shared / (size[start : start + 1024, None] + size[None, :] - shared) >= threshold
        found[start : start + 1024] = match.astype(np.float32) @ holds > 0
    return found[[index[c.words] for c in claims]]


def score_control(claims: list[Claim], matches: np.ndarray, documents: Sequence) -> None:
    """Set each claim's ``control`` in place: the share of the other documents' rows (with or without
    an answer, as neighbours count) whose explanation holds a match (``matches``, ``matching_rows``)."""
    documents = np.asarray(documents)
    for claim, found in zip(claims, matches):
        other = documents != documents[claim.row]
        if other.any():
            claim.control = float(found[other].mean())


def _document_weights(documents: Sequence) -> tuple[np.ndarray, int, Callable[[np.ndarray | slice], np.ndarray]]:
    """Document index of each row, the document count, and ``weights(rows)``: how many times a draw
    holds each document (a draw holds all rows of every document it picks; 1 each on all rows)."""
    names, of_row = np.unique(np.asarray(documents), return_inverse=True)
    sizes = np.bincount(of_row, minlength=len(names))
    return of_row, len(names), lambda rows: np.bincount(of_row[rows], minlength=len(names)) / sizes


def diversity(claims: list[Claim], matches: np.ndarray, documents: Sequence, draws) -> dict:
    """How alike the explanations of different documents are: their mean content-word Jaccard overlap
    (each explanation's words: those of its claims; pairs of rows with claims from two documents),
    and the most widespread claim with the share of the documents holding a match of it. An AV that
    writes the same thing everywhere has overlap 1 and a claim in every document."""
    if not claims:
        return {}
    of_row, count, weights = _document_weights(documents)
    words: dict[int, set[str]] = defaultdict(set)
    for claim in claims:
        words[claim.row].update(claim.words)
    rows = sorted(words)
    vocabulary = {word: j for j, word in enumerate(sorted(set().union(*words.values())))}
    indicator = np.zeros((len(rows), len(vocabulary)))
    for i, row in enumerate(rows):
        indicator[i, [vocabulary[word] for word in words[row]]] = 1
    shared = indicator @ indicator.T
    size = indicator.sum(axis=1)
    jaccard = shared / (size[:, None] + size[None, :] - shared)
    # Per pair of documents: the sum of their rows' overlaps and the number of row pairs.
    member = np.zeros((len(rows), count))
    member[np.arange(len(rows)), of_row[rows]] = 1
    overlaps, pairs = member.T @ jaccard @ member, np.outer(member.sum(axis=0), member.sum(axis=0))
    np.fill_diagonal(overlaps, 0)
    np.fill_diagonal(pairs, 0)

    def overlap_of(draw) -> float:
        weight = weights(draw)
        total = weight @ pairs @ weight
        return float(weight @ overlaps @ weight / total) if total else float("nan")

    # Documents holding a match of each claim; the widest is the first claim of most documents.
    held = (matches.astype(float) @ np.eye(count)[of_row]) > 0
    widest = int(np.argmax(held.sum(axis=1)))

    def share_holding(draw) -> float:
        weight = weights(draw)
        return float(weight @ held[widest] / weight.sum())

    return {"cross_document_overlap": bootstrap_interval(overlap_of, draws),
            "widest_claim": {"claim": claims[widest].text, "documents": bootstrap_interval(share_holding, draws)}}


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


def _mean(claims: list[Claim], rows: int, draws, value: Callable[[Claim], float]) -> Interval:
    """Mean of ``value`` over the claims, with an interval over the draws (which resample rows)."""
    at = [c.row for c in claims]
    total = np.bincount(at, weights=[value(c) for c in claims], minlength=rows)
    count = np.bincount(at, minlength=rows)
    return bootstrap_interval(lambda index: float(total[index].sum() / count[index].sum())
                              if count[index].sum() else float("nan"), draws)


def _recurrence(scored: list[Claim], rows: int, draws) -> dict:
    """Mean recurrence of the claims with neighbours and, with another document, its control and the
    paired excess (recurrence − control, on the same draws)."""
    if not scored:
        return {"claims": 0}
    result = {"claims": len(scored), "mean": _mean(scored, rows, draws, lambda c: c.recurrence)}
    # Every claim has a control as soon as there are two documents, or none has.
    if np.isfinite(scored[0].control):
        result["control"] = _mean(scored, rows, draws, lambda c: c.control)
        result["excess"] = _mean(scored, rows, draws, lambda c: c.recurrence - c.control)
    return result


def summary(claims: list[Claim], rows: int, draws, recurring_at: float) -> dict:
    """The headline figures: claims per explanation, mean recurrence beside its control, share
    recurring and, judged, the supported rate of recurring vs single and thematic vs specific claims."""
    scored = [c for c in claims if np.isfinite(c.recurrence)]

    def recurring(c: Claim) -> bool:
        return c.recurrence >= recurring_at

    result = {
        "claims": len(claims),
        "claims_per_explanation": len(claims) / max(rows, 1),
        "with_neighbours": len(scored),
        "recurrence": _recurrence(scored, rows, draws),
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

