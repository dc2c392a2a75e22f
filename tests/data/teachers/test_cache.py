"""The resumable answer cache and ``summarize_all``'s bookkeeping."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nla.data.teachers import INSTRUCTION, TeacherArgs, TeacherRequest, build_teacher, cache_key, summarize_all
from nla.data.teachers.cache import CACHE_FILE
from nla.data.teachers.extractive import ExtractiveTeacher
from nla.core.errors import NLAError
from tests.fixtures.loopback import GOOD_ANSWER, SHORT_ANSWER, answer_body

KEY_ENV = "NLA_TEST_TEACHER_KEY"


@pytest.fixture
def openai_teacher(fake_api, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-cache-test")
    args = TeacherArgs(
        provider="openai",
        model="teacher-model",
        base_url=fake_api.base_url,
        api_key_env=KEY_ENV,
        max_concurrency=1,
        max_retries=1,
        retry_base_delay_s=0.01,
        timeout_s=5.0,
    )
    return build_teacher(args)


def requests_for(n, tag="doc"):
    return [TeacherRequest(f"{tag} {i}: the river bends around the mill", " mill") for i in range(n)]


def cache_lines(directory):
    return (directory / CACHE_FILE).read_text().splitlines()


def test_second_run_makes_zero_requests(fake_api, openai_teacher, tmp_path):
    requests = requests_for(5)
    first, report = summarize_all(openai_teacher, requests, cache_dir=tmp_path, progress=True)
    assert (report.cached, report.requested, report.kept) == (0, 5, 5)
    assert len(fake_api.calls) == 5
    second, report = summarize_all(openai_teacher, requests, cache_dir=tmp_path, progress=True)
    assert len(fake_api.calls) == 5
    assert (report.cached, report.requested, report.kept) == (5, 0, 5)
    assert second == first
    record = json.loads(cache_lines(tmp_path)[0])
    assert set(record) == {"key", "provider", "model", "instruction", "features"}
    assert record["provider"] == "openai" and record["model"] == "teacher-model"


def test_progress_survives_an_endpoint_that_goes_down(fake_api, openai_teacher, tmp_path):
    requests = requests_for(6)
    fake_api.respond = lambda n, call: good(call) if n < 3 else (500, {}, b"down")
    with pytest.raises(NLAError, match="3 new answers are saved .* rerun to resume"):
        summarize_all(openai_teacher, requests, cache_dir=tmp_path, progress=False)
    assert len(cache_lines(tmp_path)) == 3
    fake_api.respond = lambda n, call: good(call)
    calls_before = len(fake_api.calls)
    summaries, report = summarize_all(openai_teacher, requests, cache_dir=tmp_path, progress=False)
    assert (report.cached, report.requested, report.kept) == (3, 3, 6)
    assert len(fake_api.calls) - calls_before == 3
    assert all(summary is not None for summary in summaries)


def good(call):
    return 200, {}, answer_body(call.path, GOOD_ANSWER)


def test_failed_rows_are_asked_again_but_short_answers_stay_cached(fake_api, openai_teacher, tmp_path):
    requests = requests_for(3)

    def respond(n, call):
        content = call.body["messages"][0]["content"]
        if "doc 0:" in content:
            return 400, {}, b"rejected"
        return 200, {}, answer_body(call.path, SHORT_ANSWER if "doc 1:" in content else GOOD_ANSWER)

    fake_api.respond = respond
    _, report = summarize_all(openai_teacher, requests, cache_dir=tmp_path, progress=False)
    assert (report.failed, report.dropped, report.kept, report.requested) == (1, 1, 1, 3)
    summaries, report = summarize_all(openai_teacher, requests, cache_dir=tmp_path, progress=False)
    assert (report.cached, report.requested, report.failed, report.dropped) == (2, 1, 1, 1)
    assert [s is None for s in summaries] == [True, True, False]
    assert len(fake_api.calls) == 4


def test_duplicate_requests_are_sent_once(fake_api, openai_teacher):
    a, b = requests_for(2)
    summaries, report = summarize_all(openai_teacher, [a, b, a], progress=False)
    assert report.requested == 2 and len(fake_api.calls) == 2
    assert summaries[0] == summaries[2] is not None and report.total == 3


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path):
    teacher = ExtractiveTeacher()
    requests = requests_for(3)
    summarize_all(teacher, requests[:2], cache_dir=tmp_path, progress=False)
    with (tmp_path / CACHE_FILE).open("a") as cache:
        cache.write('{"key": "0123')
    _, report = summarize_all(teacher, requests, cache_dir=tmp_path, progress=False)
    assert (report.cached, report.requested) == (2, 1)
    _, report = summarize_all(teacher, requests, cache_dir=tmp_path, progress=False)
    assert (report.cached, report.requested) == (3, 0)
    assert len(cache_lines(tmp_path)) == 4


def test_without_cache_dir_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summaries, report = summarize_all(ExtractiveTeacher(), requests_for(2), progress=False)
    assert list(tmp_path.iterdir()) == [] and report.requested == 2 and None not in summaries
    assert "2/2 kept" in str(report)


def test_cache_key_covers_instruction_provider_model_and_request():
    teacher, request = ExtractiveTeacher(), TeacherRequest("some text", " text")
    key = cache_key(teacher, request)
    assert key == cache_key(ExtractiveTeacher(), TeacherRequest("some text", " text")) and len(key) == 64
    variants = [
        (teacher, dataclasses.replace(request, context="some text!")),
        (teacher, dataclasses.replace(request, token="text")),
    ]
    for attribute, value in [("name", "hf"), ("model", "extractive-v2"), ("instruction", INSTRUCTION + " ")]:
        other = ExtractiveTeacher()
        setattr(other, attribute, value)
        variants.append((other, request))
    assert len({key} | {cache_key(t, r) for t, r in variants}) == 1 + len(variants)
