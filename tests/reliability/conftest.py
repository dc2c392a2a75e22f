"""Fault injection, shared: a tiny llama, a corpus and a finished cache + summaries as ``nla fit`` of
``configs/tiny/sft.yaml`` builds them, copied per test so each can damage its own."""

from __future__ import annotations

import os

import pytest

from nla.data.datamodule import NLADataModule
from tests.fixtures.commands import tiny_source
from tests.fixtures.corpus import write_corpus
from tests.fixtures.permissions import owner_access


@pytest.fixture(scope="package")
def tiny_sft(tmp_path_factory, tiny_model_dir):
    """(root, model directory, clean cache directory) for the tiny SFT config; the cache holds its
    summaries, so a run that finds it valid trains at once."""
    root = tmp_path_factory.mktemp("reliability")
    write_corpus(root)
    model_dir = tiny_model_dir("llama")
    datamodule = NLADataModule(tiny_source(model_dir, root / "docs.jsonl", root / "cache"), progress=False)
    datamodule.prepare_data()
    return root, model_dir, root / "cache"


@pytest.fixture
def permissions_apply(monkeypatch):
    """Mode bits bind this process: as root (CI here), ``os.access`` answers as they do for the owner."""
    if os.geteuid() == 0:
        monkeypatch.setattr(os, "access", owner_access)
