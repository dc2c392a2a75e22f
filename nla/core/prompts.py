"""The prompts of both halves of an NLA, built and tokenized in this one place.

AV (verbalizer): one user message in the tokenizer's chat template, with the marker between the
concept tags; the answer is ``<explanation>TEXT</explanation>`` followed by the template's turn-closing
text, so supervised training also teaches the model to stop. AR (reconstructor): a raw string around
the explanation, no chat template, encoded with the tokenizer's default special tokens (a BOS for
Llama and Gemma); the prediction is read at its last token.

Explanations are the teacher's features, one per line (``explanation_text``). The same text comes
back out of a generated answer with ``parse_explanation``, so the AR sees the same kind of input
during SFT (teacher text) and during RL (parsed AV samples).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nla.core.errors import ConfigError
from nla.core.marker import PLACEHOLDER, Marker, av_prompt_ids, choose_marker, render_av_content

OPEN, CLOSE = "<explanation>", "</explanation>"
EXPLANATION = "{explanation}"
"""Where an AR template puts the explanation (filled with ``str.format``; double other literal braces)."""

_PARSE = re.compile(r"<explanation>\s*(.*?)\s*</explanation>", re.DOTALL)
_SENTINEL = "NLA-SENTINEL-7c1e"

DEFAULT_AV_TEMPLATE = (
    "A language model was part-way through reading a text. Its internal state at the last token it read "
    f"is stored in this concept vector: <concept>{PLACEHOLDER}</concept>\n"
    "In plain English, describe what the model was tracking at that moment: the subject, the tone, the "
    "structure it was inside, and what the last token made likely next. Put your description between "
    "<explanation> and </explanation>."
)

DEFAULT_AR_TEMPLATE = "Notes on what a language model was thinking: <text>{explanation}</text> Its state: <state>"


@dataclass
class PromptArgs:
    """The wording of both prompts and the marker token the activation replaces."""

    av_template: str = DEFAULT_AV_TEMPLATE
    """The AV's user message. ``{injection_char}`` (between ``open_tag`` and ``close_tag``) marks where
    the vector goes; other literal braces must be doubled. It should ask for the answer between
    ``<explanation>`` and ``</explanation>``."""
    ar_template: str = DEFAULT_AR_TEMPLATE
    """The AR's raw prompt, ``{explanation}`` where the explanation goes; the prediction is read at
    its last token. Other literal braces must be doubled."""
    marker: str | None = None
    """The marker character; unset chooses one by the rules of ``nla.core.marker`` (CJK range, then rare
    symbols). A template that holds the literal marker instead of ``{injection_char}`` needs it set."""
    open_tag: str = "<concept>"
    """Text just before the marker in ``av_template``; its last token is the marker's left neighbour."""
    close_tag: str = "</concept>"
    """Text just after the marker in ``av_template``; its first token is the right neighbour."""

    def __post_init__(self) -> None:
        slots = [self.open_tag + PLACEHOLDER + self.close_tag]
        if self.marker is not None:
            slots.append(self.open_tag + self.marker + self.close_tag)
        if sum(self.av_template.count(slot) for slot in slots) != 1:
            raise ConfigError(
                "prompts.av_template",
                f"must hold exactly one '{slots[0]}' (the tags around the marker must match open_tag and close_tag)",
            )
        render_av_content(self.av_template, self.marker or "x", "prompts.av_template")
        if self.ar_template.count(EXPLANATION) != 1:
            raise ConfigError("prompts.ar_template", f"must hold {EXPLANATION} exactly once")
        try:
            self.ar_template.format(explanation="x")
        except (KeyError, IndexError, ValueError) as error:
            message = f"cannot fill {EXPLANATION} ({error}); double other literal braces"
            raise ConfigError("prompts.ar_template", message) from None


def explanation_text(features: list[str]) -> str:
    """The teacher's features as one explanation: whitespace inside a feature collapsed, one feature
    per line, in the teacher's order (the last is about the final token). Explanation tags inside a
    feature are removed, since they would end the AV's answer early."""
    cleaned = (" ".join(feature.replace(OPEN, " ").replace(CLOSE, " ").split()) for feature in features)
    return "\n".join(feature for feature in cleaned if feature)


