"""Which tokens of a text ``nla audit`` explains: the text in the target's tokens, each token with the
chat role of the message it belongs to, and the position rule.

A plain text is tokenized as ``nla explain`` reads one (``nla.models.target.tokenize``: the
tokenizer's default special tokens, so a BOS where the model has one). A chat transcript is rendered
with the target's own chat template and the rendering is tokenized without adding special tokens (the
template writes the BOS itself; adding one would double it). A token's role is that of the message
whose content its characters overlap; the template's own tokens (turn headers, end-of-turn) have none.

The rule, applied in this order: never a special token nor index 0 (the BOS, or a first token with
no context to explain); only tokens of ``roles``; only tokens whose decoded text matches ``pattern``
(``re.search``); every ``every``-th of what is left (the ``every``-th, ``2 every``-th, ...); at most
``max_per_text`` of those, evenly spread (``nla.data.corpus.spread_indices``). Every step is a pure
function of the tokens, so the positions never depend on which process reads the text, or when.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nla.core.errors import ConfigError
from nla.data.corpus import spread_indices
from nla.models.target import tokenize


@dataclass
class TextTokens:
    """One text in the target's tokens."""

    text: str
    """What the target reads: the text, or the transcript rendered with the chat template."""
    ids: list[int]
    """Token ids."""
    tokens: list[str]
    """Each token decoded on its own."""
    special: list[bool]
    """True where the token is a special token."""
    ends: list[int]
    """Character index in ``text`` where each token ends (0 for added special tokens)."""
    roles: list[str | None]
    """The chat role of each token's message (None: a plain text, or the template's own tokens)."""

    def context(self, position: int, chars: int) -> str:
        """The last ``chars`` characters the target has read once it consumed the token at ``position``."""
        end = max(self.ends[: position + 1])
        return self.text[max(0, end - chars):end]

    def cut(self, limit: int) -> TextTokens:
        """The first ``limit`` tokens."""
        return TextTokens(self.text, self.ids[:limit], self.tokens[:limit], self.special[:limit], self.ends[:limit],
                          self.roles[:limit])


def plain_tokens(tokenizer, text: str) -> TextTokens:
    read = tokenize(tokenizer, text)
    return TextTokens(text, read.ids, read.tokens, read.special, read.ends, [None] * len(read.ids))


def _content_spans(rendered: str, messages: tuple[tuple[str, str], ...], row: int) -> list[tuple[int, int, str]]:
    """(start, end, role) of each message's content in the rendered transcript, found in order."""
    spans, cursor = [], 0
    for number, (role, content) in enumerate(messages):
        # Some templates trim the content they write (Llama 3's); empty content has no tokens to map.
        for written in (content, content.strip()):
            at = rendered.find(written, cursor)
            if at >= 0:
                break
        else:
            raise ConfigError("messages_column", f"row {row}: the target's chat template rewrites message {number} "
                              f"({role}), so its tokens cannot be given a role; audit the rendered texts with "
                              "--text_column instead")
        spans.append((at, at + len(written), role))
        cursor = at + len(written)
    return spans


def chat_tokens(tokenizer, messages: tuple[tuple[str, str], ...], row: int) -> TextTokens:
    """A transcript rendered with the tokenizer's chat template, each token with its message's role."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("messages_column", "the target's tokenizer has no chat template to render transcripts "
                          "with; give plain texts (--text_column)")
    try:
        rendered = tokenizer.apply_chat_template([{"role": role, "content": content} for role, content in messages],
                                                 tokenize=False)
    except Exception as error:  # jinja's TemplateError and the templates' own raise_exception
        raise ConfigError("messages_column", f"row {row}: the target's chat template refuses this transcript "
                          f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
    spans = _content_spans(rendered, messages, row)
    encoded = tokenizer(rendered, add_special_tokens=False, return_special_tokens_mask=True,
                        return_offsets_mapping=True)
    ids = encoded["input_ids"]
    special = [bool(s) or i in tokenizer.all_special_ids for s, i in zip(encoded["special_tokens_mask"], ids)]
    roles = []
    for (start, end), is_special in zip(encoded["offset_mapping"], special):
        role = next((r for s, e, r in spans if start < e and end > s), None)
        roles.append(None if is_special else role)
    tokens = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    return TextTokens(rendered, ids, tokens, special, [int(end) for _, end in encoded["offset_mapping"]], roles)


@dataclass(frozen=True)
class PositionRule:
    """The tokens of each text to explain."""

    every: int = 1
    """Keep every ``every``-th of the tokens the other filters leave (1: all of them)."""
    roles: tuple[str, ...] | None = None
    """Only tokens of messages with these roles (chat transcripts)."""
    pattern: str | None = None
    """Only tokens whose decoded text matches this regular expression (``re.search``)."""
    max_per_text: int | None = None
    """At most this many positions per text, evenly spread over the kept ones."""

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError("every", f"is {self.every}; it must be at least 1")
        if self.max_per_text is not None and self.max_per_text < 1:
            raise ConfigError("max_per_text", f"is {self.max_per_text}; it must be at least 1, or left out")
        if self.roles is not None and not self.roles:
            raise ConfigError("roles", "is empty; name at least one role, or leave it out")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as error:
                raise ConfigError("pattern", f"{self.pattern!r} is not a regular expression ({error})") from None


def choose(tokens: list[str], special: list[bool], roles: list[str | None], rule: PositionRule) -> list[int]:
    """The positions ``rule`` keeps of one text's tokens, ascending."""
    pattern = re.compile(rule.pattern) if rule.pattern is not None else None
    kept = [i for i in range(1, len(tokens)) if not special[i]
            and (rule.roles is None or roles[i] in rule.roles)
            and (pattern is None or pattern.search(tokens[i]))]
    kept = kept[rule.every - 1::rule.every]
    if rule.max_per_text is not None:
        kept = [kept[i] for i in sorted(spread_indices(len(kept), rule.max_per_text))]
    return kept
