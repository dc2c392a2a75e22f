"""The marker token of the verbalizer's prompt: the one position whose input embedding is replaced by
the activation vector.

A marker is chosen once per tokenizer, by these rules in order (the first that succeeds wins):

1. ``explicit``: the character the user set (``verbalizer.marker``). It must be one token.
2. ``cjk-range``: the first code point in U+3200-U+33FF that encodes to one token. This is the rule
   the released checkpoints were made with, so our markers match theirs on Qwen, Gemma and Llama.
3. ``fallback-symbol``: the first of ``FALLBACK_SYMBOLS`` that is one token. Tokenizers such as
   SmolLM2's have no single-token character in the CJK range.
4. ``added-special-token``: ``<|nla_marker|>`` added to the tokenizer, which forces the embeddings to
   grow by a row (see ``add_marker_token``); only when a model is at hand to resize.

Every candidate must also stay one token between the prompt's tags (``<concept>X</concept>``, encoded
without special tokens): byte-level BPE may merge a character with its neighbours, e.g. SmolLM2 turns
``>`` + a backtick into one token. The neighbours found there are recorded so the slot can later be
found in a padded batch without trusting any precomputed position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import AddedToken

from nla.core.errors import ConfigError

CJK_RANGE = range(0x3200, 0x3400)
"""Enclosed CJK letters and CJK compatibility: symbols that ordinary text almost never contains."""

FALLBACK_SYMBOLS = ("§", "¶", "†", "‡", "¤", "※", "¦", "¬", "^", "~", "|")
"""Tried in this order when no CJK-range character is one token. The rare typographic symbols come
first; the ASCII ones close the list because every byte-level BPE vocabulary holds each ASCII byte as
a token, so small vocabularies still get a marker without resizing the embeddings. A marker that also
occurs elsewhere in a prompt is harmless: slots are identified by the marker together with its two
neighbours."""

PLACEHOLDER = "{injection_char}"
"""Where an AV template puts the marker, as in the released checkpoints' templates."""

MARKER_TOKEN = "<|nla_marker|>"
"""The special token added when no existing character qualifies."""

RULES = ("explicit", "cjk-range", "fallback-symbol", "added-special-token")
"""The values of ``Marker.rule``, in the order the rules are tried."""


@dataclass(frozen=True)
class Marker:
    char: str
    """The marker as text, as it appears in the rendered prompt."""
    token_id: int
    """Its single token id."""
    left_id: int
    """Id of the token just before it in the prompt: the last token of the opening tag."""
    right_id: int
    """Id of the token just after it in the prompt: the first token of the closing tag."""
    rule: str
    """How it was chosen: one of ``RULES``."""


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _in_context(tokenizer, char: str, open_tag: str, close_tag: str, rule: str) -> Marker | None:
    """The marker for ``char`` if it is one token alone and exactly once, as a whole token, between
    the tags; None otherwise. Only the marker's own token is checked in context: comparing the tags
    with their standalone encodings would reject every candidate on SentencePiece tokenizers, which
    prefix a space to the start of a string."""
    alone = _encode(tokenizer, char)
    if len(alone) != 1:
        return None
    token_id = alone[0]
    ids = _encode(tokenizer, open_tag + char + close_tag)
    hits = [i for i, tid in enumerate(ids) if tid == token_id]
    # A second hit (the char inside a tag) would make the left/right pair ambiguous.
    if len(hits) != 1 or not 0 < hits[0] < len(ids) - 1:
        return None
    at = hits[0]
    return Marker(char, token_id, ids[at - 1], ids[at + 1], rule)


def choose_marker(
    tokenizer,
    open_tag: str = "<concept>",
    close_tag: str = "</concept>",
    explicit: str | None = None,
    field: str = "verbalizer.marker",
    model=None,
) -> Marker:
    """Pick the marker by the rules in the module docstring; deterministic for a given tokenizer.

    ``model`` is only used by the last rule, which adds a special token and resizes its embeddings;
    without a model that rule raises a ``ConfigError`` instead.
    """
    if explicit is not None:
        marker = _in_context(tokenizer, explicit, open_tag, close_tag, "explicit")
        if marker is None:
            n = len(_encode(tokenizer, explicit))
            problem = f"encodes to {n} tokens" if n != 1 else "merges with its neighbours"
            raise ConfigError(
                field,
                f"{explicit!r} {problem} in '{open_tag}{explicit}{close_tag}'; set a character that "
                f"stays one token there, or remove the key to choose one automatically",
            )
        return marker
    for code_point in CJK_RANGE:
        marker = _in_context(tokenizer, chr(code_point), open_tag, close_tag, "cjk-range")
        if marker is not None:
            return marker
    for symbol in FALLBACK_SYMBOLS:
        marker = _in_context(tokenizer, symbol, open_tag, close_tag, "fallback-symbol")
        if marker is not None:
            return marker
    # A tokenizer saved after an earlier run added the token needs no model: nothing grows.
    existing = _in_context(tokenizer, MARKER_TOKEN, open_tag, close_tag, "added-special-token")
    if existing is not None:
        return existing
    if model is None:
        raise ConfigError(
            field,
            f"no character of U+3200-U+33FF or {''.join(FALLBACK_SYMBOLS)} is one token in "
            f"'{open_tag}X{close_tag}'; set {field} to a character that is, or give the model so "
            f"{MARKER_TOKEN} can be added",
        )
    return add_marker_token(tokenizer, model, open_tag, close_tag)


