"""Resumable teacher runs: an append-only JSONL cache of answers and ``summarize_all`` on top of it.

Each answer is appended as one line the moment it arrives, so a crash or an unreachable endpoint
keeps everything already paid for, and a rerun sends only what is missing. Keys hash the instruction,
the provider, the model and the request, so changing any of them asks again instead of reusing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nla.data.teachers.base import INSTRUCTION_VERSION, MIN_FEATURES, Summary, Teacher, TeacherRequest
from nla.core.errors import NLAError

log = logging.getLogger(__name__)

CACHE_FILE = "teacher_summaries.jsonl"
FSYNC_INTERVAL_S = 0.5


def cache_key(teacher: Teacher, request: TeacherRequest) -> str:
    """sha256 over the instruction (version and text), provider, model, context and token."""
    material = [INSTRUCTION_VERSION, teacher.instruction, teacher.name, teacher.model, request.context, request.token]
    return hashlib.sha256(json.dumps(material, ensure_ascii=False).encode()).hexdigest()


class SummaryCache:
    """``{directory}/teacher_summaries.jsonl``: one ``{"key", "provider", "model", "instruction",
    "features"}`` object per line. Several processes may append to it at once (each line is one
    ``O_APPEND`` write). A line cut short by a crash is skipped when read."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / CACHE_FILE
        self._fd: int | None = None
        self._last_sync = 0.0
        self.written = 0

    def load(self, keys: set[str]) -> dict[str, list[str]]:
        """Cached features of the wanted ``keys`` (the rest of the file is not kept in memory)."""
        found: dict[str, list[str]] = {}
        if not self.path.is_file():
            return found
        with self.path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                    key, features = record["key"], record["features"]
                except (ValueError, KeyError, TypeError):
                    continue
                if key in keys and isinstance(features, list):
                    found[key] = [str(feature) for feature in features]
        return found

    def append(self, key: str, teacher: Teacher, features: list[str]) -> None:
        if self._fd is None:
            self._open()
        record = {
            "key": key,
            "provider": teacher.name,
            "model": teacher.model,
            "instruction": INSTRUCTION_VERSION,
            "features": features,
        }
        self._write((json.dumps(record, ensure_ascii=False) + "\n").encode())
        self.written += 1
        # Unbuffered writes already survive a crash of this process; fsync guards against power loss
        # and is rate-limited because one per line would dominate fast teachers such as extractive.
        now = time.monotonic()
        if now - self._last_sync >= FSYNC_INTERVAL_S:
            os.fsync(self._fd)
            self._last_sync = now

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A line left unfinished by a crash must not swallow the next record.
        if self.path.stat().st_size:
            with self.path.open("rb") as existing:
                existing.seek(-1, os.SEEK_END)
                if existing.read(1) != b"\n":
                    self._write(b"\n")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]


@dataclass
class TeacherReport:
    """What a ``summarize_all`` run did, counted in rows of the input unless said otherwise."""

    total: int
    """Rows asked for."""
    cached: int
    """Rows answered from the cache."""
    requested: int
    """Distinct requests sent to the teacher (duplicates of a row are sent once)."""
    failed: int
    """Rows without an answer (the teacher failed on them); a rerun asks again."""
    dropped: int
    """Rows whose answer had fewer than ``MIN_FEATURES`` features."""

    @property
    def kept(self) -> int:
        return self.total - self.failed - self.dropped

    def __str__(self) -> str:
        return (
            f"teacher summaries: {self.kept}/{self.total} kept, {self.cached} from cache, "
            f"{self.requested} requested, {self.failed} failed, {self.dropped} dropped (< {MIN_FEATURES} features)"
        )


def _progress_bar(enabled: bool) -> Progress:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, disable=not enabled, transient=True)


def summarize_all(
    teacher: Teacher,
    requests: Sequence[TeacherRequest],
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[list[Summary | None], TeacherReport]:
    """One summary per request (None where it failed or was dropped) and a report of the run.

    Cached rows are served from ``cache_dir``; the rest are sent once per distinct request and
    each answer is cached as soon as it arrives. Without ``cache_dir`` nothing is cached.
    """
    keys = [cache_key(teacher, request) for request in requests]
    cache = SummaryCache(cache_dir) if cache_dir is not None else None
    answers = cache.load(set(keys)) if cache is not None else {}
    cached = sum(key in answers for key in keys)
    missing = {key: request for key, request in zip(keys, requests) if key not in answers}
    todo = list(missing)
    with _progress_bar(progress) as bar:
        task = bar.add_task(f"teacher {teacher.name}:{teacher.model}", total=len(todo))
        try:
            for index, summary in teacher.stream([missing[key] for key in todo]):
                if summary is not None:
                    answers[todo[index]] = summary.features
                    if cache is not None:
                        cache.append(todo[index], teacher, summary.features)
                bar.advance(task)
        except NLAError as error:
            if cache is None:
                raise NLAError(f"{error} (nothing was cached: set teacher.cache_dir to keep progress)") from error
            saved = f"{cache.written} new answers are saved in {cache.path}; rerun to resume"
            raise NLAError(f"{error} ({saved})") from error
        finally:
            if cache is not None:
                cache.close()
    summaries: list[Summary | None] = []
    failed = dropped = 0
    for key in keys:
        features = answers.get(key)
        if features is None:
            failed += 1
        elif len(features) < MIN_FEATURES:
            dropped += 1
        summaries.append(Summary(list(features)) if features and len(features) >= MIN_FEATURES else None)
    report = TeacherReport(len(requests), cached, len(todo), failed, dropped)
    if dropped:
        log.warning("dropped %d of %d teacher answers with < %d features", dropped, len(requests), MIN_FEATURES)
    log.info("%s", report)
    return summaries, report
