"""Where the documents come from: a hub dataset, local files, a saved dataset, or a named corpus.

Document ids are what positions and splits hash, so they are chosen to survive re-reading: the
``id_column`` when given; for a directory of .txt files the file's path relative to that directory
(adding a file then leaves every other id alone); otherwise the row index in reading order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nla.data.corpora import NAMED_CORPORA
from nla.data.corpus_lines import first_bad_line
from nla.data.document import Document
from nla.data.permissions import first_unreadable, unreadable_message
from nla.data.tokens import TokenizedDocument, TokenizedDocuments, TokenizeReport, tokenize_documents
from nla.core.errors import ConfigError

# The input side of the cache is used through this module; the pieces live in small modules.
__all__ = [
    "BUILDERS", "NAMED_CORPORA", "SELECTIONS", "Corpus", "CorpusArgs", "Document", "TokenizeReport",
    "TokenizedDocument", "TokenizedDocuments", "corpus_fingerprint", "load_corpus", "tokenize_documents",
]

SELECTIONS = ("first", "spread")
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Bump when the fingerprint's inputs or their encoding change, so old caches stop matching.
FINGERPRINT_VERSION = 1


@dataclass
class CorpusArgs:
    path: str
    """A hub dataset id, a local file or directory of .txt/.jsonl/.json/.parquet/.csv files, a
    directory written by ``Dataset.save_to_disk``, or a named public-domain corpus: ``austen`` (Jane
    Austen's six novels, Debian package r-cran-janeaustenr) or ``bible`` (the World English Bible,
    sword-text-web), used where installed, else fetched once into ``$NLA_CACHE_DIR/debian``. A single
    .txt file gives one document per blank-line separated paragraph; a directory of .txt files gives
    one document per file."""
    name: str | None = None
    """Configuration name of a hub dataset."""
    split: str = "train"
    """Split of a hub dataset or of a saved DatasetDict; local files always form one split."""
    text_column: str = "text"
    """Column holding the document text."""
    streaming: bool = False
    """Read rows lazily instead of materialising the dataset first; yields the same documents."""
    max_documents: int | None = None
    """Keep this many documents, chosen by ``selection``; None reads them all."""
    selection: str = "first"
    """How ``max_documents`` chooses: ``first`` (the first ones in reading order) or ``spread`` (evenly
    spaced over the whole corpus: of N documents, those at index floor((i + 1/2) N / max_documents),
    so a capped corpus still covers every book of a named corpus; deterministic; reads the corpus once
    more to count it, and not with ``streaming``)."""
    max_length: int = 4096
    """Tokens kept per document, special tokens included; longer documents are cut and counted."""
    min_position: int = 50
    """First token index a position may take, so every position has this much left context."""
    id_column: str | None = None
    """Column holding unique document ids; None uses the rules in this module's docstring."""
    chunk_words: int = 500
    """For a named corpus (``austen``, ``bible``) only: words per document, split at paragraph boundaries."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("corpus.path", f"is empty; give a dataset id, a local path or one of {', '.join(NAMED_CORPORA)}")
        if self.max_documents is not None and self.max_documents < 1:
            raise ConfigError("corpus.max_documents", f"must be at least 1 or null, got {self.max_documents}")
        if self.min_position < 0:
            raise ConfigError("corpus.min_position", f"must be >= 0, got {self.min_position}")
        if self.max_length <= self.min_position:
            raise ConfigError(
                "corpus.max_length",
                f"must exceed min_position ({self.min_position}) to leave room for a position, got {self.max_length}",
            )
        if self.chunk_words < 1:
            raise ConfigError("corpus.chunk_words", f"must be at least 1, got {self.chunk_words}")
        if self.selection not in SELECTIONS:
            raise ConfigError("corpus.selection", f"must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if self.selection == "spread" and self.streaming:
            raise ConfigError("corpus.selection", "spread needs the corpus's length; use first with streaming")


class Corpus:
    """Re-iterable documents; every pass reads the source again, and a streamed source streams again.

    Iteration keeps ``max_documents`` (per ``selection``), rejects duplicate ids and raises if nothing
    was read.
    """

    def __init__(self, source: Callable[[], Iterable[Document]], args: CorpusArgs) -> None:
        self._source = source
        self.args = args

    def __iter__(self) -> Iterator[Document]:
        seen: set[str] = set()
        limit, chosen = self.args.max_documents, None
        if limit is not None and self.args.selection == "spread":
            total = sum(1 for _ in self._source())
            chosen = spread_indices(total, limit)
        for index, doc in enumerate(self._source()):
            if limit is not None and len(seen) >= limit:
                return
            if chosen is not None and index not in chosen:
                continue
            if doc.doc_id in seen:
                raise ConfigError("corpus.id_column", f"document id {doc.doc_id!r} appears twice; ids must be unique")
            seen.add(doc.doc_id)
            yield doc
        if not seen:
            raise ConfigError("corpus.path", f"{self.args.path!r} holds no documents (empty corpus)")


def spread_indices(total: int, count: int) -> set[int]:
    """``count`` indices evenly spaced over ``range(total)`` (all of them when ``count >= total``)."""
    if count >= total:
        return set(range(total))
    return {(2 * i + 1) * total // (2 * count) for i in range(count)}


def load_corpus(args: CorpusArgs) -> Corpus:
    """Open the source named by ``args`` and check its columns now; documents are read on iteration."""
    if args.path in NAMED_CORPORA:
        documents = NAMED_CORPORA[args.path](args.chunk_words)
        return Corpus(lambda: documents, args)
    dataset, file_ids, lines = _open_dataset(args)
    if dataset.column_names is not None:
        _check_columns(dataset.column_names, args)
        dataset = dataset.select_columns([c for c in (args.text_column, args.id_column) if c])
    return Corpus(lambda: _documents(dataset, args, file_ids, lines), args)


def corpus_fingerprint(
    args: CorpusArgs, tokenizer_name_or_hash: str, documents: Iterable[Document] | None = None
) -> str:
    """A 16-hex-digit hash of everything that decides the tokenized data.

    In: every document's id and text, in reading order (this covers path, name, split, columns,
    max_documents, selection and chunk_words by their effect, so moving a directory does not invalidate a cache
    while editing one document does); ``max_length`` and ``min_position``; the tokenizer string the
    caller passes; a format version. Out: ``streaming`` (same documents either way). ``documents``
    lets a caller hash the documents it is already iterating instead of reading the corpus again.
    """
    content = hashlib.sha256()
    for doc in load_corpus(args) if documents is None else documents:
        for part in (doc.doc_id, doc.text):
            data = part.encode("utf-8")
            # Length prefixes keep ("ab", "c") and ("a", "bc") apart.
            content.update(len(data).to_bytes(8, "big"))
            content.update(data)
    head = {
        "version": FINGERPRINT_VERSION,
        "tokenizer": tokenizer_name_or_hash,
        "max_length": args.max_length,
        "min_position": args.min_position,
        "documents": content.hexdigest(),
    }
    return hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()[:16]


def _open_dataset(args: CorpusArgs):
    """(dataset, the document ids of a directory of .txt files or None, and the local files with their
    ``datasets`` builder whose lines a read failure can be traced to, or None)."""
    import datasets

    path = Path(args.path).expanduser()
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        _check_readable(path, lambda file: True)
        return _from_disk(datasets, path, args), None, None
    if path.exists():
        _check_readable(path, lambda file: file.suffix.lower() in BUILDERS)
        return _from_files(datasets, path, args)
    if looks_local(args.path):
        raise ConfigError("corpus.path", f"{args.path!r} does not exist")
    try:
        return datasets.load_dataset(args.path, args.name, split=args.split, streaming=args.streaming), None, None
    except (ConnectionError, FileNotFoundError) as error:
        message = f"{args.path!r} is not a local path and not loadable from the hub: {_line(error)}"
        raise ConfigError("corpus.path", message) from error
    except ValueError as error:
        field = "corpus.split" if "split" in str(error).lower() else "corpus.name"
        raise ConfigError(field, f"hub dataset {args.path!r}: {_line(error)}") from error


def _from_disk(datasets, path: Path, args: CorpusArgs):
    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        if args.split not in dataset:
            raise ConfigError("corpus.split", f"{args.split!r} is not a split of {path}; it has {', '.join(dataset)}")
        dataset = dataset[args.split]
    return dataset.to_iterable_dataset() if args.streaming else dataset


def _from_files(datasets, path: Path, args: CorpusArgs):
    supported = ", ".join(BUILDERS)
    if path.is_file():
        files = [path]
    else:
        # Hidden entries (.git, .cache, editor files) are never corpus data.
        files = sorted(
            f for f in path.rglob("*")
            if f.is_file() and f.suffix.lower() in BUILDERS
            and not any(part.startswith(".") for part in f.relative_to(path).parts)
        )
    builders = {BUILDERS.get(f.suffix.lower()) for f in files}
    if None in builders:
        raise ConfigError("corpus.path", f"{path} is not a {supported} file")
    if not files:
        raise ConfigError("corpus.path", f"{path} holds no {supported} files (empty corpus)")
    if len(builders) > 1:
        raise ConfigError("corpus.path", f"{path} mixes formats ({', '.join(sorted(builders))}); keep one per corpus")
    if all(f.stat().st_size == 0 for f in files):
        raise ConfigError("corpus.path", f"{path} holds no documents (empty corpus)")
    builder = builders.pop()
    options = {"sample_by": "document" if path.is_dir() else "paragraph"} if builder == "text" else {}
    try:
        dataset = datasets.load_dataset(
            builder, data_files=[str(f) for f in files], split="train", streaming=args.streaming, **options
        )
    # datasets reports unreadable or row-less files as any of these; StopIteration comes from empty JSON.
    except (ValueError, StopIteration, datasets.exceptions.DatasetsError) as error:
        message = first_bad_line(files, builder) or f"could not read {path} as {builder}: {_line(error) or 'no rows'}"
        raise ConfigError("corpus.path", message) from error
    file_ids = [f.relative_to(path).as_posix() for f in files] if path.is_dir() and builder == "text" else None
    return dataset, file_ids, (files, builder)


def _check_readable(path: Path, wanted) -> None:
    """Every directory of the corpus listable and every file of it ``wanted`` readable by this user
    (``datasets`` would raise a PermissionError, and skips directories it cannot list)."""
    unreadable = first_unreadable(path, wanted)
    if unreadable is not None:
        raise ConfigError("corpus.path", unreadable_message(unreadable))


def _documents(dataset, args: CorpusArgs, file_ids: list[str] | None, lines) -> Iterator[Document]:
    """The rows as documents; ``lines`` (files, builder) names the line at fault when the rows cannot
    be decoded (bytes that are not UTF-8 pass ``load_dataset`` and fail here; a streamed corpus parses
    here too)."""
    import datasets

    try:
        yield from _rows(dataset, args, file_ids)
    except (ValueError, datasets.exceptions.DatasetsError) as error:
        message = first_bad_line(*lines) if lines else None
        if message is None:
            raise
        raise ConfigError("corpus.path", message) from error


def _rows(dataset, args: CorpusArgs, file_ids: list[str] | None) -> Iterator[Document]:
    for index, row in enumerate(dataset):
        if index == 0:
            _check_columns(list(row), args)
        text = row[args.text_column]
        if text is None:
            text = ""
        if not isinstance(text, str):
            kind = type(text).__name__
            raise ConfigError("corpus.text_column", f"column {args.text_column!r} holds {kind} values, not text")
        if args.id_column is not None:
            if row[args.id_column] is None:
                raise ConfigError("corpus.id_column", f"row {index} has no value in column {args.id_column!r}")
            doc_id = str(row[args.id_column])
        else:
            doc_id = file_ids[index] if file_ids is not None else str(index)
        yield Document(doc_id, text)


def _check_columns(columns: list[str], args: CorpusArgs) -> None:
    for field, column in (("corpus.text_column", args.text_column), ("corpus.id_column", args.id_column)):
        if column is not None and column not in columns:
            raise ConfigError(field, f"no column {column!r} in {args.path!r}; its columns are: {', '.join(columns)}")


def looks_local(path: str) -> bool:
    """Whether ``path`` names a local file or directory rather than a hub dataset."""
    # Hub ids are "name" or "owner/name" without a file extension; anything else is meant as a path.
    return (
        path.startswith(("/", ".", "~"))
        or "\\" in path
        or path.count("/") > 1
        or Path(path).suffix.lower() in BUILDERS
    )


def _line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