def add_marker_token(tokenizer, model, open_tag: str = "<concept>", close_tag: str = "</concept>") -> Marker:
    """Add ``MARKER_TOKEN`` as a special token and give the model an embedding row for it.

    The new row is the mean of the existing rows, written into the input embedding and, when the
    output embedding is a separate matrix, into it too (plus the mean bias). The input value hardly
    matters: the verbalizer overwrites the marker's embedding with the activation. The output value
    does, since with tied embeddings the same row is also a logit row: with the mean row its logit is
    exactly the mean of the other logits for every hidden state, so by Jensen's inequality its
    probability stays below 1/V and it is never the most likely token. A random row, or the default
    mean-plus-noise of ``resize_token_embeddings``, gives no such guarantee.
    """
    token = AddedToken(MARKER_TOKEN, special=True, normalized=False)
    added = tokenizer.add_tokens([token], special_tokens=True)
    marker = _in_context(tokenizer, MARKER_TOKEN, open_tag, close_tag, "added-special-token")
    if marker is None:
        raise ConfigError(
            "verbalizer.marker", f"this tokenizer does not keep {MARKER_TOKEN} as one token; set a marker character"
        )
    rows = model.get_input_embeddings().weight.shape[0]
    if added == 0 and marker.token_id < rows:
        return marker
    # Some checkpoints pad the embedding matrix beyond the tokenizer; never shrink it.
    model.resize_token_embeddings(max(rows, marker.token_id + 1), mean_resizing=False)
    output = model.get_output_embeddings()
    tensors = [model.get_input_embeddings().weight]
    if output is not None and output.weight is not tensors[0]:
        tensors += [output.weight] + ([output.bias] if getattr(output, "bias", None) is not None else [])
    with torch.no_grad():
        for tensor in tensors:
            tensor[marker.token_id] = tensor[: marker.token_id].float().mean(0).to(tensor.dtype)
    return marker


def find_marker_slots(input_ids: torch.Tensor, marker: Marker) -> torch.LongTensor:
    """Position of the marker in each row of ``input_ids`` [B, T], found where the marker id sits
    between ``left_id`` and ``right_id``. Exactly one such slot per row, else ``ValueError``."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, time], got shape {tuple(input_ids.shape)}")
    slots = torch.zeros_like(input_ids, dtype=torch.bool)
    slots[:, 1:-1] = (
        (input_ids[:, 1:-1] == marker.token_id)
        & (input_ids[:, :-2] == marker.left_id)
        & (input_ids[:, 2:] == marker.right_id)
    )
    counts = slots.sum(dim=1)
    bad = (counts != 1).nonzero().flatten().tolist()
    if bad:
        row = bad[0]
        raise ValueError(
            f"row {row} has {int(counts[row])} marker slots (id {marker.token_id} {marker.char!r} between "
            f"ids {marker.left_id} and {marker.right_id}); expected exactly one"
            + (f" ({len(bad)} rows are wrong)" if len(bad) > 1 else "")
        )
    return slots.long().argmax(dim=1)


def render_av_content(template: str, char: str, field: str = "prompt_templates.av") -> str:
    """The AV user message with the marker in place. ``PLACEHOLDER`` is filled with ``str.format``
    (literal braces are doubled), as the released templates expect; a template without it must
    already hold the literal marker character."""
    if PLACEHOLDER in template:
        try:
            return template.format(injection_char=char)
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(field, f"cannot fill {PLACEHOLDER} ({err}); double other literal braces") from None
    if char in template:
        return template
    raise ConfigError(field, f"holds neither {PLACEHOLDER} nor {char!r}; put {PLACEHOLDER} where the vector goes")


def av_prompt_ids(tokenizer, content: str) -> list[int]:
    """Token ids of the AV prompt: ``content`` as one user message in the tokenizer's chat template
    with the generation prompt, rendered first and encoded without special tokens so a template
    that writes its own BOS does not get a second one."""
    if not getattr(tokenizer, "chat_template", None):
        return _encode(tokenizer, content)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    return _encode(tokenizer, text)


def marker_problem(tokenizer, marker: Marker, content: str) -> tuple[str, str] | None:
    """Why ``marker`` does not fit ``tokenizer`` and the AV prompt around ``content`` (a rendered
    user message): the ``Marker`` attribute at fault (``content`` when the prompt is) and what is
    wrong, or None when it fits with exactly one slot."""
    alone = _encode(tokenizer, marker.char)
    if len(alone) != 1:
        return "char", f"{marker.char!r} is {len(alone)} tokens here; the sidecar was made for another tokenizer"
    if alone[0] != marker.token_id:
        return "token_id", f"is {marker.token_id} but the tokenizer encodes {marker.char!r} as {alone[0]}"
    ids = av_prompt_ids(tokenizer, content)
    pairs = [(ids[i - 1], ids[i + 1]) for i in range(1, len(ids) - 1) if ids[i] == marker.token_id]
    if not pairs:
        return "content", f"the marker {marker.char!r} is not a whole token in the rendered AV prompt"
    slots = pairs.count((marker.left_id, marker.right_id))
    if slots > 1:
        return "content", f"holds {slots} marker slots; expected exactly one"
    if slots == 1:
        return None
    left, right = pairs[0]
    if left != marker.left_id:
        return "left_id", f"is {marker.left_id} but the AV prompt has {left} before the marker"
    return "right_id", f"is {marker.right_id} but the AV prompt has {right} after the marker"
