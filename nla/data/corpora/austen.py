"""Jane Austen's six novels (public domain) from the Debian package r-cran-janeaustenr, read without R.

The package is used where it is installed, else fetched into nla's cache (``nla.data.corpora.debian``).

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

from nla.data.corpora.chunks import chunk_paragraphs
from nla.data.corpora.debian import DebianPackage, package_data
from nla.data.document import Document
from nla.core.errors import ConfigError

PACKAGE = DebianPackage(
    name="r-cran-janeaustenr",
    version="1.0.0-1",
    pool_path="pool/main/r/r-cran-janeaustenr/r-cran-janeaustenr_1.0.0-1_all.deb",
    sha256="df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
    data_dir="usr/lib/R/site-library/janeaustenr/data",
)


def austen_documents(chunk_words: int = 500, data_dir: Path | str | None = None) -> list[Document]:
    """The novels cut into documents of about ``chunk_words`` words (``chunks.chunk_paragraphs``).
    Paragraph lines are joined by spaces. Ids are ``austen/<novel>/<index>``; ``data_dir`` defaults to
    the package's data (installed, cached or fetched)."""
    novels = read_novels(package_data(PACKAGE) if data_dir is None else data_dir)
    return [doc for name, lines in sorted(novels.items())
            for doc in chunk_paragraphs(f"austen/{name}", _paragraphs(lines), chunk_words)]


def read_novels(data_dir: Path | str) -> dict[str, list[str]]:
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
        raise ConfigError("corpus.path", f"no Jane Austen novels found in {data_dir}; delete it so that it is "
                          f"fetched again, or install {PACKAGE.name}")
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
            damaged = f"{data_dir / 'Rdata.rdb'} is damaged at {name!r}; delete it so that it is fetched again"
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
