"""Teachers behind an HTTP API: any OpenAI-compatible chat completions server, or Anthropic's Messages API.

Standard library only. Requests run in a bounded thread pool; 429, 5xx, timeouts, connection errors
and malformed bodies are retried with exponential backoff and jitter (a ``Retry-After`` header wins).
A request that keeps failing on transport errors means the endpoint is down, which stops the run with
an ``NLAError``; one that keeps getting malformed bodies, or a 4xx about itself, only fails that row.
The API key is read from the environment once and never logged, stored or shown in a repr.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from nla.data.teachers.base import (
    DEFAULT_BASE_URLS,
    Summary,
    Teacher,
    TeacherArgs,
    TeacherRequest,
    api_key_env_name,
    parse_features,
    render_instruction,
)
from nla.core.errors import ConfigError, NLAError

log = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _snippet(raw: bytes | str, limit: int = 200) -> str:
    """A one-line, bounded excerpt of a response body for error messages."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())[:limit]


def _error_body(error: urllib.error.HTTPError) -> str:
    try:
        return _snippet(error.read())
    except (OSError, http.client.HTTPException):
        return "(body unreadable)"
    finally:
        error.close()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay in seconds, or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Malformed(Exception):
    """The server answered 200 with a body we cannot read an answer from."""


class RemoteTeacher(Teacher):
    """Shared client: pooling, retries, error policy. Subclasses say where and what to send."""

    path: str

    def __init__(self, args: TeacherArgs) -> None:
        self.args = args
        self.model = args.model
        root = (args.base_url or DEFAULT_BASE_URLS[self.name]).rstrip("/")
        if not root.startswith(("http://", "https://")):
            raise ConfigError("teacher.base_url", f"'{args.base_url}' is not an http:// or https:// URL")
        self.url = (root if root.endswith("/v1") else root + "/v1") + self.path
        self.key_env = api_key_env_name(args)
        self._key = None
        if self.key_env is not None:
            self._key = os.environ.get(self.key_env)
            if not self._key:
                raise ConfigError(
                    "teacher.api_key_env",
                    f"the {self.name} teacher needs an API key: set the environment variable {self.key_env}",
                )
        self._opener = urllib.request.build_opener()
        self._jitter = random.Random()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, model={self.model!r}, key_env={self.key_env!r})"

    @abstractmethod
    def _headers(self) -> dict[str, str]:
        """Request headers, the key included."""

    def _body(self, prompt: str) -> dict:
        """JSON request body for one user message (both APIs accept the same four fields)."""
        return {
            "model": self.model,
            "max_tokens": self.args.max_tokens,
            "temperature": self.args.temperature,
            "messages": [{"role": "user", "content": prompt}],
        }

    @abstractmethod
    def _answer(self, payload: dict) -> str:
        """The answer text of a decoded response; a lookup error when the body has none."""

    def stream(self, requests: Sequence[TeacherRequest]) -> Iterator[tuple[int, Summary | None]]:
        messages = [render_instruction(request, self.instruction) for request in requests]
        for index, text in self._texts(messages):
            yield index, None if text is None else Summary(parse_features(text))

    def answer(self, messages: Sequence[str]) -> list[str | None]:
        answers: list[str | None] = [None] * len(messages)
        for index, text in self._texts(messages):
            answers[index] = text
        return answers

    def _texts(self, messages: Sequence[str]) -> Iterator[tuple[int, str | None]]:
        """``(index, answer text or None)`` for each user message, as the answers arrive."""
        stop = threading.Event()
        limit = self.args.max_concurrency
        pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix=f"teacher-{self.name}")
        todo = iter(enumerate(messages))
        pending: dict[Future, int] = {}

        def refill() -> None:
            # Submitting lazily keeps memory flat for a million requests; twice the limit keeps the
            # pool busy while answers are handed out.
            for index, message in todo:
                pending[pool.submit(self._ask, message, stop)] = index
                if len(pending) >= 2 * limit:
                    return

        try:
            refill()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                error = None
                # Answers that arrived together with a fatal error are still handed out, so they get cached.
                for future in done:
                    index = pending.pop(future)
                    if future.exception() is not None:
                        error = error or future.exception()
                        continue
                    yield index, future.result()
                if error is not None:
                    raise error
                refill()
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = self.args.retry_max_delay_s
        if retry_after is not None:
            return min(retry_after, cap)
        backoff = min(cap, self.args.retry_base_delay_s * 2**attempt)
        return backoff * (0.5 + 0.5 * self._jitter.random())

    def _ask(self, message: str, stop: threading.Event) -> str | None:
        """The answer text, None when this request failed, NLAError when the endpoint is unusable."""
        body = json.dumps(self._body(message)).encode()
        post = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        attempts = 1 + self.args.max_retries
        last_error, malformed = "", False
        retry_after: float | None = None
        for attempt in range(attempts):
            if stop.wait(self._delay(attempt - 1, retry_after) if attempt else 0.0):
                return None
            retry_after = None
            try:
                with self._opener.open(post, timeout=self.args.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as error:
                detail = f"HTTP {error.code}: {_error_body(error)}"
                self._raise_if_fatal(error.code, detail)
                if not _retryable(error.code):
                    log.warning("teacher request rejected by %s (%s); this row is skipped", self.url, detail)
                    return None
                last_error, malformed = detail, False
                retry_after = parse_retry_after(error.headers.get("Retry-After"))
                continue
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                last_error, malformed = f"{type(error).__name__}: {_snippet(str(error))}", False
                continue
            try:
                return self._read_answer(raw)
            except _Malformed as error:
                last_error, malformed = f"malformed response ({error})", True
        if malformed:
            log.warning("teacher at %s sent %d malformed answers (%s); row skipped", self.url, attempts, last_error)
            return None
        raise NLAError(f"teacher request to {self.url} failed after {attempts} attempts (last error: {last_error})")

    def _read_answer(self, raw: bytes) -> str:
        try:
            payload = json.loads(raw)
        except ValueError as error:
            raise _Malformed(f"invalid JSON: {_snippet(raw, 80)}") from error
        try:
            text = self._answer(payload)
        except (KeyError, IndexError, TypeError, AttributeError, StopIteration):
            text = None
        if not isinstance(text, str):
            raise _Malformed(f"no answer text in {_snippet(raw, 80)}")
        return text

    def _raise_if_fatal(self, status: int, detail: str) -> None:
        """Errors that every request would hit alike stop the run at once instead of failing each row."""
        if status in (401, 403) and self.key_env:
            raise NLAError(f"teacher.api_key_env: {self.url} refused the API key in ${self.key_env} ({detail})")
        if status in (401, 403):
            raise NLAError(f"teacher.api_key_env: {self.url} wants an API key ({detail}); name its variable here")
        if status == 404:
            raise NLAError(f"teacher: {self.url} answered {detail}; check teacher.base_url and teacher.model")


class OpenAITeacher(RemoteTeacher):
    """Any server that speaks ``POST /v1/chat/completions``: OpenAI, vLLM, llama.cpp, SGLang..."""

    name = "openai"
    path = "/chat/completions"

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self._key:
            headers["authorization"] = f"Bearer {self._key}"
        return headers

    def _answer(self, payload: dict) -> str:
        return payload["choices"][0]["message"]["content"]


class AnthropicTeacher(RemoteTeacher):
    """Anthropic's Messages API, ``POST /v1/messages``."""

    name = "anthropic"
    path = "/messages"

    def _headers(self) -> dict[str, str]:
        return {"x-api-key": self._key, "anthropic-version": ANTHROPIC_VERSION, "content-type": "application/json"}

    def _answer(self, payload: dict) -> str:
        # The answer is content[0] unless the model thought first; thinking blocks come before the text.
        return next(block["text"] for block in payload["content"] if block.get("type", "text") == "text")
