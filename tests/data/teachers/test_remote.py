"""The OpenAI-compatible and Anthropic clients against a real local HTTP server."""

from __future__ import annotations

import json
import socket
import time

import pytest

from nla.data.teachers import TeacherArgs, TeacherRequest, build_teacher, summarize_all
from nla.data.teachers.remote import AnthropicTeacher, OpenAITeacher, parse_retry_after
from nla.core.errors import ConfigError, NLAError
from tests.fixtures.loopback import GOOD_ANSWER, SHORT_ANSWER, answer_body

PROVIDERS = ["openai", "anthropic"]
KEY_ENV = "NLA_TEST_TEACHER_KEY"
KEY = "sk-test-0123456789"
REQUEST = TeacherRequest("Mix the butter and sugar, then add two cups of flour", " flour")


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def make_teacher(provider, base_url, **overrides):
    settings = dict(
        provider=provider,
        model="teacher-model",
        base_url=base_url,
        api_key_env=KEY_ENV,
        max_retries=2,
        retry_base_delay_s=0.01,
        timeout_s=5.0,
    )
    settings.update(overrides)
    return build_teacher(TeacherArgs(**settings))


def good(path):
    return (200, {}, answer_body(path, GOOD_ANSWER))


def path_of(provider):
    return "/v1/messages" if provider == "anthropic" else "/v1/chat/completions"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_good_answer_is_parsed_and_the_request_is_well_formed(fake_api, provider):
    teacher = make_teacher(provider, fake_api.base_url)
    (summary,) = teacher.summarize([REQUEST])
    assert summary.features == [
        "The passage is a cooking recipe, so measured quantities and imperative steps dominate.",
        "The instructions build toward baking, so oven temperatures and timings are expected.",
        'The final token " flour" closes an ingredient line, so a line break or a new ingredient follows.',
    ]
    (call,) = fake_api.calls
    assert call.path == path_of(provider)
    assert call.body["model"] == "teacher-model"
    assert call.body["temperature"] == 1.0 and call.body["max_tokens"] == 300
    (message,) = call.body["messages"]
    assert message["role"] == "user"
    assert REQUEST.context in message["content"] and '" flour"' in message["content"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_key_goes_in_the_provider_header_and_nowhere_else(fake_api, provider, tmp_path):
    teacher = make_teacher(provider, fake_api.base_url)
    summarize_all(teacher, [REQUEST], cache_dir=tmp_path, progress=False)
    headers = fake_api.calls[0].headers
    if provider == "openai":
        assert headers["authorization"] == f"Bearer {KEY}"
        assert "x-api-key" not in headers
    else:
        assert headers["x-api-key"] == KEY
        assert headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in headers
    assert headers["content-type"] == "application/json"
    assert KEY not in repr(teacher)
    assert KEY not in "".join(p.read_text() for p in tmp_path.iterdir())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_key_names_the_variable_to_set(monkeypatch, provider):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=KEY_ENV) as caught:
        make_teacher(provider, "http://127.0.0.1:9")
    assert caught.value.field == "teacher.api_key_env"


