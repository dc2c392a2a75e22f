"""Cutting a long work into documents of about ``chunk_words`` words, only ever between paragraphs."""

from __future__ import annotations

from collections.abc import Iterable

from nla.data.document import Document
from nla.core.errors import ConfigError


def chunk_paragraphs(prefix: str, paragraphs: Iterable[str], chunk_words: int) -> list[Document]:
    """Documents ``<prefix>/0000``, ``<prefix>/0001``, ... of whole paragraphs joined by a blank line.

    A document closes at the first paragraph boundary at or past ``chunk_words`` words, so documents
    are at least that long except the work's last; a single longer paragraph stays whole.
    """
    if chunk_words < 1:
        raise ConfigError("corpus.chunk_words", f"must be at least 1, got {chunk_words}")
    documents: list[Document] = []
    chunk: list[str] = []
    words = 0
    for paragraph in paragraphs:
        chunk.append(paragraph)
        words += len(paragraph.split())
        if words >= chunk_words:
            documents.append(Document(f"{prefix}/{len(documents):04d}", "\n\n".join(chunk)))
            chunk, words = [], 0
    if chunk:
        documents.append(Document(f"{prefix}/{len(documents):04d}", "\n\n".join(chunk)))
    return documents
