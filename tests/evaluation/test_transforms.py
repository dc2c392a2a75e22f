"""The transforms of the steganography check on hand-made explanations, and their paired differences."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from nla.evaluation.text import content_words, sentences
from nla.evaluation.transforms import (
    LOCAL,
    apply_local,
    differences,
    first_sentence,
    reorder_lines,
    reorder_sentences,
    replace_content_words,
    shuffle_words,
    tagged_text,
)

FEATURES = ("1. The passage is a recipe for bread. It lists flour and water.\n"
            "2. The tone is plain and instructive.\n"
            "3. The final token \" flour\" ends an ingredient, so a quantity follows.")


def test_sentence_reorder_keeps_every_sentence_and_every_word():
    out = reorder_sentences(FEATURES, random.Random(0))
    assert out != FEATURES
    assert sorted(sentences(out)) == sorted(sentences(FEATURES))
    assert Counter(out.split()) == Counter(FEATURES.split())


def test_line_reorder_keeps_each_line_whole():
    out = reorder_lines(FEATURES, random.Random(1))
    assert out != FEATURES and sorted(out.splitlines()) == sorted(FEATURES.splitlines())
    assert reorder_lines("One line only.", random.Random(0)) == "One line only."


def test_word_shuffle_keeps_the_multiset_of_words():
    out = shuffle_words(FEATURES, random.Random(2))
    assert out != FEATURES and Counter(out.split()) == Counter(FEATURES.split())


def test_first_sentence_keeps_only_it():
    assert first_sentence(FEATURES) == "1. The passage is a recipe for bread."
    assert first_sentence("No full stop here") == "No full stop here"


def test_content_word_replacement_keeps_function_words_and_layout():
    pool = ["river", "stone", "wheel"]
    out = replace_content_words("The bread and the flour.\nA quantity follows.", random.Random(3), pool)
    assert out.count("\n") == 1 and out.startswith("The ") and " and the " in out and out.endswith(".")
    replaced = [word for word in out.replace(".", " ").split() if word not in ("The", "and", "the", "A")]
    assert replaced and all(word in pool for word in replaced)


def test_local_transforms_are_keyed_by_seed_and_row():
    texts = [FEATURES, "Another text about stones. And rivers."]
    for name in LOCAL:
        assert apply_local(name, texts, seed=5) == apply_local(name, texts, seed=5)
    assert apply_local("shuffle_words", texts, seed=5) != apply_local("shuffle_words", texts, seed=6)
    assert content_words(apply_local("replace_content_words", texts, 0)[0]) <= {
        word for text in texts for word in content_words(text)}


def test_tagged_text_reads_the_rewriters_answer():
    assert tagged_text("Sure!\n<text>\nA paraphrase.\n</text>") == "A paraphrase."
    assert tagged_text("no tags") is None and tagged_text(None) is None and tagged_text("<text> </text>") is None


def test_paired_differences_leave_out_rows_a_transform_could_not_rewrite():
    base = np.array([0.4, 0.8, 1.2, 0.6])
    documents = np.array(["a", "a", "b", "c"])
    worse = base + 0.25
    partial = np.array([0.4, np.nan, 1.2, np.nan])
    result = differences(base, {"worse": worse, "partial": partial, "none": np.full(4, np.nan)}, 0.5, documents,
                         200, 0)
    assert result["worse"]["rows"] == 4
    # Every row loses 0.25 of MSE = 0.5 of FVE: a point interval, since the pairing removes row noise.
    assert result["worse"]["difference"].value == pytest.approx(-0.5)
    worse = result["worse"]["difference"]
    assert (worse.low, worse.high) == pytest.approx((-0.5, -0.5))
    assert result["partial"]["rows"] == 2 and result["partial"]["difference"].value == pytest.approx(0.0)
    assert result["partial"]["untransformed_fve"].value == pytest.approx(1 - base[[0, 2]].mean() / 0.5)
    assert result["none"] == {"rows": 0}
