"""Prompt wording, explanation text round trips, and the token ids of both prompts (tiny tokenizer, SmolLM2)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoTokenizer

from nla.core.errors import ConfigError
from nla.core.marker import find_marker_slots
from nla.core.prompts import (PromptArgs, Prompts, explanation_text, parse_explanation, partial_explanation,
                         turn_closing)
from tests.fixtures.tiny import MARKER_CHAR

FEATURES = [
    "1 The text is a   recipe,\nso quantities follow.",
    "  ",
    "The final token <explanation>' flour'</explanation> ends an ingredient line.",
]


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer) -> Prompts:
    return Prompts.build(tiny_tokenizer, PromptArgs())


def test_explanation_text_is_one_clean_feature_per_line():
    text = explanation_text(FEATURES)
    assert text.splitlines() == [
        "1 The text is a recipe, so quantities follow.",
        "The final token ' flour' ends an ingredient line.",
    ]


def test_parse_explanation_round_trips_the_target_and_rejects_truncation(prompts):
    text = explanation_text(FEATURES)
    assert parse_explanation(prompts.av_target(text)) == text
    assert parse_explanation("Sure. <explanation>\n  two\nlines \n</explanation> trailing") == "two\nlines"
    assert parse_explanation("<explanation>cut off before the closing ta") is None
    assert parse_explanation("no tags at all") is None


def test_turn_closing_comes_from_the_chat_template_or_eos(tiny_tokenizer):
    assert turn_closing(tiny_tokenizer) == "<|im_end|>"
    plain = copy.deepcopy(tiny_tokenizer)
    plain.chat_template = None
    plain.eos_token = "<pad>"
    assert turn_closing(plain) == "<pad>"


def test_av_prompt_has_one_bos_and_one_marker_slot(tiny_tokenizer, prompts):
    ids = torch.tensor([prompts.av_prompt_ids])
    assert prompts.marker.char == MARKER_CHAR
    assert ids[0, 0] == tiny_tokenizer.bos_token_id
    assert int((ids == tiny_tokenizer.bos_token_id).sum()) == 1
    slot = int(find_marker_slots(ids, prompts.marker)[0])
    assert prompts.av_prompt_ids[slot] == prompts.marker.token_id
    assert tiny_tokenizer.decode(prompts.av_prompt_ids).endswith("<|im_start|>assistant\n")


def test_av_example_labels_only_the_answer_and_its_closing(tiny_tokenizer, prompts):
    explanation = explanation_text(FEATURES)
    input_ids, labels = prompts.av_example(explanation)
    n = len(prompts.av_prompt_ids)
    assert input_ids[:n] == prompts.av_prompt_ids and len(labels) == len(input_ids) > n
    assert labels[:n] == [-100] * n and labels[n:] == input_ids[n:]
    answer = tiny_tokenizer.decode(labels[n:])
    assert answer == f"<explanation>{explanation}</explanation><|im_end|>"
    assert labels[-1] == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_ar_ids_carry_the_default_bos_and_end_with_the_fixed_suffix(tiny_tokenizer, prompts):
    ids = prompts.ar_ids("The text is about rivers.")
    assert ids[0] == tiny_tokenizer.bos_token_id and ids.count(tiny_tokenizer.bos_token_id) == 1
    suffix = prompts.ar_suffix_ids()
    assert suffix and ids[-len(suffix) :] == suffix
    assert tiny_tokenizer.decode(suffix).endswith("<state>")
    assert prompts.ar_prompt("X") == "Notes on what a language model was thinking: <text>X</text> Its state: <state>"


def test_explicit_marker_wins_and_a_literal_marker_template_needs_it(tiny_tokenizer):
    args = PromptArgs(marker="~")
    built = Prompts.build(tiny_tokenizer, args)
    assert (built.marker.char, built.marker.rule) == ("~", "explicit")
    assert int(find_marker_slots(torch.tensor([built.av_prompt_ids]), built.marker)[0]) > 0
    literal = "Vector: <concept>~</concept>. Explain it in <explanation> tags."
    assert Prompts.build(tiny_tokenizer, PromptArgs(av_template=literal, marker="~")).av_content == literal
    with pytest.raises(ConfigError, match="prompts.av_template"):
        PromptArgs(av_template=literal)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"av_template": "Describe {injection_char} please."}, "prompts.av_template"),
        ({"av_template": "<concept>{injection_char}</concept> and {other}"}, "prompts.av_template"),
        ({"open_tag": "<vec>"}, "prompts.av_template"),
        ({"ar_template": "no placeholder <summary>"}, "prompts.ar_template"),
        ({"ar_template": "{explanation} {explanation}"}, "prompts.ar_template"),
        ({"ar_template": "<text>{explanation}</text> {x}"}, "prompts.ar_template"),
    ],
)
def test_bad_templates_name_their_field(kwargs, field):
    with pytest.raises(ConfigError) as error:
        PromptArgs(**kwargs)
    assert error.value.field == field


def test_smollm2_prompt_has_one_section_sign_slot_and_one_system_header(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    built = Prompts.build(tokenizer, PromptArgs())
    ids = built.av_prompt_ids
    assert built.marker.char == "§" and built.marker.rule == "fallback-symbol"
    at = ids.index(built.marker.token_id)
    assert ids.count(built.marker.token_id) == 1
    assert (ids[at - 1], ids[at + 1]) == (built.marker.left_id, built.marker.right_id)
    assert tokenizer.decode(ids[at - 1 : at + 2]) == ">§</"
    assert int(find_marker_slots(torch.tensor([ids]), built.marker)[0]) == at
    text = tokenizer.decode(ids)
    assert text.count("<|im_start|>system") == 1 and text.startswith("<|im_start|>system")
    assert text.count("<|im_start|>user") == 1 and text.endswith("<|im_start|>assistant\n")
    assert built.closing == "<|im_end|>"


@pytest.mark.parametrize("answer, expected", [
    ("<explanation> The narrator turns to the weather, and", "The narrator turns to the weather, and"),
    ("Sure. <explanation>\nA list of", "A list of"),
    ("no tags at all", None),
    ("<explanation>   ", None),
])
def test_partial_explanation_is_what_follows_the_opening_tag(answer, expected):
    assert partial_explanation(answer) == expected
