"""The table ``nla audit`` writes: one row per explained position, in sharded parquet files.

An audit directory holds ``audit.json`` (what was run: the pair, the data, the position rule, the
settings) and ``shards/``. Each shard is written whole and renamed into place (``atomic_write``), so
a reader, or a resumed run, sees only complete shards. A shard holds every explained position of a
set of whole texts: the texts a shard holds are done, those of no shard are not. Shard names carry
the writing process's rank and its own counter, ``part-{rank:03d}-{count:06d}.parquet``, so
data-parallel processes never write the same file. ``read_table`` returns the rows in one order
whatever the processes and shards: by text, then position.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nla.core.errors import ConfigError
from nla.core.files import atomic_write

SHARDS = "shards"
MANIFEST = "audit.json"

SCHEMA = pa.schema([
    pa.field("text_index", pa.int64(), nullable=False),   # the text's row in the dataset (the order)
    pa.field("text_id", pa.string(), nullable=False),     # the dataset's id column, else the index as text
    pa.field("group", pa.string()),                       # the value of the chosen group column, if any
    pa.field("role", pa.string()),                        # the chat role of the token's message, if any
    pa.field("position", pa.int64(), nullable=False),     # the token's index in the target's tokens
    pa.field("token", pa.string(), nullable=False),       # the token, decoded
    pa.field("context", pa.string(), nullable=False),     # the text around the token, read through it
    pa.field("explanation", pa.string()),                 # null when the AV's answer did not parse
    pa.field("mse", pa.float64(), nullable=False),        # normalised MSE of the round trip (2: no answer)
    pa.field("fve", pa.float64(), nullable=False),        # 1 - mse / the pair's recorded held-out variance
    pa.field("cosine", pa.float64(), nullable=False),     # cosine of reconstruction and vector (0: no answer)
    pa.field("valid", pa.bool_(), nullable=False),        # the answer parsed (closed its explanation tags)
])
"""One row per explained position."""


def shard_name(rank: int, count: int) -> str:
    return f"part-{rank:03d}-{count:06d}.parquet"


def shard_paths(directory: str | Path) -> list[Path]:
    """The complete shards of an audit directory (temporary files of an interrupted write excluded)."""
    return sorted((Path(directory) / SHARDS).glob("part-*.parquet"))


def write_shard(directory: str | Path, rank: int, count: int, rows: list[dict]) -> Path:
    """Write ``rows`` (mappings with every column of ``SCHEMA``) as shard ``count`` of process
    ``rank``, atomically."""
    path = Path(directory) / SHARDS / shard_name(rank, count)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write(path, lambda stream: stream.write(buffer.getvalue()))
    return path


def read_table(directory: str | Path, field: str = "table") -> pa.Table:
    """Every row of an audit directory, ordered by text then position; ``ConfigError`` on ``field``
    naming the directory when it holds no shard or a shard of another schema."""
    paths = shard_paths(directory)
    if not paths:
        raise ConfigError(field, f"{directory} holds no audit shards ({SHARDS}/part-*.parquet); run nla audit first")
    tables = []
    for path in paths:
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as error:
            raise ConfigError(field, f"{path} is not a readable parquet file ({error}); delete it and resume the "
                              "audit to write it again") from None
        if not table.schema.equals(SCHEMA, check_metadata=False):
            raise ConfigError(field, f"{path} has columns {table.schema.names}, not an nla audit shard's; "
                              "delete it and resume the audit")
        tables.append(table)
    return pa.concat_tables(tables).sort_by([("text_index", "ascending"), ("position", "ascending")])


def done_texts(directory: str | Path) -> set[int]:
    """The ``text_index`` of every text a complete shard holds (a resumed run skips them)."""
    done: set[int] = set()
    for path in shard_paths(directory):
        done.update(pq.read_table(path, columns=["text_index"]).column("text_index").to_pylist())
    return done
