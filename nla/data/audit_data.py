"""The texts ``nla audit`` explains: one dataset file or directory, read whole and checked before any
model loads.

Formats: ``.jsonl`` (one JSON object a line), ``.parquet``, ``.csv`` (every value read as text, so an
id like ``007`` stays ``007``) and a directory written by ``datasets.Dataset.save_to_disk``. A row is
either a plain text (``text_column``) or a chat transcript (``messages_column``: a list of
``{"role", "content"}`` messages, rendered later with the target's chat template). A missing column,
an empty text or transcript, a malformed message or a repeated id is one ``ConfigError`` naming the
option and the row: an audit of a half-read dataset would be a table with holes nobody sees.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from nla.core.errors import ConfigError
from nla.data.permissions import first_unreadable, unreadable_message

FORMATS = (".jsonl", ".parquet", ".csv")


@dataclass(frozen=True)
class AuditText:
    """One row of the dataset, as the audit reads it."""

    index: int
    """The row's place in the dataset (0-based): the table's order and the unit of resuming."""
    text_id: str
    """The ``id_column`` value as text, else the index as text."""
    group: str | None
    """The ``group_column`` value as text (None without one): ``nla audit query`` counts per group."""
    text: str | None
    """The plain text (None for a chat transcript)."""
    messages: tuple[tuple[str, str], ...] | None
    """The transcript as (role, content) pairs (None for a plain text)."""


@dataclass(frozen=True)
class Columns:
    """Which columns hold what."""

    text: str = "text"
    """The plain texts (used when ``messages`` is None)."""
    messages: str | None = None
    """The chat transcripts: lists of ``{"role", "content"}``."""
    id: str | None = None
    """Unique ids of the rows; default the row index."""
    group: str | None = None
    """A label copied to the table's ``group`` column."""

    def needed(self) -> list[str]:
        return [name for name in (self.messages or self.text, self.id, self.group) if name is not None]


def _json_lines(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError("data", f"{path} line {number} is not valid JSON ({error.msg}); fix or remove "
                                  "that line") from None
            if not isinstance(row, dict):
                raise ConfigError("data", f"{path} line {number} is a JSON {type(row).__name__}, not an object "
                                  "with named columns")
            rows.append(row)
    return rows


def _raw_rows(path: Path, columns: Columns) -> tuple[list[dict], list[str]]:
    """The rows (each a mapping holding at least the needed columns) and the columns the data has."""
    if path.is_dir():
        if not (path / "state.json").is_file():
            hint = " (a DatasetDict: give the directory of one split)" if (path / "dataset_dict.json").is_file() else ""
            raise ConfigError("data", f"{path} is not a directory written by Dataset.save_to_disk{hint}")
        import datasets

        dataset = datasets.load_from_disk(str(path))
        names = list(dataset.column_names)
        return (dataset.select_columns(columns.needed()).to_list() if set(columns.needed()) <= set(names) else []), names
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _json_lines(path)
        return rows, list(dict.fromkeys(name for row in rows for name in row))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        wanted = [name for name in columns.needed() if name in names]
        return pq.read_table(path, columns=wanted).to_pylist(), names
    if suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as stream:
            reader = csv.DictReader(stream)
            return list(reader), list(reader.fieldnames or [])
    raise ConfigError("data", f"{path} is not a {', '.join(FORMATS)} file or a Dataset.save_to_disk directory")


def _check_columns(path: Path, columns: Columns, names: list[str]) -> None:
    wanted = [("messages_column", columns.messages)] if columns.messages else [("text_column", columns.text)]
    for option, column in [*wanted, ("id_column", columns.id), ("group_column", columns.group)]:
        if column is not None and column not in names:
            hint = ("; for chat transcripts pass --messages_column messages"
                    if option == "text_column" and "messages" in names else "")
            raise ConfigError(option, f"no column {column!r} in {path}; its columns are: "
                              f"{', '.join(names) or 'none'}{hint}")


def _messages(value, row: int) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError("messages_column", f"row {row} holds {type(value).__name__ if value else 'no messages'}, "
                          "not a list of {role, content} messages")
    messages = []
    for number, message in enumerate(value):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise ConfigError("messages_column", f"row {row} message {number} is not {{role: text, content: text}} "
                              f"({str(message)[:80]})")
        messages.append((message["role"], message["content"]))
    if not any(content.strip() for _, content in messages):
        raise ConfigError("messages_column", f"row {row}: every message is empty; remove the row")
    return tuple(messages)


def _text(value, column: str, row: int) -> str:
    if not isinstance(value, str):
        raise ConfigError("text_column", f"row {row} of column {column!r} holds {type(value).__name__}, not text")
    if not value.strip():
        raise ConfigError("text_column", f"row {row} is empty; remove empty texts from the data")
    return value


def read_texts(path: str | Path, columns: Columns) -> list[AuditText]:
    """Every row of the dataset at ``path``, checked (``ConfigError`` naming the option at fault)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError("data", f"{path} does not exist; give a {', '.join(FORMATS)} file or a dataset directory")
    unreadable = first_unreadable(path)
    if unreadable is not None:
        raise ConfigError("data", unreadable_message(unreadable))
    rows, names = _raw_rows(path, columns)
    _check_columns(path, columns, names)
    if not rows:
        raise ConfigError("data", f"{path} holds no rows")
    texts, seen = [], {}
    for index, row in enumerate(rows):
        text_id = str(index)
        if columns.id is not None:
            if row.get(columns.id) is None:
                raise ConfigError("id_column", f"row {index} has no value in column {columns.id!r}")
            text_id = str(row[columns.id])
            if text_id in seen:
                raise ConfigError("id_column", f"id {text_id!r} repeats in rows {seen[text_id]} and {index}; "
                                  "ids must be unique")
            seen[text_id] = index
        group = row.get(columns.group) if columns.group is not None else None
        texts.append(AuditText(
            index, text_id, None if group is None else str(group),
            None if columns.messages else _text(row.get(columns.text), columns.text, index),
            _messages(row.get(columns.messages), index) if columns.messages else None))
    return texts


def digest(texts: list[AuditText]) -> str:
    """A hash of every row as read (ids, groups, texts, messages): a resumed audit must read the same data."""
    content = hashlib.sha256()
    for text in texts:
        content.update(json.dumps([text.text_id, text.group, text.text, text.messages]).encode())
    return content.hexdigest()[:16]
