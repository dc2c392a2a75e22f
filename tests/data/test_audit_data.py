"""The datasets ``nla audit`` reads: every format gives the same rows, and each bad dataset is one
``ConfigError`` naming the option at fault."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nla.core.errors import ConfigError
from nla.data.audit_data import AuditText, Columns, digest, read_texts

ROWS = [
    {"id": "007", "text": "The sailor counts the waves.", "topic": "sea"},
    {"id": "008", "text": "Rivers bend around old stones.", "topic": "land"},
]
CHATS = [{"id": "a", "messages": [{"role": "user", "content": "Hello there."},
                                  {"role": "assistant", "content": "The sailor counts the waves."}]}]


def write(path, rows):
    """``rows`` in the format ``path``'s suffix names (a directory: ``Dataset.save_to_disk``)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("name", ["texts.jsonl", "texts.parquet", "texts.csv", "saved"])
def test_every_format_reads_the_same_rows(tmp_path, name):
    texts = read_texts(write(tmp_path / name, ROWS), Columns(id="id", group="topic"))
    assert texts == [AuditText(0, "007", "sea", ROWS[0]["text"], None), AuditText(1, "008", "land", ROWS[1]["text"], None)]


@pytest.mark.parametrize("name", ["chats.jsonl", "chats.parquet", "saved"])
def test_transcripts_read_as_role_and_content(tmp_path, name):
    (text,) = read_texts(write(tmp_path / name, CHATS), Columns(messages="messages"))
    assert text.text is None and text.text_id == "0"
    assert text.messages == (("user", "Hello there."), ("assistant", "The sailor counts the waves."))


def test_the_digest_follows_the_content(tmp_path):
    first = digest(read_texts(write(tmp_path / "a.jsonl", ROWS), Columns()))
    changed = [ROWS[0], {**ROWS[1], "text": "Rivers bend around new stones."}]
    assert digest(read_texts(write(tmp_path / "b.jsonl", changed), Columns())) != first
    assert digest(read_texts(write(tmp_path / "c.parquet", ROWS), Columns())) == first


@pytest.mark.parametrize("rows, columns, field, words", [
    (ROWS, Columns(text="body"), "text_column", ["'body'", "id, text, topic"]),
    ([{"messages": []}], Columns(), "text_column", ["'text'", "--messages_column messages"]),
    (ROWS, Columns(id="key"), "id_column", ["'key'"]),
    (ROWS, Columns(group="kind"), "group_column", ["'kind'"]),
    ([ROWS[0], {"id": "9", "text": "  "}], Columns(), "text_column", ["row 1 is empty"]),
    ([ROWS[0], {"id": "007", "text": "again"}], Columns(id="id"), "id_column", ["'007'", "rows 0 and 1"]),
    ([{"messages": [{"role": "user"}]}], Columns(messages="messages"), "messages_column", ["row 0 message 0"]),
    ([{"messages": [{"role": "user", "content": " "}]}], Columns(messages="messages"), "messages_column",
     ["every message is empty"]),
])
def test_bad_datasets_name_the_option(tmp_path, rows, columns, field, words):
    with pytest.raises(ConfigError) as raised:
        read_texts(write(tmp_path / "bad.jsonl", rows), columns)
    assert raised.value.field == field
    for word in words:
        assert word in raised.value.detail


def test_bad_files_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2 is not valid JSON"):
        read_texts(bad, Columns())
    with pytest.raises(ConfigError, match="does not exist"):
        read_texts(tmp_path / "missing.jsonl", Columns())
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a .jsonl, .parquet, .csv file"):
        read_texts(tmp_path / "notes.txt", Columns())
    (tmp_path / "empty.csv").write_text("text\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds no rows"):
        read_texts(tmp_path / "empty.csv", Columns())
