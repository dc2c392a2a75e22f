"""An offline teacher that builds its features from the text itself: no model, no network, deterministic.

It cannot know what a model is thinking, but it names the things a real teacher would name from
surface evidence (topic words, document kind, register, open structures, the role of the final
token), so the whole pipeline runs without a network and the AV still learns English descriptions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence

from nla.data.teachers.base import Summary, Teacher, TeacherRequest
from nla.core.errors import ConfigError

STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours out over own same she
    should so some such than that the their theirs them then there these they this those through to
    too under until up very was we were what when where which while who whom why will with would you
    your yours yourself one two said says like get got make made may might must shall much many well
    """.split()
)

FUNCTION_WORDS = {
    "a noun phrase is expected next": "a an the this that these those my your his her its our their",
    "its object, usually a noun phrase, is expected next": "of in on at by for with from into about to",
    "another clause or list item is expected next": "and or but nor so yet because while although",
    "a verb is likely next": "i you he she it we they who which",
    "a verb, adjective or noun complement is expected next": "is are was were be been am will can would",
}
_ROLE_OF_FUNCTION_WORD = {word: role for role, words in FUNCTION_WORDS.items() for word in words.split()}

PUNCTUATION = {
    ".!?": ("a sentence-ending mark", "a new sentence, likely capitalised, or a line break comes next"),
    ",": ("a comma", "the clause goes on with a further phrase or list item"),
    ";": ("a semicolon", "a second, closely related clause follows"),
    ":": ("a colon", "an explanation, example, list or quotation is introduced next"),
    "([{": ("an opening bracket", "bracketed material follows and must be closed later"),
    ")]}": ("a closing bracket", "the main sentence resumes, often with punctuation"),
    "\"'“”‘’«»": ("a quotation mark", "a quotation opens or closes, shifting between quoted and plain text"),
    "-–—": ("a dash", "an aside, a range or a compound word continues"),
    "%": ("a percent sign", "the quantity is complete, so what it measures or punctuation comes next"),
    "$€£¥": ("a currency sign", "an amount written in digits comes next"),
}

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]")
_CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import|#include|function |return\b|public |var |let |const )"
)
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+")


STYLES = ("full", "brief")
"""``full``: three sentences of about 80 words, the length of a real teacher's answer. ``brief``: the
same three features in about 25 words, for CPU runs where every generated token costs; it ends with
the text's last words verbatim, so an AR prompt that ends with the explanation reads the same final
token in a similar context as the target did."""


class ExtractiveTeacher(Teacher):
    """Features from word counts and surface cues. Same request, same features, on every machine."""

    name = "extractive"

    def __init__(self, style: str = "full") -> None:
        if style not in STYLES:
            raise ConfigError("teacher.model", f"the extractive teacher's styles are {' and '.join(STYLES)}, got '{style}'")
        self.style = style
        self.model = "extractive-v1" if style == "full" else f"extractive-{style}-v2"

    def stream(self, requests: Sequence[TeacherRequest]) -> Iterator[tuple[int, Summary | None]]:
        write = describe if self.style == "full" else describe_briefly
        for index, request in enumerate(requests):
            yield index, Summary(write(request.context, request.token))


def describe(context: str, token: str) -> list[str]:
    """Three features: document kind and topic, the open structure at the end, the final token's role."""
    return [_topic_feature(context), _structure_feature(context), _token_feature(context, token)]


BRIEF_TAIL_WORDS = 6


def describe_briefly(context: str, token: str, tail_words: int = BRIEF_TAIL_WORDS) -> list[str]:
    """The features of ``describe`` in a few words each: topic and kind, the final token's role, and
    last the text's final words as they stand (no quotes or full stop after them)."""
    words = topic_words(context, k=3)
    about = f"About {', '.join(words)}; " if words else ""
    role, _ = token_role(context, token)
    return [f"{about}{document_kind(context)}.", f"Final token {json.dumps(token, ensure_ascii=False)}: {role}.",
            f"Ends with: {' '.join(context.split()[-tail_words:])}"]


def topic_words(text: str, k: int = 4) -> list[str]:
    """The ``k`` most frequent content words; ties go to the alphabetically first word."""
    counts = Counter(w for w in (m.lower() for m in _WORD.findall(text)) if len(w) > 2 and w not in STOP_WORDS)
    return [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]]


