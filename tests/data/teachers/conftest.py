"""A real HTTP server on 127.0.0.1 that plays an OpenAI-compatible or Anthropic endpoint for the tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

GOOD_ANSWER = """Here are the features.
<features>
1. The passage is a cooking recipe, so measured quantities and imperative steps dominate.
**2.** The instructions build toward baking, so oven temperatures and timings are expected.
- The final token " flour" closes an ingredient line, so a line break or a new ingredient follows.
</features>"""

SHORT_ANSWER = "<features>\n1. Only one thing stands out here.\n</features>"


@dataclass
class Call:
    """One request as the server received it."""

    path: str
    """Request path, e.g. ``/v1/messages``."""
    headers: dict[str, str]
    """Headers with lower-cased names."""
    body: dict | None
    """The decoded JSON body, None when it was not JSON."""


def answer_body(path: str, text: str) -> bytes:
    """A successful response carrying ``text``, shaped like the API that ``path`` belongs to."""
    if path.endswith("/messages"):
        payload = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": text}]}
    else:
        message = {"role": "assistant", "content": text}
        payload = {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}
    return json.dumps(payload).encode()


Reply = tuple[int, dict[str, str], bytes]


@dataclass
class FakeAPI:
    """Records every call and answers with ``respond(call_number, call)``; tracks peak concurrency."""

    respond: Callable[[int, Call], Reply] = lambda number, call: (200, {}, answer_body(call.path, GOOD_ANSWER))
    """(status, headers, body) for the call with this 0-based number; a good answer by default."""
    delay_s: float = 0.0
    """Time each call holds its connection before answering, so overlapping calls can be counted."""
    calls: list[Call] = field(default_factory=list)
    """Every call received, in arrival order."""
    active: int = 0
    """Calls being handled right now."""
    peak: int = 0
    """Most calls handled at the same time."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Guards the counters and the call list across handler threads."""
    server: ThreadingHTTPServer | None = None
    """The running server (set by the fixture)."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("content-length", 0)))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        call = Call(handler.path, {k.lower(): v for k, v in handler.headers.items()}, body)
        with self.lock:
            number = len(self.calls)
            self.calls.append(call)
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay_s)
            status, headers, payload = self.respond(number, call)
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("content-length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client gave up on this call (timeout tests); nothing is left to answer
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture
def fake_api(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    api = FakeAPI()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            api.handle(self)

        def log_message(self, format, *args):
            return None

    api.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=api.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield api
    api.server.shutdown()
    api.server.server_close()
    thread.join(timeout=5)