def test_default_key_variables(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        make_teacher("anthropic", None, api_key_env=None)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_teacher("openai", None, api_key_env=None)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    teacher = make_teacher("anthropic", None, api_key_env=None)
    assert isinstance(teacher, AnthropicTeacher) and teacher.url == "https://api.anthropic.com/v1/messages"


def test_local_openai_compatible_server_needs_no_key(fake_api, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    teacher = make_teacher("openai", fake_api.base_url + "/v1/", api_key_env=None)
    assert isinstance(teacher, OpenAITeacher)
    assert teacher.url == fake_api.base_url + "/v1/chat/completions"
    assert teacher.summarize([REQUEST])[0] is not None
    assert "authorization" not in fake_api.calls[0].headers


@pytest.mark.parametrize("provider", PROVIDERS)
def test_429_honours_retry_after_then_succeeds(fake_api, provider):
    fake_api.respond = lambda n, call: (429, {"Retry-After": "1"}, b"slow down") if n == 0 else good(call.path)
    teacher = make_teacher(provider, fake_api.base_url)
    start = time.monotonic()
    (summary,) = teacher.summarize([REQUEST])
    assert time.monotonic() - start >= 1.0
    assert summary is not None and len(fake_api.calls) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_500_then_success(fake_api, provider):
    fake_api.respond = lambda n, call: (500, {}, b"boom") if n == 0 else good(call.path)
    (summary,) = make_teacher(provider, fake_api.base_url).summarize([REQUEST])
    assert len(summary.features) == 3 and len(fake_api.calls) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_invalid_json_is_retried(fake_api, provider):
    fake_api.respond = lambda n, call: (200, {}, b"{not json") if n == 0 else good(call.path)
    (summary,) = make_teacher(provider, fake_api.base_url).summarize([REQUEST])
    assert summary is not None and len(fake_api.calls) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_answer_field_fails_the_row_without_crashing(fake_api, provider):
    fake_api.respond = lambda n, call: (200, {}, b'{"id": "x", "content": [], "choices": []}')
    teacher = make_teacher(provider, fake_api.base_url, max_retries=3)
    summaries, report = summarize_all(teacher, [REQUEST], progress=False)
    assert summaries == [None]
    assert (report.failed, report.dropped, report.requested) == (1, 0, 1)
    assert len(fake_api.calls) == 4


@pytest.mark.parametrize("provider", PROVIDERS)
def test_endpoint_that_always_fails_raises_after_the_retries(fake_api, provider):
    fake_api.respond = lambda n, call: (503, {}, b"overloaded\nplease wait")
    teacher = make_teacher(provider, fake_api.base_url, max_retries=3)
    with pytest.raises(NLAError, match="after 4 attempts") as caught:
        teacher.summarize([REQUEST])
    assert len(fake_api.calls) == 4
    assert "\n" not in str(caught.value) and "HTTP 503" in str(caught.value)


def test_unreachable_endpoint_raises_one_line_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    teacher = make_teacher("anthropic", f"http://127.0.0.1:{port}", max_retries=1)
    with pytest.raises(NLAError, match="failed after 2 attempts") as caught:
        teacher.summarize([REQUEST])
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_refused_key_stops_at_once(fake_api, provider):
    fake_api.respond = lambda n, call: (401, {}, b'{"error": "invalid key"}')
    with pytest.raises(NLAError, match=KEY_ENV) as caught:
        make_teacher(provider, fake_api.base_url).summarize([REQUEST])
    assert len(fake_api.calls) == 1 and KEY not in str(caught.value)


def test_bad_request_fails_only_that_row(fake_api):
    requests = [REQUEST, TeacherRequest("far too long " * 5, " long")]
    fake_api.respond = lambda n, call: (
        (400, {}, b"context too long") if "far too long" in call.body["messages"][0]["content"] else good(call.path)
    )
    summaries, report = summarize_all(make_teacher("openai", fake_api.base_url), requests, progress=False)
    assert summaries[0] is not None and summaries[1] is None
    assert report.failed == 1 and len(fake_api.calls) == 2


def test_timeout_is_retried(fake_api):
    def respond(n, call):
        if n == 0:
            time.sleep(1.0)
        return good(call.path)

    fake_api.respond = respond
    teacher = make_teacher("anthropic", fake_api.base_url, timeout_s=0.3)
    (summary,) = teacher.summarize([REQUEST])
    assert summary is not None and len(fake_api.calls) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_concurrency_limit_is_respected(fake_api, provider):
    fake_api.delay_s = 0.2
    requests = [TeacherRequest(f"document number {i} ends here", " here") for i in range(9)]
    teacher = make_teacher(provider, fake_api.base_url, max_concurrency=3)
    summaries = teacher.summarize(requests)
    assert all(s is not None for s in summaries) and len(fake_api.calls) == 9
    assert fake_api.peak == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_short_answers_are_dropped_and_counted(fake_api, provider):
    requests = [TeacherRequest(f"row {i} of the table", " table") for i in range(4)]
    fake_api.respond = lambda n, call: (
        200,
        {},
        answer_body(call.path, SHORT_ANSWER if "row 1 " in call.body["messages"][0]["content"] else GOOD_ANSWER),
    )
    summaries, report = summarize_all(make_teacher(provider, fake_api.base_url), requests, progress=False)
    assert [s is None for s in summaries] == [False, True, False, False]
    assert (report.dropped, report.failed, report.kept) == (1, 0, 3)


def test_anthropic_text_after_a_thinking_block(fake_api):
    content = [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": GOOD_ANSWER}]
    fake_api.respond = lambda n, call: (200, {}, json.dumps({"content": content}).encode())
    (summary,) = make_teacher("anthropic", fake_api.base_url).summarize([REQUEST])
    assert len(summary.features) == 3 and len(fake_api.calls) == 1


def test_local_server_asking_for_a_key_says_where_to_name_it(fake_api, monkeypatch):
    fake_api.respond = lambda n, call: (401, {}, b"unauthorized")
    teacher = make_teacher("openai", fake_api.base_url, api_key_env=None)
    with pytest.raises(NLAError, match="teacher.api_key_env: .* wants an API key"):
        teacher.summarize([REQUEST])


def test_base_url_without_scheme_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        make_teacher("openai", "localhost:8000")
    assert caught.value.field == "teacher.base_url"


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
