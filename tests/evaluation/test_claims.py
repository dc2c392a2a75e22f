"""Claim consistency on a hand-made example, and the judge against a loopback OpenAI-compatible server."""

from __future__ import annotations

import numpy as np
import pytest

from nla.data.teachers import TeacherArgs, build_teacher
from nla.evaluation.bootstrap import document_resamples
from nla.evaluation.claims import (
    diversity,
    judge_claims,
    matching_rows,
    neighbours,
    overlap,
    score_control,
    score_recurrence,
    split_claims,
    summary,
    verdict,
)
from tests.fixtures.loopback import answer_body

# Five adjacent positions of one text, one of another. The recipe claim recurs at every neighbour;
# the quoted final tokens differ at each position; "It is about rain." appears once.
EXPLANATIONS = [
    "The passage is a bread recipe.\nThe final token \" flour\" ends a line.",
    "A recipe for bread, step by step.\nThe final token \" and\" joins two items.",
    "The passage is a bread recipe.\nIt is about rain.",
    "Bread recipe passage.\nThe last word \"water\" is an ingredient.",
    None,
    "The passage is a bread recipe.",
]
DOCUMENTS = ["a", "a", "a", "a", "a", "b"]
POSITIONS = [10, 11, 12, 13, 14, 3]


def claims():
    return [claim for row, text in enumerate(EXPLANATIONS) for claim in split_claims(row, text)]


def test_claims_are_sentences_with_content_words_and_specific_ones_quote_or_name_the_token():
    found = split_claims(0, EXPLANATIONS[0])
    assert [c.text for c in found] == ["The passage is a bread recipe.", 'The final token " flour" ends a line.']
    assert found[0].words == {"passage", "bread", "recipe"} and [c.specific for c in found] == [False, True]
    assert split_claims(4, None) == [] and split_claims(0, "It is. Of the.") == []


def test_neighbours_are_adjacent_ranks_of_the_same_text():
    assert neighbours(DOCUMENTS, POSITIONS, window=1) == [[1], [0, 2], [1, 3], [2, 4], [3], []]
    assert neighbours(DOCUMENTS, [14, 13, 12, 11, 10, 3], window=1)[0] == [1]
    assert neighbours(DOCUMENTS, POSITIONS, window=5)[0] == [1, 2, 3, 4]


def test_recurrence_on_the_hand_made_example():
    assert overlap(frozenset({"passage", "bread", "recipe"}), frozenset({"bread", "recipe", "step"})) == 0.5
    found = claims()
    score_recurrence(found, neighbours(DOCUMENTS, POSITIONS, window=2), threshold=0.5)
    by_text = {(c.row, c.text): c.recurrence for c in found}
    # Row 0's neighbours within 2 ranks: rows 1 and 2. Row 1 says "recipe for bread, step by step"
    # (Jaccard 2/4 = 0.5 with "passage bread recipe": a match), row 2 repeats it: 2 of 2.
    assert by_text[(0, "The passage is a bread recipe.")] == 1.0
    # Row 2's neighbours: 0, 1, 3, 4; row 4 has no explanation, so 3 of 4 repeat the recipe.
    assert by_text[(2, "The passage is a bread recipe.")] == 0.75
    assert by_text[(2, "It is about rain.")] == 0.0
    # "final token ... ends a line" (final, token, end, line) vs row 1's (final, token, join, two, item):
    # 2 of 7 words shared, no match.
    assert by_text[(0, 'The final token " flour" ends a line.')] == 0.0
    # Another text's only position has no neighbours: its recurrence is undefined.
    assert np.isnan(by_text[(5, "The passage is a bread recipe.")])
    result = summary(found, len(EXPLANATIONS), document_resamples(np.array(DOCUMENTS), 100, 0), recurring_at=0.5)
    assert result["claims"] == 9 and result["with_neighbours"] == 8
    recurring = sum(c.recurrence >= 0.5 for c in found if not np.isnan(c.recurrence))
    assert result["recurring"]["rate"].value == pytest.approx(recurring / 8)
    assert result["specific"]["rate"].value == pytest.approx(3 / 9) and "supported" not in result


def test_verdicts():
    assert verdict("YES.") is True and verdict("no, it does not") is False and verdict("Maybe") is None
    assert verdict(None) is None


def test_judge_through_an_openai_compatible_server(fake_api):
    def respond(number, call):
        prompt = call.body["messages"][0]["content"]
        return 200, {}, answer_body(call.path, "YES" if "recipe" in prompt.split("<claim>")[1] else "NO")

    fake_api.respond = respond
    judge = build_teacher(TeacherArgs(provider="openai", model="judge", base_url=fake_api.base_url, temperature=0))
    found = claims()
    contexts = ["Mix the flour"] * len(EXPLANATIONS)
    judge_claims(found, contexts, judge)
    assert len(fake_api.calls) == len(found)
    assert all("<text>\nMix the flour\n</text>" in call.body["messages"][0]["content"] for call in fake_api.calls)
    assert [c.supported for c in found] == ["recipe" in c.text for c in found]
    score_recurrence(found, neighbours(DOCUMENTS, POSITIONS, 2), 0.5)
    result = summary(found, len(EXPLANATIONS), document_resamples(np.array(DOCUMENTS), 100, 0), 0.5)
    assert result["supported"]["all"]["rate"].value == pytest.approx(5 / 9)
    assert result["supported"]["specific"]["rate"].value == 0.0 and result["supported"]["thematic"]["claims"] == 6


