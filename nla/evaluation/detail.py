"""The detail curve: how much of the activation the first words of an explanation carry.

The AR reads only the first n tokens (or the first n sentences) of each explanation; the curve is the
FVE of those reconstructions against n. Prefixes are cut from the explanation's own characters (at
the end of its n-th token or sentence), so the prefix at full length is the explanation itself and
the curve's last point is the full round trip.
"""

from __future__ import annotations

from collections.abc import Sequence

from nla.evaluation.text import sentence_spans


def token_ends(tokenizer, text: str) -> list[int]:
    """Character index where each token of ``text`` ends (no special tokens); the last is the end
    of the text, so a prefix of all tokens is the whole text."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    ends = [int(end) for _, end in offsets]
    return ends[:-1] + [len(text)] if ends else [len(text)]


def sentence_ends(text: str) -> list[int]:
    """Character index where each sentence of ``text`` ends; the last is the end of the text."""
    ends = [end for _, end in sentence_spans(text)]
    return ends[:-1] + [len(text)] if ends else [len(text)]


def prefix(text: str, ends: Sequence[int], n: int) -> str:
    """The first ``n`` units of ``text`` (all of it when it has no more than ``n``)."""
    return text if n >= len(ends) else text[: ends[n - 1]]


def doubling_grid(longest: int) -> list[int]:
    """1, 2, 4, 8, ... below ``longest``, then ``longest`` itself: the points of the held-out curve,
    shared by every row (a row shorter than n is read whole at n)."""
    grid, n = [], 1
    while n < longest:
        grid.append(n)
        n *= 2
    return grid + [max(longest, 1)]


def spread_points(length: int, count: int) -> list[int]:
    """About ``count`` prefix lengths from 1 to ``length``, spaced geometrically (fine at the start,
    where each word adds most), always ending with ``length``: the explorer's slider stops."""
    if count < 2 or length <= 1:
        return [max(length, 1)]
    points = {round(length ** (i / (count - 1))) for i in range(count)}
    return sorted(points | {length})
