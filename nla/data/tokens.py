"""Documents to token ids, with the character offsets that map every token back into its text."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np

from nla.data.document import Document
from nla.core.errors import NLAError

log = logging.getLogger(__name__)


@dataclass
class TokenizedDocument:
    doc_id: str
    """Id of the source document."""
    text: str
    """The full source text (also past a cut at ``max_length``)."""
    input_ids: np.ndarray
    """Token ids, int32 [n], with the tokenizer's default special tokens (BOS where it adds one)."""
    offsets: np.ndarray
    """Character span ``[start, end)`` in ``text`` of each token, int32 [n, 2]; (0, 0) for special tokens."""
    special_mask: np.ndarray
    """True where the token is a special token added by the tokenizer, bool [n]."""
    truncated: bool
    """Whether tokens were dropped to fit ``max_length``."""

    def context(self, position: int) -> str:
        """The text the model has read once it has consumed the token at ``position``."""
        # Special tokens carry (0, 0) spans, so take the furthest end reached so far.
        return self.text[: int(self.offsets[: position + 1, 1].max())]


@dataclass
class TokenizeReport:
    documents: int = 0
    """Documents read."""
    kept: int = 0
    """Documents yielded."""
    truncated: int = 0
    """Kept documents cut at ``max_length``."""
    skipped_short: int = 0
    """Documents dropped for having fewer than ``min_position + 1`` tokens (no possible position)."""
    tokens: int = 0
    """Tokens in the kept documents, after cutting."""
    empty: int = 0
    """Documents whose text is empty or only whitespace (counted in ``skipped_short`` too)."""

    def summary(self) -> str:
        return (
            f"{self.documents} documents read: {self.kept} kept ({self.tokens} tokens), "
            f"{self.truncated} cut at max_length, {self.skipped_short} skipped as too short"
        )


class TokenizedDocuments:
    """Lazily tokenized documents; ``report`` counts the pass in progress or the last complete one."""

    def __init__(
        self,
        documents: Iterable[Document],
        tokenizer,
        max_length: int,
        min_position: int,
        batch_size: int = 64,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise NLAError("tokenizer: character offsets need a fast (Rust) tokenizer; load it with use_fast=True")
        if not 0 <= min_position < max_length:
            raise ValueError(f"need 0 <= min_position < max_length, got {min_position} and {max_length}")
        self.documents = documents
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.min_position = min_position
        self.batch_size = batch_size
        self.special_ids = np.asarray(sorted(tokenizer.all_special_ids), dtype=np.int32)
        self.report = TokenizeReport()

    def __iter__(self) -> Iterator[TokenizedDocument]:
        self.report = report = TokenizeReport()
        documents = iter(self.documents)
        while batch := list(islice(documents, self.batch_size)):
            encoded = self.tokenizer(
                [doc.text for doc in batch],
                truncation=True,
                max_length=self.max_length,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
                return_attention_mask=False,
            )
            for i, doc in enumerate(batch):
                report.documents += 1
                report.empty += not doc.text.strip()
                ids = np.asarray(encoded["input_ids"][i], dtype=np.int32)
                if len(ids) < self.min_position + 1:
                    report.skipped_short += 1
                    continue
                # The Rust encoding keeps what truncation removed; non-empty means the document was cut.
                truncated = len(encoded.encodings[i].overflowing) > 0
                report.kept += 1
                report.truncated += truncated
                report.tokens += len(ids)
                yield TokenizedDocument(
                    doc_id=doc.doc_id,
                    text=doc.text,
                    input_ids=ids,
                    offsets=np.asarray(encoded["offset_mapping"][i], dtype=np.int32).reshape(-1, 2),
                    # Special tokens typed inside the text are not flagged by the mask; match them by id too.
                    special_mask=np.asarray(encoded["special_tokens_mask"][i], dtype=bool)
                    | np.isin(ids, self.special_ids),
                    truncated=truncated,
                )
        if report.truncated:
            log.warning("%d of %d documents were cut at max_length=%d", report.truncated, report.kept, self.max_length)


def tokenize_documents(
    documents: Iterable[Document],
    tokenizer,
    max_length: int = 4096,
    min_position: int = 50,
    batch_size: int = 64,
) -> TokenizedDocuments:
    """Tokenize lazily, ``batch_size`` texts per tokenizer call; after iterating, ``result.report``
    says how many documents were cut at ``max_length`` or skipped as shorter than ``min_position + 1``."""
    return TokenizedDocuments(documents, tokenizer, max_length, min_position, batch_size)
