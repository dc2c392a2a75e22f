"""Public-domain prose that nla can fetch by name: ``corpus.path: austen`` or ``corpus.path: bible``.

Each named corpus comes from a Debian package (installed, or fetched without root into nla's cache
by ``debian``) and is cut into documents of about ``corpus.chunk_words`` words between paragraphs.
"""

from __future__ import annotations

from collections.abc import Callable

from nla.data.corpora.austen import austen_documents
from nla.data.corpora.bible import bible_documents
from nla.data.document import Document

NAMED_CORPORA: dict[str, Callable[[int], list[Document]]] = {
    "austen": austen_documents,
    "bible": bible_documents,
}
"""Corpus name -> reader taking ``chunk_words``: Jane Austen's six novels (r-cran-janeaustenr, about
730,000 words) and the World English Bible (sword-text-web, about 860,000 words)."""
