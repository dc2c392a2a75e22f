"""Jane Austen's six novels (public domain) from the Debian package r-cran-janeaustenr, read without R.

The package installs its data as an R lazy-load database: ``Rdata.rdx`` (a gzip-serialized index of
name -> (offset, length)) and ``Rdata.rdb`` (the objects, each a 4-byte big-endian length followed by
a zlib-compressed serialization). ``rdata`` reads the index directly and parses each inflated object.
A directory of ``.rda`` files (the layout of the package's source tarball) is read as well. Every
novel is a character vector with one printed line per element and empty strings between paragraphs.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from nla.data.document import Document
from nla.errors import ConfigError

AUSTEN = "austen"
DATA_DIR = Path("/usr/lib/R/site-library/janeaustenr/data")
INSTALL = "install it with `apt-get install r-cran-janeaustenr`"


def austen_documents(chunk_words: int = 500, data_dir: Path | str = DATA_DIR) -> list[Document]:
    """The novels cut into documents of about ``chunk_words`` words, only ever between paragraphs.

    A document closes at the first paragraph boundary at or past ``chunk_words`` words, so documents
    are at least that long except a novel's last; a single longer paragraph stays whole. Paragraph
    lines are joined by spaces and paragraphs by a blank line. Ids are ``austen/<novel>/<index>``.
    """
    if chunk_words < 1:
        raise ConfigError("corpus.chunk_words", f"must be at least 1, got {chunk_words}")
    documents = []
    for name, lines in sorted(read_novels(data_dir).items()):
        first = len(documents)
        chunk: list[str] = []
        words = 0
        for paragraph in _paragraphs(lines):
            chunk.append(paragraph)
            words += len(paragraph.split())
            if words >= chunk_words:
                documents.append(Document(f"austen/{name}/{len(documents) - first:04d}", "\n\n".join(chunk)))
                chunk, words = [], 0
        if chunk:
            documents.append(Document(f"austen/{name}/{len(documents) - first:04d}", "\n\n".join(chunk)))
    return documents


def read_novels(data_dir: Path | str = DATA_DIR) -> dict[str, list[str]]:
    """Every character vector in the package's data, by R object name (``emma``, ``persuasion``, ...)."""
    data_dir = Path(data_dir)
    try:
        import rdata
    except ImportError as error:
        raise ConfigError("corpus.path", "the 'austen' corpus needs the rdata package: pip install rdata") from error
    if (data_dir / "Rdata.rdx").is_file() and (data_dir / "Rdata.rdb").is_file():
        objects = _read_lazyload(rdata, data_dir)
    else:
        objects = {}
        for path in sorted(data_dir.glob("*.rda")):
            objects.update(rdata.read_rda(path))
    novels = {
        str(name): [str(line) for line in value]
        for name, value in objects.items()
        if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind == "U"
    }
    if not novels:
        raise ConfigError("corpus.path", f"no Jane Austen novels found in {data_dir}; {INSTALL}")
    return novels


def _read_lazyload(rdata, data_dir: Path) -> dict[str, object]:
    index = rdata.read_rds(data_dir / "Rdata.rdx")
    compressed = np.asarray(index["compressed"]).ravel()
    # R writes TRUE for zlib and 2 or 3 for bzip2 or xz; only zlib is what R uses by default for data.
    if compressed.dtype != bool or not compressed.all():
        kinds = compressed.tolist()
        raise ConfigError("corpus.path", f"{data_dir / 'Rdata.rdb'} uses R compression {kinds}; only zlib is read")
    blob = (data_dir / "Rdata.rdb").read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        record = blob[int(offset) : int(offset) + int(length)]
        raw = zlib.decompress(record[4:])
        if len(raw) != int.from_bytes(record[:4], "big"):
            damaged = f"{data_dir / 'Rdata.rdb'} is damaged at {name!r}; reinstall r-cran-janeaustenr"
            raise ConfigError("corpus.path", damaged)
        objects[str(name)] = rdata.conversion.convert(rdata.parser.parse_data(raw, extension=".rds"))
    return objects


def _paragraphs(lines: list[str]) -> list[str]:
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs
