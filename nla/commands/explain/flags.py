"""A cheap check of an explanation's claim about the final token against the real token.

An explanation *claims a final token* when it names the final, last or current token or word and
then, within 40 characters on the same line, quotes something: ``"..."``, ``“...”``, ``‘...’`` or
``'...'`` (a single quote only when no letter touches it from outside, so "token's" is no quote).
JSON escapes inside the quote are read (``"\\n"`` is a line break). The claim *agrees* with the real
token when, with white space trimmed and case ignored, the quote equals the token, ends with it
(a longer span ending at the token), or equals the whole word the token ends; a quote of white space
agrees with a white-space token. Otherwise it *contradicts*, and ``final_token_contradiction``
returns the quoted text.
"""

from __future__ import annotations

import json
import re

_QUOTE = r"\"([^\"\n]{1,40})\"|“([^”\n]{1,40})”|‘([^’\n]{1,40})’|(?<![A-Za-z])'([^'\n]{1,40})'(?![A-Za-z])"
_CLAIM = re.compile(r"\b(?:final|last|current)\s+(?:token|word)s?\b[^\n\"“‘']{0,40}?(?:" + _QUOTE + ")", re.I)
_WORD_END = re.compile(r"[\w'’-]*$")


def _unescaped(quoted: str) -> str:
    if "\\" not in quoted:
        return quoted
    try:
        return json.loads(f'"{quoted}"')
    except ValueError:
        return quoted


def claimed_final_token(explanation: str) -> str | None:
    """The first quote the explanation gives as its final token or word; None when it quotes none."""
    found = _CLAIM.search(explanation)
    if found is None:
        return None
    return _unescaped(next(group for group in found.groups() if group is not None))


def final_token_contradiction(explanation: str, token: str, context: str) -> str | None:
    """The quoted final token when it contradicts ``token``, the real token that ``context`` (the
    text read through it) ends with; None when the explanation agrees or makes no such claim."""
    claim = claimed_final_token(explanation)
    if claim is None:
        return None
    quoted, real = claim.strip().casefold(), token.strip().casefold()
    word = _WORD_END.search(context.rstrip() if not real else context).group(0).casefold()
    if not real:
        return None if not quoted else claim
    if quoted == real or quoted.endswith(real) or (word and quoted == word):
        return None
    return claim
