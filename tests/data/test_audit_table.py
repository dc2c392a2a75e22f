"""The audit table: shards written whole, read back in one order, resumable by text."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nla.core.errors import ConfigError
from nla.data.audit_table import SCHEMA, SHARDS, done_texts, read_table, write_shard


def row(text: int, position: int, **extra) -> dict:
    return {"text_index": text, "text_id": f"t{text}", "group": None, "role": "user", "position": position,
            "token": "x", "context": "a x", "explanation": "about x", "mse": 0.5, "fve": 0.3, "cosine": 0.75,
            "valid": True, **extra}


def test_rows_come_back_by_text_then_position_whatever_the_shards(tmp_path):
    write_shard(tmp_path, rank=1, count=0, rows=[row(3, 7), row(1, 2)])
    write_shard(tmp_path, rank=0, count=0, rows=[row(2, 5), row(1, 0)])
    write_shard(tmp_path, rank=0, count=1, rows=[row(0, 9, explanation=None, valid=False)])
    table = read_table(tmp_path)
    assert list(zip(table.column("text_index").to_pylist(), table.column("position").to_pylist())) == [
        (0, 9), (1, 0), (1, 2), (2, 5), (3, 7)]
    assert table.column("explanation").to_pylist()[0] is None
    assert done_texts(tmp_path) == {0, 1, 2, 3}
    # A temporary file of an interrupted write is not a shard.
    (tmp_path / SHARDS / ".part-000-000002.parquet.123.tmp").write_bytes(b"half")
    assert read_table(tmp_path).num_rows == 5


def test_no_shard_or_a_foreign_one_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match="holds no audit shards"):
        read_table(tmp_path)
    (tmp_path / SHARDS).mkdir()
    pq.write_table(pa.table({"a": [1]}), tmp_path / SHARDS / "part-000-000000.parquet")
    with pytest.raises(ConfigError, match="part-000-000000.parquet has columns"):
        read_table(tmp_path)
    (tmp_path / SHARDS / "part-000-000000.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match="is not a readable parquet file"):
        read_table(tmp_path)


def test_a_row_missing_a_column_is_refused_before_anything_is_written(tmp_path):
    incomplete = row(0, 1)
    del incomplete["fve"]
    with pytest.raises((KeyError, pa.ArrowInvalid, pa.ArrowTypeError)):
        write_shard(tmp_path, 0, 0, [incomplete])
    assert not list((tmp_path / SHARDS).glob("*.parquet"))
    assert SCHEMA.field("fve").nullable is False
