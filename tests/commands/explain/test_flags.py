"""The final-token check: an explanation that quotes a final token other than the real one is flagged."""

from __future__ import annotations

import pytest

from nla.commands.explain.flags import claimed_final_token, final_token_contradiction


@pytest.mark.parametrize("explanation, token, context, flagged", [
    # The extractive teacher's own wording, JSON-quoted: agrees.
    ('About bread.\nFinal token " flour": the end of a noun.', " flour", "two cups of flour", None),
    ('The last word "bread" closes the list.', " flour", "two cups of flour", "bread"),
    # Case and white space do not matter; a longer quote ending at the token agrees.
    ("The final token “ Flour ” is a noun.", " flour", "two cups of flour", None),
    ("The last words 'cups of flour' end a line.", " flour", "two cups of flour", None),
    # The whole word a sub-word token ends agrees; another word does not.
    ('The last word "running" is a verb.', "ning", "he was running", None),
    ('The last word "walking" is a verb.', "ning", "he was running", "walking"),
    # JSON escapes are read: a line-break token quoted as "\n" agrees, a word against it does not.
    ('The final token "\\n" starts a new line.', "\n", "one line\n", None),
    ('The final token "line" ends it.', "\n", "one line\n", "line"),
    # No claim about the final token: nothing to check. An apostrophe is no quote.
    ('The text mentions "bread" and flour.', " flour", "bread and flour", None),
    ("The final token's role is 'unclear' here.", " flour", "two cups of flour", None),
])
def test_final_token_claims(explanation, token, context, flagged):
    assert final_token_contradiction(explanation, token, context) == flagged


def test_only_a_quote_near_the_words_final_token_counts():
    assert claimed_final_token('The current token is, as the text shows, "x".') == "x"
    far = "The final token is one of many words that the reader has seen in this long text so far: \"x\"."
    assert claimed_final_token(far) is None
    assert claimed_final_token('Final token\n"x"') is None
