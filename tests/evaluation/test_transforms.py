"""The transforms of the steganography check on hand-made explanations, and their paired differences."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from nla.evaluation.bootstrap import RowVariance
from nla.evaluation.text import content_words, sentences
from nla.evaluation.transforms import (
    LOCAL,
    PARAPHRASE,
    apply_local,
    apply_rewrite,
    differences,
    first_sentence,
    fve_kept,
    reorder_lines,
    reorder_sentences,
    replace_content_words,
    score_transformed,
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


def test_rows_a_transform_did_not_change_are_left_out_and_counted():
    # Sentence reordering leaves a one-sentence explanation as it was (row 2 up to white space only).
    texts = ["The passage is a recipe.", "It lists flour. It lists water.", "  The tone is plain.\n",
             "A storm comes. The sailor waits."]
    rewritten = apply_local("reorder_sentences", texts, seed=0)
    assert rewritten[1] == "It lists water. It lists flour." and rewritten[2] == "The tone is plain."
    base = np.array([0.4, 0.8, 1.2, 0.6])
    read = []

    def score(rows, new_texts):
        read.append((list(rows), list(new_texts)))
        return base[rows] + 0.5  # every changed row loses 0.5 of MSE = 1.0 of FVE at Var 0.5

    mse, left_out = score_transformed(texts, rewritten, score)
    assert read == [([1, 3], [rewritten[1], rewritten[3]])]  # the AR reads the changed rows only
    assert left_out == {"unchanged": 2, "failed": 0}
    result = differences(base, {"reorder_sentences": mse}, 0.5, np.array(["a", "a", "b", "c"]), 200, 0)
    # Over the two changed rows: -1.0. Counting the unchanged rows as differences of 0 would read -0.5.
    assert result["reorder_sentences"]["rows"] == 2
    assert result["reorder_sentences"]["difference"].value == pytest.approx(-1.0)


class Rewriter:
    """A chat model that gives each text back verbatim, rewrites it, or answers without tags."""

    def __init__(self):
        self.asked = []

    def answer(self, prompts):
        self.asked += prompts
        answers = []
        for prompt in prompts:
            text = tagged_text(prompt)
            if "verbatim" in text:
                answers.append(f"<text>\n{text}\n</text>")
            elif "refused" in text:
                answers.append("I cannot help with that.")
            else:
                answers.append(f"<text>In other words: {text}</text>")
        return answers


def test_a_paraphrase_given_back_verbatim_is_unchanged_and_one_not_given_is_failed():
    texts = ["A verbatim answer.", "A refused answer.", "A rewritten answer.", "Another rewritten one."]
    rewriter = Rewriter()
    rewritten = apply_rewrite("paraphrase", texts, rewriter, "French")
    assert rewriter.asked == [PARAPHRASE.format(text=t) for t in texts]
    assert rewritten == [texts[0], None, "In other words: " + texts[2], "In other words: " + texts[3]]
    mse, left_out = score_transformed(texts, rewritten, lambda rows, new_texts: np.full(len(rows), 0.25))
    assert left_out == {"unchanged": 1, "failed": 1}
    assert np.isnan(mse[:2]).all() and list(mse[2:]) == [0.25, 0.25]


def test_the_share_of_fve_kept_is_transformed_over_untransformed_fve_on_the_same_draws():
    base, other = np.array([0.4, 0.8, 1.2, 0.6]), np.array([0.9, 1.3, 1.7, 1.1])
    # Var 2: FVE 1 - 0.75/2 = 0.625 untransformed, 1 - 1.25/2 = 0.375 transformed: 60% kept.
    draws = [np.array([0, 1]), np.array([2, 3]), np.array([2, 2])]
    # Draw 1: 0.45 / 0.7; draw 2: 0.3 / 0.55; draw 3: untransformed FVE 1 - 1.2/2 = 0.4, transformed 0.15.
    per_draw = sorted([0.45 / 0.7, 0.3 / 0.55, 0.15 / 0.4])
    kept = fve_kept(base, other, 2.0, draws)
    assert kept.value == pytest.approx(0.6)
    assert kept.low == pytest.approx(per_draw[0] + 0.05 * (per_draw[1] - per_draw[0]))
    assert kept.high == pytest.approx(per_draw[1] + 0.95 * (per_draw[2] - per_draw[1]))
    # Without FVE to keep (untransformed FVE <= 0) the share is undefined, and such draws drop out.
    assert np.isnan(fve_kept(base, other, 0.75, draws).value)
    # Var 1: draw 3's untransformed FVE is 1 - 1.2 < 0, so draw 1 alone (-0.1 / 0.4) makes the interval.
    kept = fve_kept(base, other, 1.0, [draws[0], draws[2]])
    assert kept.value == pytest.approx(-0.25 / 0.25) and (kept.low, kept.high) == pytest.approx((-0.25, -0.25))


def test_each_comparison_divides_by_the_variance_of_its_own_rows():
    # Normalised to norm sqrt(2): e1, e2, -e1, e1 have rawvar 1 - ||mu||^2 / 2 = 0.875 (mu = sqrt2 (1, 1) / 4);
    # rows 0 and 2 (e1, -e1) alone have mu = 0 and rawvar 1.
    variance = RowVariance(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.5, 0.0]]))
    base = np.array([0.4, 0.8, 1.2, 0.6])
    partial = np.array([0.6, np.nan, 1.4, np.nan])
    result = differences(base, {"partial": partial}, variance, np.array(["a", "b", "c", "d"]), 50, 0)["partial"]
    assert variance() == pytest.approx(0.875)
    assert result["untransformed_fve"].value == pytest.approx(1 - 0.8 / 1.0)
    assert result["fve"].value == pytest.approx(1 - 1.0 / 1.0)
    assert result["difference"].value == pytest.approx(-0.2)
    assert result["fve_kept"].value == pytest.approx(0.0)
