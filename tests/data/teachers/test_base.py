"""Instruction rendering, answer parsing, the Teacher interface and the provider factory."""

from __future__ import annotations

import pytest

from nla.data.teachers import (
    INSTRUCTION,
    INSTRUCTION_VERSION,
    PROVIDERS,
    Summary,
    Teacher,
    TeacherArgs,
    TeacherRequest,
    build_teacher,
    clean_feature,
    parse_features,
    render_instruction,
)
from nla.data.teachers.extractive import ExtractiveTeacher
from nla.core.errors import ConfigError


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("1. Counting words.", "Counting words."),
        ("  12)  A numbered item ", "A numbered item"),
        ("(3) In parentheses", "In parentheses"),
        ("- dash", "dash"),
        ("* star", "star"),
        ("• bullet", "bullet"),
        ("**2.** bold number", "bold number"),
        ("No marker\t here", "No marker here"),
        ("3.5 percent is a number, not a marker", "3.5 percent is a number, not a marker"),
    ],
)
def test_clean_feature_strips_list_markers_and_whitespace(raw, cleaned):
    assert clean_feature(raw) == cleaned


def test_parse_numbered_features_with_continuation_lines():
    answer = (
        "Sure!\n<features>\n1. A legal contract\n   with formal clauses.\n\n"
        "2. Second point.\n3. The token ','.\n</features>\nDone."
    )
    assert parse_features(answer) == ["A legal contract with formal clauses.", "Second point.", "The token ','."]


def test_parse_unmarked_lines_and_case_of_tags():
    assert parse_features("<FEATURES>\nfirst idea\nsecond idea\n</FEATURES>") == ["first idea", "second idea"]


@pytest.mark.parametrize(
    "answer",
    [
        "1. no tags at all\n2. still none",
        "<features>\n1. cut off before the closing tag\n2. the last one is incompl",
        "<features>\n   \n</features>",
    ],
)
def test_unusable_answers_yield_no_features(answer):
    assert parse_features(answer) == []


def test_render_instruction_shows_context_and_quoted_token():
    request = TeacherRequest('def f(x):\n    return {"a": x}\n', "\n")
    prompt = render_instruction(request)
    assert request.context in prompt
    assert 'right after the token "\\n".' in prompt
    assert prompt.count("<features>") == 1 and prompt.count("</features>") == 1
    assert INSTRUCTION_VERSION and "{context}" in INSTRUCTION


def test_summary_text_is_one_feature_per_line():
    assert Summary(["one.", "two."]).text == "one.\ntwo."


class FixedTeacher(Teacher):
    """Answers in reverse order with a full answer, a short one and a failure, to test ``summarize``."""

    name = "fixed"
    model = "fixed-v1"

    def stream(self, requests):
        answers = [Summary(["a", "b"]), Summary(["only one"]), None]
        for index in reversed(range(len(requests))):
            yield index, answers[index]


def test_summarize_orders_results_and_hides_short_answers():
    requests = [TeacherRequest(f"text {i}", str(i)) for i in range(3)]
    assert FixedTeacher().summarize(requests) == [Summary(["a", "b"]), None, None]


def test_default_provider_is_offline_extractive():
    assert isinstance(build_teacher(TeacherArgs()), ExtractiveTeacher)


def test_unknown_provider_names_the_field_and_the_choices():
    with pytest.raises(ConfigError) as caught:
        build_teacher(TeacherArgs(provider="gemini"))
    assert caught.value.field == "teacher.provider"
    assert all(name in str(caught.value) for name in PROVIDERS)


@pytest.mark.parametrize("provider", ["hf", "openai", "anthropic"])
def test_model_is_required_for_model_providers(provider):
    with pytest.raises(ConfigError) as caught:
        build_teacher(TeacherArgs(provider=provider))
    assert caught.value.field == "teacher.model"


@pytest.mark.parametrize(
    "field, value",
    [("max_concurrency", 0), ("max_retries", -1), ("timeout_s", 0.0), ("temperature", -0.5), ("batch_size", 0)],
)
def test_out_of_range_settings_are_config_errors(field, value):
    with pytest.raises(ConfigError) as caught:
        build_teacher(TeacherArgs(provider="openai", model="m", base_url="http://127.0.0.1:9", **{field: value}))
    assert caught.value.field == f"teacher.{field}"