def test_the_control_is_the_share_of_other_documents_positions_that_repeat_the_claim():
    found = claims()
    matches = matching_rows(found, len(EXPLANATIONS), threshold=0.5)
    # The recipe claim of row 0 is matched in rows 0-3 (row 1 at Jaccard 2/4) and 5; row 4 has no answer.
    assert list(matches[0]) == [True, True, True, True, False, True]
    score_control(found, matches, DOCUMENTS)
    control = {(c.row, c.text): c.control for c in found}
    # Text "a"'s only other position is row 5, which holds the recipe claim and nothing else.
    assert control[(0, "The passage is a bread recipe.")] == 1.0
    assert control[(1, "A recipe for bread, step by step.")] == 1.0
    assert control[(2, "It is about rain.")] == 0.0 and control[(0, 'The final token " flour" ends a line.')] == 0.0
    # Row 5's other positions are rows 0-4: four of five hold the recipe (row 4, without an answer, counts).
    assert control[(5, "The passage is a bread recipe.")] == 0.8


def test_recurrence_beside_its_control_on_the_hand_made_example():
    found = claims()
    score_recurrence(found, neighbours(DOCUMENTS, POSITIONS, window=2), threshold=0.5)
    score_control(found, matching_rows(found, len(EXPLANATIONS), 0.5), DOCUMENTS)
    result = summary(found, len(EXPLANATIONS), document_resamples(np.array(DOCUMENTS), 100, 0), recurring_at=0.5)
    recurrence = result["recurrence"]
    # The 8 claims with neighbours (text "a"): recurrences 1, 0, 1, 0, 3/4, 0, 2/3, 0; controls 1, 0 alternating.
    assert recurrence["claims"] == 8
    assert recurrence["mean"].value == pytest.approx((2 + 3 / 4 + 2 / 3) / 8)
    assert recurrence["control"].value == pytest.approx(0.5)
    # The recipe recurs at neighbours, but as often in the other text: no excess, rather a deficit.
    assert recurrence["excess"].value == pytest.approx((2 + 3 / 4 + 2 / 3) / 8 - 0.5)


def test_diversity_on_the_hand_made_example():
    found = claims()
    result = diversity(found, matching_rows(found, len(EXPLANATIONS), 0.5), DOCUMENTS,
                       document_resamples(np.array(DOCUMENTS), 100, 0))
    # Row 5 ({passage, bread, recipe}) against the words of rows 0-3 of the other text, quoted ones
    # included: 3 of 8 (end, final, flour, line, token added), 2 of 8, 3 of 4 (rain), 3 of 7.
    assert result["cross_document_overlap"].value == pytest.approx((3 / 8 + 2 / 8 + 3 / 4 + 3 / 7) / 4)
    assert result["widest_claim"]["claim"] == "The passage is a bread recipe."
    assert result["widest_claim"]["documents"].value == 1.0


def table(explanation_of_document):
    """Three documents of four adjacent positions, each explained by ``explanation_of_document(document)``."""
    documents = [d for d in "abc" for _ in range(4)]
    found = [claim for row, d in enumerate(documents) for claim in split_claims(row, explanation_of_document(d))]
    score_recurrence(found, neighbours(documents, list(range(12)), window=2), 0.5)
    matches = matching_rows(found, len(documents), 0.5)
    score_control(found, matches, documents)
    draws = document_resamples(np.array(documents), 200, 0)
    return summary(found, len(documents), draws, 0.5)["recurrence"], diversity(found, matches, documents, draws)


def test_a_constant_claim_recurs_everywhere_and_shows_as_collapse():
    recurrence, spread = table(lambda document: "The text opens a story.")
    assert recurrence["mean"].value == 1.0 and recurrence["control"].value == 1.0
    excess = recurrence["excess"]
    assert (excess.value, excess.low, excess.high) == (0.0, 0.0, 0.0)
    assert spread["cross_document_overlap"].value == 1.0
    assert spread["widest_claim"]["documents"].value == 1.0


def test_claims_that_recur_within_a_document_only_have_excess_recurrence():
    topics = {"a": "The passage is a bread recipe.", "b": "A sailor watches the storm.",
              "c": "The court rules on taxes."}
    recurrence, spread = table(topics.get)
    assert recurrence["mean"].value == 1.0 and recurrence["control"].value == 0.0
    assert recurrence["excess"].value == 1.0 and recurrence["excess"].beyond_noise
    assert spread["cross_document_overlap"].value == 0.0
    assert spread["widest_claim"]["documents"].value == pytest.approx(1 / 3)
