"""Marker choice (rules, neighbours, determinism), the special-token last resort, and slot finding."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from nla.core import marker as marker_module
from nla.core.errors import ConfigError
from nla.core.marker import (
    FALLBACK_SYMBOLS,
    MARKER_TOKEN,
    Marker,
    add_marker_token,
    av_prompt_ids,
    choose_marker,
    find_marker_slots,
    render_av_content,
)
from tests.fixtures.tiny import MARKER_CHAR, build_model, build_tokenizer

AV_TEMPLATE = "Here is a vector: <concept>{injection_char}</concept>. What is the model thinking about?"


def single_id(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1, f"{text!r} is {ids}"
    return ids[0]


def assert_one_token_between_tags(tokenizer, marker: Marker) -> None:
    ids = tokenizer.encode(f"<concept>{marker.char}</concept>", add_special_tokens=False)
    at = ids.index(marker.token_id)
    assert ids.count(marker.token_id) == 1
    assert (ids[at - 1], ids[at + 1]) == (marker.left_id, marker.right_id)


@pytest.fixture(scope="module")
def plain_tokenizer():
    """The tiny tokenizer without a single-token character in U+3200-U+33FF."""
    return build_tokenizer(with_cjk_marker=False)


def test_tiny_cjk_tokenizer_picks_the_cjk_marker_with_tag_neighbours(tiny_tokenizer):
    marker = choose_marker(tiny_tokenizer)
    assert marker.char == MARKER_CHAR == "\u321c"
    assert marker.rule == "cjk-range"
    assert marker.token_id == single_id(tiny_tokenizer, MARKER_CHAR)
    assert marker.left_id == single_id(tiny_tokenizer, ">")
    assert marker.right_id == single_id(tiny_tokenizer, "</")
    assert_one_token_between_tags(tiny_tokenizer, marker)


def test_tokenizer_without_cjk_marker_falls_back_deterministically(plain_tokenizer):
    assert not any(
        len(plain_tokenizer.encode(chr(cp), add_special_tokens=False)) == 1 for cp in range(0x3200, 0x3400)
    )
    marker = choose_marker(plain_tokenizer)
    expected = next(s for s in FALLBACK_SYMBOLS if len(plain_tokenizer.encode(s, add_special_tokens=False)) == 1)
    assert marker.rule == "fallback-symbol"
    assert marker.char == expected == "^"
    assert marker.left_id == single_id(plain_tokenizer, ">")
    assert marker.right_id == single_id(plain_tokenizer, "</")
    assert_one_token_between_tags(plain_tokenizer, marker)
    assert choose_marker(build_tokenizer(with_cjk_marker=False)) == marker


def test_smollm2_falls_back_to_the_section_sign(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    marker = choose_marker(tokenizer)
    assert marker == Marker("§", 31854, single_id(tokenizer, ">"), single_id(tokenizer, "</"), "fallback-symbol")
    assert_one_token_between_tags(tokenizer, marker)


def test_explicit_marker_wins_over_the_cjk_rule(tiny_tokenizer):
    marker = choose_marker(tiny_tokenizer, explicit="~")
    assert (marker.char, marker.rule) == ("~", "explicit")
    assert marker.token_id == single_id(tiny_tokenizer, "~")
    assert_one_token_between_tags(tiny_tokenizer, marker)


def test_explicit_multi_token_marker_is_a_config_error_naming_the_field(tiny_tokenizer):
    with pytest.raises(ConfigError) as caught:
        choose_marker(tiny_tokenizer, explicit="§", field="av.marker")
    assert caught.value.field == "av.marker"
    message = str(caught.value)
    assert message.startswith("av.marker: ") and "2 tokens" in message and "\n" not in message


def test_explicit_marker_that_merges_with_the_tag_is_rejected(smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    # One token alone, but SmolLM2 merges ">" and a backtick into one token inside the tags.
    assert len(tokenizer.encode("`", add_special_tokens=False)) == 1
    with pytest.raises(ConfigError, match=r"^verbalizer\.marker: .*merges with its neighbours"):
        choose_marker(tokenizer, explicit="`")


def test_choice_follows_the_tags(tiny_tokenizer):
    marker = choose_marker(tiny_tokenizer, open_tag="[", close_tag="]")
    assert marker.char == MARKER_CHAR
    assert (marker.left_id, marker.right_id) == (single_id(tiny_tokenizer, "["), single_id(tiny_tokenizer, "]"))


def padded_batch(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, list[int]]:
    width = max(len(row) for row in rows)
    batch, offsets = [], []
    for row in rows:
        pad = [pad_id] * (width - len(row))
        batch.append(row + pad if side == "right" else pad + row)
        offsets.append(0 if side == "right" else len(pad))
    return torch.tensor(batch), offsets


@pytest.mark.parametrize("side", ["right", "left"])
def test_find_marker_slots_in_a_padded_batch(plain_tokenizer, side):
    marker = choose_marker(plain_tokenizer)
    # The first prompt also holds the marker character outside the tags: only the tagged one counts.
    contents = ["a ^ b " + AV_TEMPLATE, "Summary of the text, one two three four: " + AV_TEMPLATE, AV_TEMPLATE]
    rows = [av_prompt_ids(plain_tokenizer, render_av_content(c, marker.char)) for c in contents]
    assert rows[0].count(marker.token_id) == 2
    input_ids, offsets = padded_batch(rows, plain_tokenizer.pad_token_id, side)
    expected = []
    for row, offset in zip(rows, offsets):
        triple = [marker.left_id, marker.token_id, marker.right_id]
        tagged = [i for i in range(1, len(row) - 1) if row[i - 1 : i + 2] == triple]
        expected.append(tagged[0] + offset)
    slots = find_marker_slots(input_ids, marker)
    assert slots.dtype == torch.long
    assert slots.tolist() == expected
    assert (input_ids[torch.arange(3), slots] == marker.token_id).all()


def test_find_marker_slots_rejects_rows_without_exactly_one_slot(tiny_tokenizer):
    marker = choose_marker(tiny_tokenizer)
    one = av_prompt_ids(tiny_tokenizer, render_av_content(AV_TEMPLATE, marker.char))
    none = av_prompt_ids(tiny_tokenizer, "Describe the vector in a few sentences.")
    two = av_prompt_ids(tiny_tokenizer, render_av_content(AV_TEMPLATE + " " + AV_TEMPLATE, marker.char))
    pad = tiny_tokenizer.pad_token_id
    with pytest.raises(ValueError, match=r"row 1 has 0 marker slots"):
        find_marker_slots(padded_batch([one, none], pad, "right")[0], marker)
    with pytest.raises(ValueError, match=r"row 0 has 2 marker slots"):
        find_marker_slots(padded_batch([two, one], pad, "left")[0], marker)
    # The marker id without its neighbours is not a slot.
    bare = torch.tensor([[marker.token_id, marker.token_id, marker.token_id]])
    with pytest.raises(ValueError, match=r"row 0 has 0 marker slots"):
        find_marker_slots(bare, marker)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_special_token_last_resort(monkeypatch, family):
    tokenizer = build_tokenizer(with_cjk_marker=False)
    model = build_model(family, tokenizer)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (family == "gpt2")
    old_rows = model.get_input_embeddings().weight.detach().clone()
    probe = torch.tensor([tokenizer.encode("The verbalizer looks at one vector", add_special_tokens=False)])
    monkeypatch.setattr(marker_module, "FALLBACK_SYMBOLS", ())

    with pytest.raises(ConfigError, match=r"^verbalizer\.marker: no character"):
        choose_marker(tokenizer)
    marker = choose_marker(tokenizer, model=model)

    assert marker.rule == "added-special-token" and marker.char == MARKER_TOKEN
    assert marker.token_id == single_id(tokenizer, MARKER_TOKEN) == len(old_rows)
    assert (marker.left_id, marker.right_id) == (single_id(tokenizer, ">"), single_id(tokenizer, "</"))
    assert_one_token_between_tags(tokenizer, marker)
    weight = model.get_input_embeddings().weight
    assert weight.shape == (len(tokenizer), old_rows.shape[1])
    assert model.config.get_text_config().vocab_size == len(tokenizer)
    assert (model.get_output_embeddings().weight is weight) == tied
    torch.testing.assert_close(weight[: len(old_rows)], old_rows)
    torch.testing.assert_close(weight[marker.token_id], old_rows.mean(0))
    with torch.no_grad():
        logits = model(probe).logits[0]
    # The marker's logit is the mean of the others at every position, so it is never the top token.
    others = logits[:, : marker.token_id].mean(-1)
    torch.testing.assert_close(logits[:, marker.token_id], others, atol=1e-5, rtol=1e-5)
    assert (logits.argmax(-1) != marker.token_id).all()

    # A tokenizer that already carries the token needs no model and changes nothing.
    assert choose_marker(tokenizer) == marker
    assert add_marker_token(tokenizer, model) == marker
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
