"""The unit every reader yields: one document with the id that positions and splits hash."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    doc_id: str
    """Unique, stable id; positions and splits are keyed by it, never by reading order."""
    text: str
    """The document's full text, before tokenization."""
