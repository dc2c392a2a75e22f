"""Explanations as units of text: sentences (the claims and the detail curve's steps), words, content words.

A sentence ends at a line break (teacher features and most AV answers put one feature per line) or
at ``.``, ``!`` or ``?`` followed by white space. A list marker at the start of a line ("1.", "-")
belongs to its line and never ends a sentence by itself.
"""

from __future__ import annotations

import re

from nla.data.teachers.extractive import STOP_WORDS

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+|\n+")
_LIST_MARKER = re.compile(r"^\s*(?:\(?\d{1,2}[.):]|[-*•])\s+")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’-]*")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` character spans of the sentences of ``text``, white space outside; the last
    span ends at the end of the text's last non-space character."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        # "1. The text..." : the marker's full stop is no sentence end.
        if _LIST_MARKER.fullmatch(text[start : match.end()]) or not text[start : match.start()].strip():
            continue
        spans.append((start, match.start()))
        start = match.end()
    if text[start:].strip():
        spans.append((start, len(text.rstrip())))
    return [(begin + len(text[begin:end]) - len(text[begin:end].lstrip()), end) for begin, end in spans]


def sentences(text: str) -> list[str]:
    return [text[start:end] for start, end in sentence_spans(text)]


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def content_words(text: str) -> set[str]:
    """Lower-cased words of three or more letters that are not stop words, with a plural ``s`` dropped
    (``waves`` and ``wave`` count as one word)."""
    found = set()
    for word in words(text.lower()):
        word = word.strip("'’-")
        if len(word) < 3 or word in STOP_WORDS or word.isdigit():
            continue
        found.add(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)
    return found
