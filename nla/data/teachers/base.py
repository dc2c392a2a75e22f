"""Teacher summaries for the SFT warm start: requests, answers, the instruction, parsing and the interface.

A teacher reads a document prefix that ends at one token and writes 2-3 short "features" describing
what a language model would be tracking there; the last feature is about the final token itself.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from nla.core.errors import ConfigError

MIN_FEATURES = 2

INSTRUCTION_VERSION = "nla-teacher-v1"

# Placeholders are filled with str.format, so the text itself must not contain other braces.
INSTRUCTION = """\
We are collecting notes on what a language model keeps in mind while it reads.

Below is the start of a document. Imagine a language model that has read exactly this much and is \
about to predict the next token. Describe what that model is most likely tracking at this moment.

<document>
{context}
</document>

The document is cut off right after the token {token}.

Write 2 or 3 features, about 80 to 100 words in total. Each feature is one or two sentences about \
a single thing the model is tracking, for example: a grammatical or structural constraint on what \
may come next; what the content is about and where it seems to be going; the tone or register; \
the momentum of a story or an argument; the genre or kind of document. Make the last feature about \
the final token {token} itself and what it makes likely next.

Reply with the features only, one per line, between tags, like this:
<features>
1. first feature
2. second feature
3. a feature about the final token
</features>"""


@dataclass(frozen=True)
class TeacherRequest:
    """One (document prefix, position) pair to describe."""

    context: str
    """The document text up to and including the token at the position."""
    token: str
    """The text of the token at the position (the end of ``context``)."""


@dataclass
class Summary:
    """A teacher's answer, cleaned into separate features (the last one is about the final token)."""

    features: list[str]
    """Feature sentences without list markers, in the teacher's order."""

    @property
    def text(self) -> str:
        """The features as one block, one per line: the target text of the warm start."""
        return "\n".join(self.features)


def render_instruction(request: TeacherRequest, instruction: str = INSTRUCTION) -> str:
    """The single user message a chat teacher receives for ``request``.

    The token is shown JSON-quoted so that spaces and line breaks in it stay visible.
    """
    return instruction.format(context=request.context, token=json.dumps(request.token, ensure_ascii=False))


_BLOCK = re.compile(r"<features>(.*?)</features>", re.DOTALL | re.IGNORECASE)
# "1." / "2)" / "(3)" / "-" / "*" / "•" and similar bullets, optionally bolded as "**1.**".
_MARKER = re.compile(r"^\s*(?:\*\*)?(?:\(?\d{1,2}[.):]|[-*•·‣▪–—])(?:\*\*)?\s+")


def clean_feature(text: str) -> str:
    """One feature without its list marker, with runs of whitespace collapsed to single spaces."""
    return " ".join(_MARKER.sub("", text, count=1).split())


def parse_features(answer: str) -> list[str]:
    """The features of a teacher's answer; an empty list when the answer has no complete tag block.

    Inside the block, a line starting with a list marker begins a new feature and unmarked lines
    continue the previous one; a block without markers counts each non-empty line as a feature.
    A block missing its closing tag means the answer was cut off, and its last feature (the one
    about the final token) would be incomplete, so such answers yield nothing.
    """
    match = _BLOCK.search(answer)
    if match is None:
        return []
    lines = [line for line in match.group(1).splitlines() if line.strip()]
    if not any(_MARKER.match(line) for line in lines):
        items = lines
    else:
        items = []
        for line in lines:
            if _MARKER.match(line) or not items:
                items.append(line)
            else:
                items[-1] += " " + line
    return [feature for feature in map(clean_feature, items) if feature]


