"""The detail curve's prefixes, on hand-made explanations."""

from __future__ import annotations

from nla.evaluation.detail import doubling_grid, prefix, sentence_ends, spread_points, token_ends
from nla.models.loading import ModelArgs, load_tokenizer

TEXT = "The text is a recipe. The next word is a quantity!\nIt ends here"


def test_sentence_prefixes_grow_and_the_last_is_the_whole_text():
    ends = sentence_ends(TEXT)
    assert [prefix(TEXT, ends, n) for n in (1, 2, 3)] == [
        "The text is a recipe.", "The text is a recipe. The next word is a quantity!", TEXT]
    assert prefix(TEXT, ends, 10) == TEXT and sentence_ends("") == [0]


def test_token_prefixes_cut_at_token_ends(tiny_model_dir):
    tokenizer = load_tokenizer(ModelArgs(str(tiny_model_dir("llama"))))
    text = TEXT + "  "
    ends = token_ends(tokenizer, text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ends) == len(ids) and ends[-1] == len(text) and ends == sorted(ends)
    for n in (1, 3, len(ids) - 1):
        assert tokenizer(prefix(text, ends, n), add_special_tokens=False)["input_ids"] == ids[:n]
    assert prefix(text, ends, len(ids)) == text


def test_grids():
    assert doubling_grid(1) == [1] and doubling_grid(5) == [1, 2, 4, 5] and doubling_grid(8) == [1, 2, 4, 8]
    assert spread_points(100, 5) == [1, 3, 10, 32, 100]
    assert spread_points(3, 8) == [1, 2, 3] and spread_points(7, 1) == [7] and spread_points(0, 4) == [1]
