"""What an activation cache will hold, decided before any forward pass: documents, positions, splits, shards.

Every rank of a data-parallel run computes the same plan from the corpus alone, so ranks agree on
which shard holds which documents without talking to each other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from nla.data.cache_check import check_mode
from nla.data.corpus import CorpusArgs, corpus_fingerprint, load_corpus
from nla.data.positions import choose_positions
from nla.data.splits import SPLITS, SplitArgs
from nla.data.storage import STORE_DTYPES
from nla.data.tokens import TokenizedDocument, TokenizeReport, tokenize_documents
from nla.core.errors import ConfigError
from nla.models.fingerprint import model_fingerprint
from nla.models.loading import ModelArgs, local_source

FORMAT_VERSION = 1


@dataclass
class CacheArgs:
    """Where the activation cache lives and what goes into it."""

    directory: str = "cache/activations"
    """Directory of the cache (created if missing)."""
    layer: int = -1
    """K: the cache holds the residual after block K (HF ``hidden_states[K + 1]``), 0 to depth - 1.
    -1 is NOT the last block: it picks the default, about two thirds of the depth (printed when the
    cache is built; on a model of 4 blocks or fewer that is the last block)."""
    positions_per_document: int = 10
    """Up to this many token positions per document (fewer when the document is short)."""
    seed: int = 0
    """Seed of the per-document position RNG."""
    store_dtype: str = "float32"
    """``float32`` or ``bfloat16`` (stored as raw uint16). Never float16: Gemma norms overflow it."""
    batch_tokens: int = 8192
    """Padded tokens per forward batch; lower it if memory runs out."""
    shard_documents: int = 512
    """Documents per shard: the unit of atomic writes, resumption and data parallelism."""
    overwrite: bool = False
    """Replace a cache built from a different configuration instead of refusing it."""
    checksums: str = "auto"
    """When training opens the cache, also compare every file with its recorded sha256: ``auto`` when
    the cache is not in the directory where it was written or last verified (it was copied),
    ``always``, or ``never``. File sizes and the range of every stored value are checked each time."""
    repair: bool = False
    """Find the shards that fail validation (checksums included), re-extract only those and rewrite
    the statistics; the other shards are kept."""

    def __post_init__(self) -> None:
        check_mode(self.checksums)
        if self.store_dtype not in STORE_DTYPES:
            raise ConfigError("cache.store_dtype", f"'{self.store_dtype}' is not one of {', '.join(STORE_DTYPES)}")
        for name in ("positions_per_document", "batch_tokens", "shard_documents"):
            if getattr(self, name) < 1:
                raise ConfigError(f"cache.{name}", f"must be at least 1, got {getattr(self, name)}")


@dataclass
class PlannedDocument:
    doc_id: str
    split: str
    length: int
    positions: np.ndarray


def tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    serialized = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(serialized.encode()).hexdigest()[:16]


class PlannedDocuments:
    """Tokenized documents with their positions and split; documents with no valid position are left out.

    Re-iterable; ``report`` counts what the last pass cut or skipped.
    """

    def __init__(self, corpus: CorpusArgs, tokenizer, cache: CacheArgs, splits: SplitArgs) -> None:
        self.tokenized = tokenize_documents(load_corpus(corpus), tokenizer, corpus.max_length, corpus.min_position)
        self.corpus, self.cache, self.splits = corpus, cache, splits

    @property
    def report(self) -> TokenizeReport:
        return self.tokenized.report

    def __iter__(self) -> Iterator[tuple[TokenizedDocument, PlannedDocument]]:
        corpus, cache, splits = self.corpus, self.cache, self.splits
        for doc in self.tokenized:
            positions = choose_positions(
                doc.doc_id, doc.input_ids, doc.special_mask, cache.seed, cache.positions_per_document, corpus.min_position
            )
            if len(positions):
                yield doc, PlannedDocument(doc.doc_id, splits.split_of(doc.doc_id), len(doc.input_ids), positions)


@dataclass
class CachePlan:
    fingerprint: str
    documents: list[PlannedDocument]
    report: TokenizeReport
    shard_documents: int

    @property
    def num_shards(self) -> int:
        return -(-len(self.documents) // self.shard_documents)

    def shard(self, index: int) -> list[PlannedDocument]:
        return self.documents[index * self.shard_documents : (index + 1) * self.shard_documents]

    @property
    def tokens(self) -> int:
        return sum(doc.length for doc in self.documents)

    @property
    def vectors(self) -> int:
        return sum(len(doc.positions) for doc in self.documents)

    def split_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(SPLITS, 0)
        for doc in self.documents:
            counts[doc.split] += len(doc.positions)
        return counts


def make_plan(
    model: ModelArgs, corpus: CorpusArgs, cache: CacheArgs, splits: SplitArgs, tokenizer, layer: int
) -> CachePlan:
    """Read the corpus once: positions, splits, sizes, and the fingerprint of everything that decides bytes."""
    pairs = PlannedDocuments(corpus, tokenizer, cache, splits)
    documents = [planned for _, planned in pairs]
    if not documents:
        report = pairs.report
        if report.empty == report.documents:
            raise ConfigError("corpus.text_column", f"the text of every document ({report.documents}) in column "
                              f"{corpus.text_column!r} of {corpus.path!r} is empty; name the column that holds the text")
        raise ConfigError("corpus.min_position", f"no document has a token at index >= {corpus.min_position} "
                          f"({report.summary()}); lower corpus.min_position or give longer documents")
    tokenizer_key = tokenizer_hash(tokenizer)
    # A hub model's weights may not be downloaded yet: its name and revision identify it here.
    weights = model_fingerprint(model) if local_source(model)[0] is not None else None
    identity = {
        "format": FORMAT_VERSION,
        # Quantization joins the key only when used; the weights' fingerprint binds the cache to the weights
        # themselves, not to the path they were read from.
        "model": [model.name_or_path, model.gguf_file, model.revision, model.dtype]
        + ([model.quantization] if model.quantization != "none" else []) + [weights],
        "tokenizer": tokenizer_key,
        "corpus": corpus_fingerprint(corpus, tokenizer_key),
        "layer": layer,
        "positions": [cache.positions_per_document, cache.seed],
        "store_dtype": cache.store_dtype,
        "shard_documents": cache.shard_documents,
        "splits": asdict(splits),
    }
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return CachePlan(fingerprint, documents, pairs.report, cache.shard_documents)
