"""The World English Bible (public domain, dedicated by its translators) from the Debian package
sword-text-web, read without the SWORD library.

The package holds the text as a SWORD ``zText`` module: for each testament (``ot``, ``nt``) a block
index ``.bzs`` (12 bytes per block: little-endian offset, compressed size and uncompressed size into
``.bzz``) and ``.bzz``, the zlib-compressed blocks, one book per block, in canonical order. Each
block's text is OSIS markup: words wrapped in ``<w>`` elements, footnotes in ``<note>``, headings in
``<title>``, paragraphs closed by ``<div eID=... type="x-p"/>``, poetry lines by ``<l eID=.../>``, and
each book opens with a ``x-usfm-toc2`` milestone naming it. Notes and headings are dropped; the
words, punctuation and paragraph breaks are kept. About 860,000 words, deuterocanon included.
"""

from __future__ import annotations

import html
import re
import zlib
from pathlib import Path

from nla.data.corpora.chunks import chunk_paragraphs
from nla.data.corpora.debian import DebianPackage, package_data
from nla.data.document import Document
from nla.core.errors import ConfigError

PACKAGE = DebianPackage(
    name="sword-text-web",
    version="426.0-1",
    pool_path="pool/main/s/sword-text-web/sword-text-web_426.0-1_all.deb",
    sha256="930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1",
    data_dir="usr/share/sword/modules/texts/ztext/engWEB2015eb",
)

_BOOK = re.compile(r'<milestone n="([^"]+)" type="x-usfm-toc2"\s*/>')
_DROPPED = re.compile(r"<(note|title)\b[^>]*>.*?</\1>", re.DOTALL)
_PARAGRAPH_END = re.compile(r'<div\b(?=[^>]*\beID=)(?=[^>]*type="x-p")[^>]*/>|<(?:lg|chapter)\b[^>]*\beID=[^>]*/>|</item>')
_LINE_END = re.compile(r"<l\b[^>]*\beID=[^>]*/>")
_TAG = re.compile(r"<[^>]*>")
_GAP = "\x00"


def bible_documents(chunk_words: int = 500, data_dir: Path | str | None = None) -> list[Document]:
    """The books cut into documents of about ``chunk_words`` words (``chunks.chunk_paragraphs``).
    Ids are ``bible/<book>/<index>`` with the book's name in lower case, spaces as dashes
    (``bible/1-samuel/0003``); ``data_dir`` defaults to the package's module directory."""
    books = read_books(package_data(PACKAGE) if data_dir is None else data_dir)
    return [doc for name, paragraphs in books.items()
            for doc in chunk_paragraphs(f"bible/{name}", paragraphs, chunk_words)]


def read_books(module_dir: Path | str) -> dict[str, list[str]]:
    """Each book's paragraphs of plain text, by slug, in canonical order (Old then New Testament)."""
    module_dir = Path(module_dir)
    markup = "".join(_blocks(module_dir, testament) for testament in ("ot", "nt"))
    parts = _BOOK.split(markup)
    books: dict[str, list[str]] = {}
    # parts = [before the first book, name, text, name, text, ...]
    for name, text in zip(parts[1::2], parts[2::2]):
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        paragraphs = _paragraphs(text)
        if paragraphs:
            books.setdefault(slug, []).extend(paragraphs)
    if not books:
        raise ConfigError("corpus.path", f"no books found in {module_dir}; delete it so that it is fetched again, "
                          f"or install {PACKAGE.name}")
    return books


def _blocks(module_dir: Path, testament: str) -> str:
    index_path, data_path = module_dir / f"{testament}.bzs", module_dir / f"{testament}.bzz"
    if not (index_path.is_file() and data_path.is_file()):
        raise ConfigError("corpus.path", f"{module_dir} holds no {testament}.bzs/{testament}.bzz; "
                          f"delete it so that it is fetched again, or install {PACKAGE.name}")
    index, data = index_path.read_bytes(), data_path.read_bytes()
    texts = []
    for start in range(0, len(index) - len(index) % 12, 12):
        offset, size, expected = (int.from_bytes(index[start + i : start + i + 4], "little") for i in (0, 4, 8))
        try:
            raw = zlib.decompress(data[offset : offset + size])
        except zlib.error as error:
            raise ConfigError("corpus.path", f"{data_path} is damaged at block {start // 12} ({error}); "
                              "delete it so that it is fetched again") from error
        if len(raw) != expected:
            raise ConfigError("corpus.path", f"{data_path} is damaged at block {start // 12}; "
                              "delete it so that it is fetched again")
        texts.append(raw.decode("utf-8"))
    return "".join(texts)


def _paragraphs(markup: str) -> list[str]:
    # A dropped note often sits between two words with no space around it ("God<note>..</note>created"):
    # it leaves a gap that becomes a space between letters and nothing before punctuation.
    text = _DROPPED.sub(_GAP, markup)
    text = _PARAGRAPH_END.sub("\n\n", text)
    text = _LINE_END.sub(" ", text)
    text = html.unescape(_TAG.sub("", text))
    text = re.sub(rf"(?<=\w){_GAP}+(?=\w)", " ", text).replace(_GAP, "")
    return [" ".join(part.split()) for part in text.split("\n\n") if part.strip()]
