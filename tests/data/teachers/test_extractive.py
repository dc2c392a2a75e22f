"""The offline extractive teacher: deterministic, 2-3 features, the last one about the final token."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nla.data.teachers import MIN_FEATURES, TeacherRequest, summarize_all
from nla.data.teachers.extractive import (ExtractiveTeacher, describe, describe_briefly, document_kind, token_role,
                                          topic_words)

STORY = (
    'The lighthouse keeper climbed the stairs. "The storm is coming," she said, watching the waves. '
    '"Light the lamp," her brother answered, and the keeper lit the lamp before the storm'
)

CASES = [
    (STORY, " storm", "start of a word"),
    ("The committee approved the budget.", ".", "sentence-ending"),
    ("Apples, pears,", ",", "comma"),
    ("Revenue grew to 1,250", "1,250", "number"),
    ("In 2019", "2019", "number"),
    ("First line\n", "\n", "line break"),
    ("The government announced", "ced", "continuation of the word “announced”"),
    ("She walked into the", " the", "function word"),
    ("See the note (", "(", "opening bracket"),
    ("Total: 5 %", " %", "percent sign"),
    ("It costs $", " $", "currency sign"),
    ("x ~", " ~", "symbol"),
    ("", "", "whitespace"),
]


@pytest.mark.parametrize("context, token, role", CASES)
def test_features_end_with_the_final_token(context, token, role):
    features = describe(context, token)
    assert 2 <= len(features) <= 3
    assert all(feature.strip() and "\n" not in feature for feature in features)
    assert json.dumps(token, ensure_ascii=False) in features[-1]
    assert role in features[-1]


def test_same_request_same_output_even_in_another_process():
    features = describe(STORY, " storm")
    assert describe(STORY, " storm") == features
    assert ExtractiveTeacher().summarize([TeacherRequest(STORY, " storm")])[0].features == features
    code = (
        "import json, sys; from nla.data.teachers.extractive import describe; "
        "print(json.dumps(describe(sys.argv[1], ' storm')))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code, STORY], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == features


def test_topic_words_by_frequency_without_stop_words():
    assert topic_words(STORY, k=3) == ["keeper", "lamp", "storm"]


def test_story_mentions_topics_kind_and_open_sentence():
    topic, structure, _ = describe(STORY, " storm")
    assert "dialogue" in topic and "keeper" in topic
    assert "unfinished" in structure and "the lamp before the storm" in structure


@pytest.mark.parametrize(
    "text, kind",
    [
        ("import os\nimport sys\n\ndef main():\n    return 0\n", "source code"),
        ("int x = 1;\nint y = x + 2;\nif (y) { x = y; }\n", "source code"),
        ("Q1 2023: 4,512 units; Q2 2023: 5,118 units; Q3 2023: 6,020 units.", "figures"),
        ("- eggs\n- milk\n- bread\n- butter\n", "list"),
        ("Did you see it? Where did it go? I am not sure.", "questions"),
        ("Photosynthesis converts light energy into chemical energy in plants.", "expository prose"),
    ],
)
def test_document_kind_cues(text, kind):
    assert kind in document_kind(text)


def test_open_quotation_and_bracket_are_reported():
    structure = describe('He whispered "wait (just a moment', " moment")[1]
    assert "quotation is still open" in structure and "bracket is still open" in structure


def test_capitalised_word_start_suggests_a_name():
    role, constraint = token_role("We met Dr. Wat", " Wat")
    assert "capitalised" in role and "name" in constraint


def test_every_extractive_summary_survives_the_feature_filter(tmp_path):
    requests = [TeacherRequest(context, token) for context, token, _ in CASES]
    summaries, report = summarize_all(ExtractiveTeacher(), requests, cache_dir=tmp_path, progress=False)
    assert all(s is not None and len(s.features) >= MIN_FEATURES for s in summaries)
    assert (report.kept, report.dropped, report.failed, report.requested) == (len(CASES), 0, 0, len(CASES))


def test_brief_style_keeps_the_features_and_ends_with_the_last_words_verbatim():
    context = "The garden was quiet after the storm, and Anna walked along the wet path towards the"
    features = describe_briefly(context, " the")
    assert features == [
        "About along, anna, garden; expository prose.",
        "Final token \" the\": the function word “the”.",
        "Ends with: along the wet path towards the",
    ]
    assert sum(len(feature.split()) for feature in features) < sum(len(f.split()) for f in describe(context, " the")) / 2


def test_teacher_style_is_chosen_by_model_and_unknown_styles_are_refused():
    from nla.data.teachers import TeacherArgs, build_teacher
    from nla.core.errors import ConfigError

    brief = build_teacher(TeacherArgs(provider="extractive", model="brief"))
    request = TeacherRequest(context="One two three four five six seven", token=" seven")
    (_, summary), = brief.stream([request])
    assert summary.features[-1] == "Ends with: two three four five six seven"
    assert brief.model != build_teacher(TeacherArgs(provider="extractive")).model
    with pytest.raises(ConfigError, match="teacher.model"):
        build_teacher(TeacherArgs(provider="extractive", model="verbose"))
