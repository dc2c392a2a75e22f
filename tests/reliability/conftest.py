"""Fault injection, shared: a tiny llama, a corpus and a finished cache + summaries as ``nla fit`` of
``configs/tiny/sft.yaml`` builds them, copied per test so each can damage its own."""

from __future__ import annotations

import pytest

from nla.data.cache_plan import CacheArgs
from nla.data.corpus import CorpusArgs
from nla.data.datamodule import NLADataModule
from nla.data.splits import SplitArgs
from nla.models.loading import ModelArgs
from tests.fixtures.corpus import write_corpus


@pytest.fixture(scope="package")
def tiny_sft(tmp_path_factory, tiny_model_dir):
    """(root, model directory, clean cache directory) for the tiny SFT config; the cache holds its
    summaries, so a run that finds it valid trains at once."""
    root = tmp_path_factory.mktemp("reliability")
    write_corpus(root)
    model_dir = tiny_model_dir("llama")
    datamodule = NLADataModule(
        ModelArgs(str(model_dir), dtype="float32"),
        CorpusArgs(str(root / "docs.jsonl"), chunk_words=120, max_documents=40, max_length=128, min_position=8),
        CacheArgs(str(root / "cache"), positions_per_document=3, shard_documents=16),
        SplitArgs(av_sft=0.4, ar_sft=0.4, rl=0.0, heldout=0.2),
        progress=False,
    )
    datamodule.prepare_data()
    return root, model_dir, root / "cache"
