"""A target model the run cannot use is one line naming it before any weights load: a file where a folder
belongs, a folder it may not read, a tokenizer with more tokens than the model's embedding has rows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from nla.models.loading import ModelArgs, load_tokenizer
from tests.fixtures.commands import run_main, sft_argv

EMBEDDING_ROWS = 300
"""Rows left in the embedding of ``short_embedding``'s model: fewer than its tokenizer's tokens."""


def cache_argv(model: Path, corpus: Path, cache: Path) -> list[str]:
    """``nla cache`` of a test's model and corpus at the lengths of ``configs/tiny/data.yaml``."""
    return ["cache", "--source.target.name_or_path", str(model), "--source.corpus.path", str(corpus),
            "--source.corpus.max_length", "128", "--source.cache.directory", str(cache)]


def test_a_file_given_as_the_model_folder_is_named(tiny_sft, tmp_path, capsys):
    root, model_dir, _ = tiny_sft
    config = model_dir / "config.json"
    code, err = run_main(capsys, cache_argv(config, root / "docs.jsonl", tmp_path / "cache"))
    assert (code, err) == (2, f"nla: error: source.target.name_or_path: '{config}' is a file, not a model folder; give "
                              "the folder that holds the model's config.json, or a .gguf file")
    assert not (tmp_path / "cache").exists()


def test_an_unreadable_model_folder_is_named(tiny_sft, tmp_path, capsys, permissions_apply):
    root, model_dir, _ = tiny_sft
    folder = Path(shutil.copytree(model_dir, tmp_path / "model"))
    folder.chmod(0)
    try:
        code, err = run_main(capsys, cache_argv(folder, root / "docs.jsonl", tmp_path / "cache"))
    finally:
        folder.chmod(0o755)
    assert (code, err) == (2, f"nla: error: source.target.name_or_path: cannot read the model folder '{folder}' "
                              "(permission denied); make it readable to your user (its owner can run chmod -R a+rX on it)")
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def short_embedding(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny llama with its embedding cut to ``EMBEDDING_ROWS`` rows, saved with its whole tokenizer."""
    source = tiny_model_dir("llama")
    directory = tmp_path_factory.mktemp("short-embedding")
    model = AutoModelForCausalLM.from_pretrained(source)
    model.resize_token_embeddings(EMBEDDING_ROWS)
    model.save_pretrained(directory)
    load_tokenizer(ModelArgs(str(source))).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("command, key", [("cache", "source"), ("fit", "data.source")])
def test_a_tokenizer_larger_than_the_embedding_is_refused_before_caching(tiny_sft, short_embedding, tmp_path, capsys,
                                                                         command, key):
    root, _, _ = tiny_sft
    tokens = len(load_tokenizer(ModelArgs(str(short_embedding))))
    assert tokens > EMBEDDING_ROWS
    argv = (cache_argv(short_embedding, root / "docs.jsonl", tmp_path / "cache") if command == "cache" else
            sft_argv(short_embedding, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run"))
    code, err = run_main(capsys, argv)
    assert (code, err) == (2, f"nla: error: {key}.target.name_or_path: the tokenizer of {short_embedding} has {tokens} "
                              f"tokens but the model's embedding has {EMBEDDING_ROWS} rows (vocab_size), so ids from "
                              f"{EMBEDDING_ROWS} on have no embedding; give the model with the tokenizer it was "
                              "trained with")
    assert not (tmp_path / "cache").exists()
