"""A corpus line that cannot be read (malformed JSON, a lone surrogate, bytes that are not UTF-8) is
one line naming the corpus key, the file and the line number (exit 2), before any model loads."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.commands import run_main, sft_argv

BAD_LINE = 5

LINES = {
    "malformed JSON": (b'{"text": "the river runs', "line 5 column 10 is not valid JSON (Unterminated string starting at)"),
    "lone surrogate": (b'{"text": "a stone \\ud800 in the river"}',
                       "line 5 holds a lone surrogate (\\ud800), which is not text"),
    "not UTF-8": (b'{"text": "a stone \xff\xfe in the river"}', "line 5 is not UTF-8 text (byte 19 of the line is 0xff)"),
}


def corpus_with(tmp_path, source, bad: bytes):
    lines = source.read_bytes().splitlines()
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b"\n".join([*lines[: BAD_LINE - 1], bad, *lines[BAD_LINE - 1 :]]) + b"\n")
    assert path.read_bytes().splitlines()[BAD_LINE - 1] == bad
    return path


def cache_argv(model_dir, corpus, cache) -> list[str]:
    return ["cache", "--source.target.name_or_path", str(model_dir), "--source.corpus.path", str(corpus),
            "--source.corpus.min_position", "8", "--source.corpus.max_length", "64",
            "--source.cache.directory", str(cache), "--source.cache.layer", "1"]


@pytest.mark.parametrize("case", list(LINES))
def test_nla_cache_names_the_file_and_line(tiny_sft, tmp_path, capsys, monkeypatch, case):
    root, model_dir, _ = tiny_sft
    bad, problem = LINES[case]
    corpus = corpus_with(tmp_path, root / "docs.jsonl", bad)
    monkeypatch.setattr("nla.data.cache_writer.load_causal_lm", lambda *args, **kwargs: pytest.fail("weights loaded"))
    code, err = run_main(capsys, cache_argv(model_dir, corpus, tmp_path / "cache"))
    assert (code, err) == (2, f"nla: error: source.corpus.path: {corpus} {problem}; fix or remove that line")
    assert not (tmp_path / "cache" / "shards").exists()


def test_nla_fit_names_the_file_and_line(tiny_sft, tmp_path, capsys):
    root, model_dir, _ = tiny_sft
    bad, problem = LINES["lone surrogate"]
    corpus = corpus_with(tmp_path, root / "docs.jsonl", bad)
    code, err = run_main(capsys, sft_argv(model_dir, corpus, tmp_path / "cache", tmp_path / "run"))
    assert (code, err) == (2, f"nla: error: data.source.corpus.path: {corpus} {problem}; fix or remove that line")


def test_a_json_document_names_its_line(tiny_sft, tmp_path, capsys):
    root, model_dir, _ = tiny_sft
    rows = [json.loads(line) for line in (root / "docs.jsonl").read_text().splitlines()]
    lines = json.dumps(rows, indent=1).splitlines()
    assert lines[5].startswith('  "text": ')
    lines[5] = '  "text" "a colon is missing"'
    corpus = tmp_path / "docs.json"
    corpus.write_text("\n".join(lines))
    code, err = run_main(capsys, cache_argv(model_dir, corpus, tmp_path / "cache"))
    assert (code, err) == (2, f"nla: error: source.corpus.path: {corpus} line 6 column 10 is not valid JSON (Expecting "
                              "':' delimiter); fix that line")
