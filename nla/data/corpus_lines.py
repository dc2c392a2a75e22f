"""The first line of a local text corpus that cannot be read, found once reading it has failed.

``datasets`` reports a malformed JSON line as "An error occurred while generating the dataset" (row
numbers, when pyarrow gives any, count within a block, not the file), and bytes that are not UTF-8
only once the rows are iterated, as a bare UnicodeDecodeError. Scanning the files again, line by line,
names the file and line to fix. The scan runs only after a failure, so a sound corpus is read once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""A UTF-16 surrogate left in a decoded string: JSON's ``"\\ud800"`` escape alone, which is no text."""


def _surrogate(value) -> str | None:
    """The first lone surrogate anywhere in a decoded JSON value, escaped as JSON writes it."""
    if isinstance(value, str):
        found = LONE_SURROGATE.search(value)
        return f"\\u{ord(found.group()):04x}" if found else None
    children = [*value.keys(), *value.values()] if isinstance(value, dict) else value if isinstance(value, list) else []
    return next(filter(None, map(_surrogate, children)), None)


def _json_problem(text: str) -> tuple[int, str] | None:
    """(column, what is wrong) for one JSON value that does not decode to text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return error.colno, f"is not valid JSON ({error.msg})"
    surrogate = _surrogate(value)
    return (0, f"holds a lone surrogate ({surrogate}), which is not text") if surrogate else None


def line_problem(path: Path, json_lines: bool) -> str | None:
    """What is wrong with the first bad line of ``path``, naming the file and line; None when every
    line is UTF-8 text (and, with ``json_lines``, every non-blank line one JSON value of text)."""
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, 1):
            try:
                # A byte order mark may open the file; datasets reads past it.
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                return (f"{path} line {number} is not UTF-8 text (byte {error.start + 1} of the line is "
                        f"0x{raw[error.start]:02x}); fix or remove that line")
            problem = _json_problem(line.rstrip("\r\n")) if json_lines and line.strip() else None
            if problem:
                column, what = problem
                return f"{path} line {number}{f' column {column}' if column else ''} {what}; fix or remove that line"
    return None


def _document_problem(path: Path) -> str | None:
    """The same for a .json file holding one document (a list of records) rather than JSON Lines."""
    problem = line_problem(path, json_lines=False)
    if problem:
        return problem
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        return f"{path} line {error.lineno} column {error.colno} is not valid JSON ({error.msg}); fix that line"
    surrogate = _surrogate(value)
    return f"{path} holds a lone surrogate ({surrogate}), which is not text; fix that string" if surrogate else None


def first_bad_line(files: list[Path], builder: str) -> str | None:
    """The first unreadable line among ``files`` read by the ``datasets`` builder ``builder``, or None
    (a builder of binary files, parquet, has no lines to name)."""
    if builder not in ("json", "text", "csv"):
        return None
    for path in files:
        if builder == "json" and path.suffix.lower() == ".json" and _starts_a_document(path):
            problem = _document_problem(path)
        else:
            problem = line_problem(path, json_lines=builder == "json")
        if problem:
            return problem
    return None


def _starts_a_document(path: Path) -> bool:
    """Whether a .json file opens a JSON array (one document) rather than JSON Lines."""
    with open(path, "rb") as stream:
        head = stream.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")
