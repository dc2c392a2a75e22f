"""Corpus readers, tokenization with its report, fingerprints and the document selection.

All prose here is written for these tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest

from nla.data.corpus import CorpusArgs, Document, corpus_fingerprint, load_corpus, tokenize_documents
from nla.core.errors import ConfigError

WORDS = "the lamplighter counts brass rings while the ferry waits beside a quiet harbour wall".split()


def make_texts(n: int = 12) -> list[str]:
    # Lengths grow with i so some documents are short, some long, none alike.
    return [f"Note {i}: " + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(4 + 9 * i)) for i in range(n)]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Keep datasets' arrow cache inside the test's temporary directory."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def write_source(kind: str, root: Path, texts: list[str]) -> tuple[Path, list[str]]:
    """Write ``texts`` in one format; return the corpus path and the expected document ids."""
    rows = datasets.Dataset.from_dict({"text": texts, "serial": [f"n{i}" for i in range(len(texts))]})
    row_ids = [str(i) for i in range(len(texts))]
    if kind == "txt_dir":
        directory = root / "notes"
        ids = [f"part{i % 2}/note{i:02d}.txt" for i in range(len(texts))]
        for doc_id, text in zip(ids, texts):
            (directory / doc_id).parent.mkdir(parents=True, exist_ok=True)
            (directory / doc_id).write_text(text)
        return directory, ids
    if kind == "jsonl":
        rows.to_json(root / "notes.jsonl")
        return root / "notes.jsonl", row_ids
    if kind == "json":
        (root / "notes.json").write_text(json.dumps([{"text": t} for t in texts]))
        return root / "notes.json", row_ids
    if kind == "parquet":
        (root / "shards").mkdir()
        rows.select(range(5)).to_parquet(root / "shards" / "a.parquet")
        rows.select(range(5, len(texts))).to_parquet(root / "shards" / "b.parquet")
        return root / "shards", row_ids
    if kind == "csv":
        rows.to_csv(root / "notes.csv", index=False)
        return root / "notes.csv", row_ids
    if kind == "saved":
        rows.save_to_disk(root / "saved")
        return root / "saved", row_ids
    if kind == "saved_dict":
        datasets.DatasetDict({"train": rows.select(range(2)), "validation": rows}).save_to_disk(root / "saved")
        return root / "saved", row_ids
    raise ValueError(kind)


FORMATS = ["txt_dir", "jsonl", "json", "parquet", "csv", "saved", "saved_dict"]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_local_format_loads_and_streams_the_same_documents(kind, tmp_path):
    texts = make_texts()
    path, ids = write_source(kind, tmp_path, texts)
    split = "validation" if kind == "saved_dict" else "train"
    eager = list(load_corpus(CorpusArgs(path=str(path), split=split)))
    streamed = list(load_corpus(CorpusArgs(path=str(path), split=split, streaming=True)))
    expected = [Document(doc_id, text) for doc_id, text in zip(ids, texts)]
    if kind == "txt_dir":
        expected.sort(key=lambda doc: doc.doc_id)  # files are read in sorted path order
    assert eager == expected
    assert streamed == eager


def test_single_txt_file_gives_one_document_per_paragraph(tmp_path):
    (tmp_path / "one.txt").write_text("First paragraph,\nstill first.\n\nSecond paragraph.\n\n\nThird.")
    texts = [doc.text.strip() for doc in load_corpus(CorpusArgs(path=str(tmp_path / "one.txt")))]
    assert texts == ["First paragraph,\nstill first.", "Second paragraph.", "Third."]


def test_id_column_and_max_documents(tmp_path):
    path, _ = write_source("jsonl", tmp_path, make_texts())
    for streaming in (False, True):
        corpus = load_corpus(CorpusArgs(path=str(path), id_column="serial", max_documents=3, streaming=streaming))
        assert [doc.doc_id for doc in corpus] == ["n0", "n1", "n2"]
        assert [doc.doc_id for doc in corpus] == ["n0", "n1", "n2"], "a second pass reads the same documents"


def test_spread_selection_takes_evenly_spaced_documents_from_the_whole_corpus(tmp_path):
    path, _ = write_source("jsonl", tmp_path, make_texts(12))
    corpus = load_corpus(CorpusArgs(path=str(path), id_column="serial", max_documents=4, selection="spread"))
    # 12 documents, 4 kept: indices (2i + 1) * 12 // 8 = 1, 4, 7, 10 -- one from each quarter.
    assert [doc.doc_id for doc in corpus] == ["n1", "n4", "n7", "n10"]
    assert [doc.doc_id for doc in corpus] == ["n1", "n4", "n7", "n10"], "a second pass reads the same documents"
    everything = load_corpus(CorpusArgs(path=str(path), id_column="serial", max_documents=50, selection="spread"))
    assert len(list(everything)) == 12
    with pytest.raises(ConfigError, match="corpus.selection"):
        CorpusArgs(path=str(path), max_documents=4, selection="spread", streaming=True)
    with pytest.raises(ConfigError, match="corpus.selection"):
        CorpusArgs(path=str(path), selection="middle")


@pytest.mark.parametrize("streaming", [False, True])
def test_missing_text_column_lists_the_columns_that_exist(tmp_path, streaming):
    path, _ = write_source("jsonl", tmp_path, make_texts())
    with pytest.raises(ConfigError, match="corpus.text_column") as caught:
        list(load_corpus(CorpusArgs(path=str(path), text_column="body", streaming=streaming)))
    assert caught.value.field == "corpus.text_column"
    assert "text" in str(caught.value) and "serial" in str(caught.value)
    with pytest.raises(ConfigError, match="corpus.id_column"):
        list(load_corpus(CorpusArgs(path=str(path), id_column="uid", streaming=streaming)))


def test_empty_corpora_are_config_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "no_data").mkdir()
    (tmp_path / "no_data" / "readme.md").write_text("nothing to read here")
    (tmp_path / "header.csv").write_text("text,serial\n")
    for path in (tmp_path / "empty.jsonl", tmp_path / "no_data"):
        with pytest.raises(ConfigError, match="corpus.path: .*empty corpus"):
            load_corpus(CorpusArgs(path=str(path)))
    with pytest.raises(ConfigError, match="corpus.path"):
        list(load_corpus(CorpusArgs(path=str(tmp_path / "header.csv"), streaming=True)))


def test_missing_paths_and_unreachable_hub_ids_are_config_errors(tmp_path):
    for path in (str(tmp_path / "nope"), "data/nope.jsonl", "./nope"):
        with pytest.raises(ConfigError, match="corpus.path: .*does not exist"):
            load_corpus(CorpusArgs(path=path))
    # conftest turns the hub off, as it is on machines without network.
    with pytest.raises(ConfigError, match="corpus.path: .*not a local path"):
        load_corpus(CorpusArgs(path="nobody-here/no-such-corpus"))


def test_bad_args_and_duplicate_ids_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="corpus.max_length"):
        CorpusArgs(path="x", max_length=50, min_position=50)
    with pytest.raises(ConfigError, match="corpus.max_documents"):
        CorpusArgs(path="x", max_documents=0)
    (tmp_path / "dup.jsonl").write_text("".join(json.dumps({"text": t, "k": 1}) + "\n" for t in ("a b", "c d")))
    with pytest.raises(ConfigError, match="corpus.id_column: .*twice"):
        list(load_corpus(CorpusArgs(path=str(tmp_path / "dup.jsonl"), id_column="k")))
    saved, _ = write_source("saved_dict", tmp_path, make_texts(3))
    with pytest.raises(ConfigError, match="corpus.split: 'test' .*train, validation"):
        load_corpus(CorpusArgs(path=str(saved), split="test"))


def test_truncation_and_short_documents_are_counted(tiny_tokenizer):
    texts = make_texts(10)
    lengths = [len(tiny_tokenizer(t)["input_ids"]) for t in texts]
    max_length, min_position = 150, 30
    tokenized = tokenize_documents(
        [Document(str(i), t) for i, t in enumerate(texts)], tiny_tokenizer, max_length, min_position
    )
    kept = {doc.doc_id: doc for doc in tokenized}
    report = tokenized.report
    expected_short = sum(n < min_position + 1 for n in lengths)
    expected_cut = sum(n > max_length for n in lengths)
    assert 0 < expected_short and 0 < expected_cut < len(texts) - expected_short, "the text must cover all cases"
    assert (report.documents, report.skipped_short, report.truncated) == (10, expected_short, expected_cut)
    assert report.kept == len(kept) == 10 - expected_short
    assert report.tokens == sum(len(doc.input_ids) for doc in kept.values())
    for i, n in enumerate(lengths):
        if n < min_position + 1:
            assert str(i) not in kept
            continue
        doc = kept[str(i)]
        assert doc.truncated == (n > max_length)
        assert len(doc.input_ids) == min(n, max_length)
        assert doc.input_ids.dtype == np.int32 and doc.offsets.shape == (len(doc.input_ids), 2)
    assert "cut at max_length" in report.summary()


def test_exactly_max_length_is_not_reported_as_cut(tiny_tokenizer):
    text = make_texts(6)[5]
    n = len(tiny_tokenizer(text)["input_ids"])
    tokenized = tokenize_documents([Document("a", text)], tiny_tokenizer, max_length=n, min_position=1)
    (doc,) = list(tokenized)
    assert not doc.truncated and tokenized.report.truncated == 0


def test_special_tokens_are_marked_and_context_recovers_the_prefix(tiny_tokenizer):
    text = "The ferry waits <|im_end|> beside the harbour wall while the lamplighter counts rings."
    (doc,) = list(tokenize_documents([Document("s", text)], tiny_tokenizer, max_length=200, min_position=2))
    assert doc.input_ids[0] == tiny_tokenizer.bos_token_id and doc.special_mask[0]
    in_text = int(np.flatnonzero(doc.input_ids == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>"))[0])
    assert doc.special_mask[in_text], "a special token typed in the text is still special"
    assert doc.special_mask.sum() == 2
    for position in range(len(doc.input_ids)):
        prefix = tiny_tokenizer.decode(doc.input_ids[: position + 1], skip_special_tokens=False)
        assert doc.context(position) == prefix.replace("<bos>", "", 1)
    assert doc.context(len(doc.input_ids) - 1) == text


def test_fingerprint_tracks_content_and_settings_not_location(tmp_path):
    path, _ = write_source("jsonl", tmp_path, make_texts())
    args = CorpusArgs(path=str(path))
    base = corpus_fingerprint(args, "tok-a")
    assert len(base) == 16 and base == corpus_fingerprint(args, "tok-a")
    assert base == corpus_fingerprint(CorpusArgs(path=str(path), streaming=True), "tok-a")
    assert base == corpus_fingerprint(args, "tok-a", documents=load_corpus(args))
    moved = tmp_path / "elsewhere.jsonl"
    shutil.copy(path, moved)
    assert base == corpus_fingerprint(CorpusArgs(path=str(moved)), "tok-a")
    assert base != corpus_fingerprint(args, "tok-b")
    assert base != corpus_fingerprint(CorpusArgs(path=str(path), max_length=1024), "tok-a")
    assert base != corpus_fingerprint(CorpusArgs(path=str(path), max_documents=11), "tok-a")
    edited = make_texts()
    edited[7] = edited[7].replace("harbour", "harbor")
    (tmp_path / "edited").mkdir()
    changed, _ = write_source("jsonl", tmp_path / "edited", edited)
    assert base != corpus_fingerprint(CorpusArgs(path=str(changed)), "tok-a")