class Teacher(ABC):
    """Writes summaries for requests. ``name`` is the provider and ``model`` the model (both key the cache)."""

    name: str
    model: str
    instruction: str = INSTRUCTION

    @abstractmethod
    def stream(self, requests: Sequence[TeacherRequest]) -> Iterator[tuple[int, Summary | None]]:
        """Yield ``(index into requests, summary)`` as each answer arrives, in any order.

        A summary is None when the request failed; a summary with fewer than ``MIN_FEATURES``
        features is still yielded, so callers can cache it and count it as dropped.
        Raises ``NLAError`` when the teacher cannot be reached at all.
        """

    def summarize(self, requests: Sequence[TeacherRequest]) -> list[Summary | None]:
        """One result per request, in order; None for failed requests and for too-short answers."""
        results: list[Summary | None] = [None] * len(requests)
        for index, summary in self.stream(requests):
            if summary is not None and len(summary.features) >= MIN_FEATURES:
                results[index] = summary
        return results

    def answer(self, messages: Sequence[str]) -> list[str | None]:
        """The raw answer to each free-form user message, in order (None where a request failed):
        how ``nla evaluate`` asks a teacher to rewrite an explanation or to judge a claim. Teachers
        backed by a chat model answer; a rule-based one cannot."""
        raise ConfigError("provider", f"the {self.name} teacher builds features from rules and cannot answer "
                          "free-form requests; use hf, openai or anthropic")


DEFAULT_BASE_URLS = {"openai": "https://api.openai.com", "anthropic": "https://api.anthropic.com"}
DEFAULT_KEY_ENVS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


@dataclass
class TeacherArgs:
    """Which teacher writes the warm-start summaries, and how requests to it are paced."""

    provider: str = "extractive"
    """``extractive`` (offline, built from the text itself, no model), ``hf`` (a local transformers
    chat model), ``openai`` (any OpenAI-compatible chat completions server: OpenAI, vLLM, llama.cpp)
    or ``anthropic`` (the Messages API)."""
    model: str | None = None
    """Model name sent to the API, or a hub id / local directory for ``hf``. Required except for
    ``extractive``, where it picks the style: ``full`` (unset: about 80 words, like a real teacher)
    or ``brief`` (about 25 words, for CPU runs)."""
    base_url: str | None = None
    """Server root, e.g. ``http://localhost:8000`` or ``http://localhost:8000/v1``. Unset: the
    provider's public API."""
    api_key_env: str | None = None
    """NAME of the environment variable that holds the API key (the key itself never goes in a
    config). Unset: ``ANTHROPIC_API_KEY`` for anthropic; ``OPENAI_API_KEY`` for openai on its public
    API, and no key for an OpenAI-compatible server at another ``base_url``."""
    max_concurrency: int = 8
    """Most requests in flight at once (remote providers)."""
    max_retries: int = 5
    """Retries per request after the first attempt, on 429, 5xx, timeouts, connection errors and
    malformed responses."""
    retry_base_delay_s: float = 1.0
    """First backoff delay; it doubles per retry, with random jitter."""
    retry_max_delay_s: float = 60.0
    """Longest wait between attempts, including one asked for by a ``Retry-After`` header."""
    timeout_s: float = 120.0
    """Per-request timeout in seconds (remote providers)."""
    temperature: float = 1.0
    """Sampling temperature; 0 means greedy decoding for ``hf``."""
    max_tokens: int = 300
    """Most tokens the teacher may write per answer."""
    batch_size: int = 8
    """Prompts generated together by the ``hf`` teacher."""
    device: str = "auto"
    """Device of the ``hf`` teacher: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda:0``..."""
    cache_dir: str | None = None
    """Directory of the resumable answer cache; unset: answers are not cached."""


def api_key_env_name(args: TeacherArgs) -> str | None:
    """The environment variable the key is read from, or None when the server needs no key."""
    if args.api_key_env:
        return args.api_key_env
    if args.provider == "openai" and args.base_url and args.base_url.rstrip("/") not in (
        DEFAULT_BASE_URLS["openai"],
        DEFAULT_BASE_URLS["openai"] + "/v1",
    ):
        return None
    return DEFAULT_KEY_ENVS.get(args.provider)
