"""The positions ``nla audit`` explains: the rule on hand-made token lists, and chat roles mapped to
the tokens of each message."""

from __future__ import annotations

import copy

import pytest

from nla.core.errors import ConfigError
from nla.data.audit_positions import PositionRule, chat_tokens, choose, plain_tokens

TOKENS = ["<bos>", "The", " cat", " sat", "<|im_end|>", " on", " the", " mat", "."]
SPECIAL = [True, False, False, False, True, False, False, False, False]
ROLES = [None, "user", "user", "user", None, "assistant", "assistant", "assistant", "assistant"]


def test_every_plain_token_but_the_first_and_the_special_ones():
    assert choose(TOKENS, SPECIAL, ROLES, PositionRule()) == [1, 2, 3, 5, 6, 7, 8]
    # Index 0 has no context even when it is no special token.
    assert choose(TOKENS, [False] * len(TOKENS), ROLES, PositionRule())[0] == 1


def test_every_counts_the_tokens_the_other_rules_keep():
    assert choose(TOKENS, SPECIAL, ROLES, PositionRule(every=2)) == [2, 5, 7]
    assert choose(TOKENS, SPECIAL, ROLES, PositionRule(every=2, roles=("assistant",))) == [6, 8]


def test_roles_and_pattern_filter():
    assert choose(TOKENS, SPECIAL, ROLES, PositionRule(roles=("assistant",))) == [5, 6, 7, 8]
    assert choose(TOKENS, SPECIAL, ROLES, PositionRule(roles=("user", "system"))) == [1, 2, 3]
    assert choose(TOKENS, SPECIAL, ROLES, PositionRule(pattern=r"^ [a-z]at$")) == [2, 3, 7]
    assert choose(TOKENS, SPECIAL, ROLES, PositionRule(pattern="at", roles=("user",))) == [2, 3]
    # A pattern never brings back a special token.
    assert choose(TOKENS, SPECIAL, ROLES, PositionRule(pattern="<")) == []


def test_max_per_text_spreads_evenly_and_keeps_order():
    tokens, special, roles = ["t"] * 101, [False] * 101, [None] * 101
    assert choose(tokens, special, roles, PositionRule(max_per_text=4)) == [13, 38, 63, 88]
    assert choose(tokens, special, roles, PositionRule(max_per_text=1)) == [51]
    assert choose(TOKENS, SPECIAL, ROLES, PositionRule(max_per_text=50)) == [1, 2, 3, 5, 6, 7, 8]


@pytest.mark.parametrize("rule, field", [
    (dict(every=0), "every"), (dict(max_per_text=0), "max_per_text"), (dict(roles=()), "roles"),
    (dict(pattern="(unclosed"), "pattern"),
])
def test_bad_rules_name_their_option(rule, field):
    with pytest.raises(ConfigError) as raised:
        PositionRule(**rule)
    assert raised.value.field == field


def test_chat_roles_are_the_tokens_of_each_message(tiny_tokenizer):
    messages = (("system", "Rivers bend around old stones."), ("user", "Describe the vector."),
                ("assistant", "The sailor counts the waves."))
    read = chat_tokens(tiny_tokenizer, messages, 0)
    assert read.text == tiny_tokenizer.apply_chat_template(
        [{"role": role, "content": content} for role, content in messages], tokenize=False)
    # The template writes the one BOS; tokenizing the rendering must not add another.
    assert read.ids.count(tiny_tokenizer.bos_token_id) == 1 and read.ids[0] == tiny_tokenizer.bos_token_id
    for role, content in messages:
        assert "".join(token for token, mine in zip(read.tokens, read.roles) if mine == role) == content
    # The turn headers and ends are the template's: no role, and the rule never explains its specials.
    assert read.roles[read.tokens.index("<|im_start|>")] is None
    assert all(read.roles[i] == "assistant" for i in choose(read.tokens, read.special, read.roles,
                                                             PositionRule(roles=("assistant",))))


@pytest.mark.parametrize("template, words", [
    ("{% for m in messages %}{{ m['content'] | upper }}{% endfor %}", "rewrites message 0 (user)"),
    ("{{ raise_exception('roles must alternate') }}", "refuses this transcript (roles must alternate)"),
    (None, "has no chat template"),
])
def test_transcripts_a_template_cannot_map_are_refused(tiny_tokenizer, template, words):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = template
    with pytest.raises(ConfigError) as raised:
        chat_tokens(tokenizer, (("user", "Describe the vector."),), 3)
    assert raised.value.field == "messages_column" and words in raised.value.detail


def test_plain_texts_keep_the_default_special_tokens(tiny_tokenizer):
    read = plain_tokens(tiny_tokenizer, "The sailor counts the waves.")
    assert read.ids[0] == tiny_tokenizer.bos_token_id and read.special[0]
    assert read.roles == [None] * len(read.ids)
    assert read.context(len(read.ids) - 1, 10) == "the waves."
    assert read.cut(3).ids == read.ids[:3] and read.cut(3).tokens == read.tokens[:3]