def parse_explanation(text: str) -> str | None:
    """The explanation inside a generated answer, stripped; None when the tags are missing or the
    closing tag was cut off (a truncated sample)."""
    match = _PARSE.search(text)
    return None if match is None else match.group(1)


def partial_explanation(text: str) -> str | None:
    """What an answer cut before its closing tag wrote after the opening tag, stripped; None when it
    never opened the tag or wrote nothing after it."""
    opened = text.find(OPEN)
    if opened < 0:
        return None
    partial = text[opened + len(OPEN):].strip()
    return partial or None


def turn_closing(tokenizer) -> str:
    """What the chat template writes after an assistant message's content, up to its last non-space
    character (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3, ``<end_of_turn>`` for Gemma).

    Trailing whitespace is left out: generation stops at the end-of-turn token, so the newline a
    template puts after it is never sampled. Without a chat template, or when the template closes a
    turn with nothing, the EOS token is the closing text.
    """
    closing = ""
    if getattr(tokenizer, "chat_template", None):
        conversation = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": _SENTINEL}]
        rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
        if _SENTINEL in rendered:
            closing = rendered[rendered.rindex(_SENTINEL) + len(_SENTINEL) :].rstrip()
    if closing:
        return closing
    if tokenizer.eos_token is None:
        raise ConfigError("model", "the tokenizer has neither a chat template that closes a turn nor an EOS token")
    return tokenizer.eos_token


class Prompts:
    """Both prompts bound to one tokenizer and marker; every token id a dataset or module needs.

    ``av_prompt_ids`` is the AV prompt (the same for every row: the vector, not the text, varies),
    rendered with the generation prompt and holding only the BOS the template itself writes;
    ``closing`` is the turn-closing text. Picklable, so DataLoader workers receive it with their dataset.
    """

    def __init__(self, tokenizer, args: PromptArgs, marker: Marker) -> None:
        self.tokenizer, self.args, self.marker = tokenizer, args, marker
        self.av_content = render_av_content(args.av_template, marker.char, "prompts.av_template")
        self.av_prompt_ids = av_prompt_ids(tokenizer, self.av_content)
        self.closing = turn_closing(tokenizer)

    @classmethod
    def build(cls, tokenizer, args: PromptArgs, model=None) -> Prompts:
        """Choose the marker for ``tokenizer`` (``args.marker`` wins) and bind the prompts to it."""
        marker = choose_marker(tokenizer, args.open_tag, args.close_tag, args.marker, "prompts.marker", model)
        return cls(tokenizer, args, marker)

    def av_target(self, explanation: str) -> str:
        """The AV's answer: the explanation between tags, then the turn-closing text."""
        return f"{OPEN}{explanation}{CLOSE}{self.closing}"

    def av_example(self, explanation: str) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one AV SFT example: the prompt, then the answer; labels are -100 on
        the prompt. The answer is encoded on its own, as generation continues after the prompt ids."""
        target = self.tokenizer.encode(self.av_target(explanation), add_special_tokens=False)
        return self.av_prompt_ids + target, [-100] * len(self.av_prompt_ids) + target

    def ar_prompt(self, explanation: str) -> str:
        return self.args.ar_template.format(explanation=explanation)

    def ar_ids(self, explanation: str) -> list[int]:
        """The AR prompt's ids with the tokenizer's default special tokens (BOS where it adds one)."""
        return self.tokenizer.encode(self.ar_prompt(explanation))

    def ar_suffix_ids(self) -> list[int]:
        """The ids every AR prompt ends with, whatever the explanation (the sidecar's
        ``critic_suffix_ids``): the common tail of two prompts around different explanations."""
        first, second = self.ar_ids("Alpha beta."), self.ar_ids("Gamma 42, delta")
        common = 0
        while common < min(len(first), len(second)) and first[-1 - common] == second[-1 - common]:
            common += 1
        return first[len(first) - common :]
