"""The edits ``nla steer`` applies to an explanation."""

from __future__ import annotations

import pytest

from nla.core.errors import ConfigError
from nla.commands.steer.edits import apply_edits, parse_replacements, watched_words


def test_replacements_split_at_the_first_equals_sign_and_apply_in_order():
    pairs = parse_replacements(["rabbit=mouse", "a=b=c", "small="])
    assert pairs == [("rabbit", "mouse"), ("a", "b=c"), ("small", "")]
    text = "A small rabbit sees a rabbit."
    assert apply_edits(text, [("rabbit", "mouse"), ("small ", "")]) == "A mouse sees a mouse."
    assert apply_edits(text, []) == text


@pytest.mark.parametrize("item", ["rabbit", "=mouse"])
def test_malformed_replacement_names_the_field(item):
    with pytest.raises(ConfigError, match=r"^replace: .* is not OLD=NEW"):
        parse_replacements([item])


def test_an_edit_of_absent_words_is_refused():
    with pytest.raises(ConfigError, match=r"^replace: 'wolf' does not occur in the explanation \"A rabbit"):
        apply_edits("A rabbit\nruns.", [("wolf", "dog")])


def test_watched_words_are_comma_separated():
    assert watched_words(" rabbit, mouse,,") == ["rabbit", "mouse"]
    assert watched_words(None) == []
