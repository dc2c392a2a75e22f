"""Teacher summaries per split, written once next to the activation cache and read by the DataModule.

One JSON file per split maps cache vector index -> the teacher's features. It lives in a directory
named after everything that decides the answers (teacher provider, model, sampling, instruction version
and the cache's fingerprint), so switching teachers or rebuilding the cache never serves stale text,
and switching back finds the old file. The teacher's own answer cache (``summarize_all``) sits beside
it, so an interrupted run resumes without paying twice. Rows the teacher answered with fewer than
two features are left out of the file and counted in it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import astuple
from pathlib import Path

from nla.data.activation_cache import ActivationCache
from nla.data.storage import atomic_write_json
from nla.data.teachers import (
    INSTRUCTION_VERSION,
    TeacherArgs,
    TeacherReport,
    TeacherRequest,
    build_teacher,
    summarize_all,
)
from nla.core.errors import NLAError

log = logging.getLogger(__name__)

CHUNK = 4096
"""Requests handed to the teacher per ``summarize_all`` call."""

MAX_FAILED_FRACTION = 0.01
"""Above this share of failed requests the run stops (and can be resumed) instead of training without
them: a teacher that fails that often is misconfigured or overloaded, not unlucky."""


def teacher_identity(teacher: TeacherArgs, cache: ActivationCache) -> dict:
    """Everything that changes the summaries of a split."""
    return {
        "provider": teacher.provider,
        "model": teacher.model,
        "temperature": teacher.temperature,
        "max_tokens": teacher.max_tokens,
        "instruction": INSTRUCTION_VERSION,
        "cache": cache.meta["fingerprint"],
    }


IMPORTED_SUMMARIES = "imported"
"""Directory under ``<cache>/summaries`` holding an imported cache's explanations (``nla import``)."""


def summaries_directory(root: str | Path, teacher: TeacherArgs, cache: ActivationCache) -> Path:
    """Where ``cache``'s summaries are: those ``nla import`` wrote for an imported cache, else the
    teacher's own directory under ``root``."""
    if "imported" in cache.meta:
        return Path(cache.directory) / "summaries" / IMPORTED_SUMMARIES
    identity = teacher_identity(teacher, cache)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / f"{teacher.provider}-{digest}"


def summary_file(directory: Path, split: str) -> Path:
    return directory / f"{split}.json"


def _add(a: TeacherReport, b: TeacherReport) -> TeacherReport:
    return TeacherReport(*(x + y for x, y in zip(astuple(a), astuple(b))))


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def write_summaries(
    cache: ActivationCache, tokenizer, teacher: TeacherArgs, root: str | Path, splits: list[str], progress: bool = True
) -> dict[str, Path]:
    """Make sure each split in ``splits`` has its summary file; ask the teacher only for missing ones.

    The teacher is built only when some file is missing (a local model teacher loads its weights).
    """
    directory = summaries_directory(root, teacher, cache)
    paths = {split: summary_file(directory, split) for split in splits}
    missing = [split for split, path in paths.items() if not path.is_file()]
    if not missing:
        return paths
    directory.mkdir(parents=True, exist_ok=True)
    for split in missing:
        # What a run killed mid-write left behind: SIGKILL runs no cleanup.
        for stale in directory.glob(f".{paths[split].name}.*.tmp"):
            stale.unlink(missing_ok=True)
    built = build_teacher(teacher)
    for split in missing:
        indices = cache.split_indices(split)
        summaries, report = [], TeacherReport(0, 0, 0, 0, 0)
        # Contexts average thousands of characters; asking in chunks keeps only one chunk in memory.
        for start in range(0, len(indices), CHUNK):
            records = [cache.record(int(i)) for i in indices[start : start + CHUNK]]
            requests = [TeacherRequest(r["context"], token_text(tokenizer, r["token_id"])) for r in records]
            chunk, chunk_report = summarize_all(built, requests, teacher.cache_dir or directory, progress)
            summaries += chunk
            report = _add(report, chunk_report)
        if report.failed > MAX_FAILED_FRACTION * max(report.total, 1):
            raise NLAError(
                f"teacher: {report.failed} of {report.total} {split} requests failed; the answers so far are "
                f"cached, so rerun to retry the rest"
            )
        if report.failed:
            log.warning("%s: %d teacher requests failed; their rows are left out (delete %s to retry them)",
                        split, report.failed, paths[split])
        features = {str(int(i)): s.features for i, s in zip(indices, summaries) if s is not None}
        # What the file holds, not how this run got it (answers from the teacher's cache after an
        # interruption, or fresh): a resumed run writes the same bytes as an uninterrupted one.
        outcome = {"total": report.total, "kept": report.kept, "failed": report.failed, "dropped": report.dropped}
        atomic_write_json(paths[split], {
            "split": split,
            "identity": teacher_identity(teacher, cache),
            "report": outcome,
            "features": features,
        })
        log.info("%s: %s", split, report)
    return paths


def read_summaries(path: Path) -> dict[int, list[str]]:
    """Cache vector index -> features, for the rows the teacher kept."""
    if not path.is_file():
        raise NLAError(f"summaries: {path} is missing; run prepare_data() (trainer.fit does) to write it")
    return {int(index): features for index, features in json.loads(path.read_text())["features"].items()}