def document_kind(text: str) -> str:
    lines = text.splitlines() or [""]
    chars = max(len(text), 1)
    words = [w.lower() for w in _WORD.findall(text)]
    # Braces, assignments and line-final semicolons are rare in prose; a semicolon inside a line is not.
    symbols = sum(text.count(c) for c in "{}=") + sum(line.rstrip().endswith(";") for line in lines)
    if sum(bool(_CODE_LINE.match(line)) for line in lines) >= 2 or symbols / chars > 0.02:
        return "source code or markup"
    if sum(text.count(c) for c in "\"“”") >= 4:
        return "narrative prose with dialogue"
    if sum(bool(_LIST_LINE.match(line)) for line in lines) >= 3:
        return "a list or set of structured notes"
    if sum(c.isdigit() for c in text) / chars > 0.06:
        return "a factual or technical text dense with figures"
    if text.count("?") >= 2:
        return "a conversational exchange with questions"
    if words and sum(w in ("i", "my", "me") for w in words) / len(words) > 0.03:
        return "a personal first-person account"
    return "expository prose"


def register(text: str) -> str:
    words = _WORD.findall(text)
    informal = sum("'" in w for w in words) + text.count("!")
    if words and informal / len(words) > 0.02:
        return "informal, conversational"
    if words and sum(map(len, words)) / len(words) >= 5.5:
        return "formal, technical"
    return "plain, neutral"


def _topic_feature(context: str) -> str:
    kind, tone = document_kind(context), register(context)
    words = topic_words(context)
    if not words:
        return f"The text reads as {kind} in a {tone} register; it is too short to name a subject, so form dominates."
    listed = ", ".join(words[:-1]) + (" and " if len(words) > 1 else "") + words[-1]
    return f"The text reads as {kind} in a {tone} register about {listed}; what follows should stay on these topics."


def _open_structures(context: str) -> list[str]:
    found = []
    if context.count('"') % 2 or context.count("“") > context.count("”"):
        found.append("a quotation is still open")
    if sum(context.count(c) for c in "([{") > sum(context.count(c) for c in ")]}"):
        found.append("a bracket is still open")
    return found


def _structure_feature(context: str) -> str:
    tail = " ".join(context.split()[-6:])
    stripped = context.rstrip()
    if context.endswith("\n"):
        state = "a new line has just begun, so a heading, list item or fresh paragraph may start"
    elif stripped.endswith((".", "!", "?")):
        state = "the last sentence is complete, so the next one can turn to a new point"
    else:
        state = "the current sentence is unfinished, so the next words must continue it grammatically"
    opened = _open_structures(context)
    extra = f"; {' and '.join(opened)}" if opened else ""
    return f"The text ends with “{tail}”: {state}{extra}."


def token_role(context: str, token: str) -> tuple[str, str]:
    """(what the final token is, what it makes likely next)."""
    core = token.strip()
    if not core:
        if "\n" in token:
            return "a line break", "a new line, paragraph or list item starts next"
        return "whitespace", "a word is likely to follow"
    if re.fullmatch(r"[\d.,:/%+-]*\d[\d.,:/%+-]*", core):
        return "part of a number", "more digits, a unit or punctuation closing the figure is likely next"
    if not any(c.isalnum() for c in core):
        for marks, (role, constraint) in PUNCTUATION.items():
            if core[-1] in marks:
                return role, constraint
        return "a symbol", "it shapes the formatting of what follows"
    before = context[: len(context) - len(token)] if context.endswith(token) else context[:-1]
    word_start = token[0].isspace() or not before or not before[-1].isalnum()
    if word_start:
        function_role = _ROLE_OF_FUNCTION_WORD.get(core.lower())
        if function_role is not None:
            return f"the function word “{core}”", function_role
        if core[0].isupper():
            return "the start of a capitalised word", "a name or the rest of this word is likely next"
        return "the start of a word", "the word may be completed by another piece or followed by the next word"
    words = re.findall(r"[\w'-]+$", context)
    whole = words[0] if words else core
    return f"the continuation of the word “{whole}”", "the word is probably complete; a space or punctuation follows"


def _token_feature(context: str, token: str) -> str:
    role, constraint = token_role(context, token)
    return f"The final token {json.dumps(token, ensure_ascii=False)} is {role}; {constraint}."
