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
2. **2.** The instructions build toward baking, so oven temperatures and timings are expected.
- The final token " flour" closes an ingredient line, so a line break or a new ingredient follows.
</features>"""

SHORT_ANSWER = "<features>\n1. Only one thing stands out here.\n</features>"


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: dict | None


def answer_body(path: str, text: str) -> bytes:
    """A successful response carrying ``text``, shaped like the API that ``path`` belongs to."""
    if path.endswith("/messages"):
        payload = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": text}]}
    else:
        payload = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
    return json.dumps(payload).encode()


Reply = tuple[int, dict[str, str], bytes]


@dataclass
class FakeAPI:
    """Records every call and answers with ``respond(call_number, call)``; tracks peak concurrency."""

    respond: Callable[[int, Call], Reply] = lambda number, call: (200, {}, answer_body(call.path, GOOD_ANSWER))
    delay_s: float = 0.0
    calls: list[Call] = field(default_factory=list)
    active: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

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
    thread = threading.Thread(target=api.server.serve_forever, daemon=True)
    thread.start()
    yield api
    api.server.shutdown()
    api.server.server_close()
    thread.join(timeout=5)
