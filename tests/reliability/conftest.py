"""Fault injection, shared: a tiny llama, a corpus and a finished cache + summaries as ``nla fit`` of
``configs/tiny/sft.yaml`` builds them, copied per test so each can damage its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nla.cli import main
from nla.data.cache_plan import CacheArgs
from nla.data.corpus import CorpusArgs
from nla.data.datamodule import NLADataModule
from nla.data.splits import SplitArgs
from nla.modules.backbone import BackboneArgs
from tests.data.cache_helpers import write_corpus

ROOT = Path(__file__).resolve().parents[2]
SFT = ROOT / "configs" / "tiny" / "sft.yaml"
GRPO = ROOT / "configs" / "tiny" / "grpo.yaml"


@pytest.fixture(scope="package")
def tiny_sft(tmp_path_factory, tiny_model_dir):
    """(root, model directory, clean cache directory) for the tiny SFT config; the cache holds its
    summaries, so a run that finds it valid trains at once."""
    root = tmp_path_factory.mktemp("reliability")
    write_corpus(root)
    model_dir = tiny_model_dir("llama")
    datamodule = NLADataModule(
        BackboneArgs(str(model_dir), dtype="float32"),
        CorpusArgs(str(root / "docs.jsonl"), chunk_words=120, max_documents=40, max_length=128, min_position=8),
        CacheArgs(str(root / "cache"), positions_per_document=3, shard_documents=16),
        SplitArgs(av_sft=0.4, ar_sft=0.4, rl=0.0, heldout=0.2),
        progress=False,
    )
    datamodule.prepare_data()
    return root, model_dir, root / "cache"


def copy_cache(source: Path, target: Path) -> Path:
    """A copy of a cache (a new directory, so ``checksums: auto`` verifies it)."""
    shutil.copytree(source, target)
    return target


def sft_argv(model_dir: Path, corpus: Path, cache: Path, run: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(SFT),
            "--data.init_args.model.name_or_path", str(model_dir),
            "--data.init_args.corpus.path", str(corpus),
            "--data.init_args.cache.directory", str(cache),
            "--trainer.default_root_dir", str(run),
            "--trainer.logger.init_args.save_dir", str(run),
            "--model.init_args.export_dir", str(run / "export"), *extra]


def run_main(capsys, argv: list[str]) -> tuple[int | None, str]:
    """Exit status (None: returned normally) and the last line of stderr."""
    try:
        main(argv)
        code = None
    except SystemExit as done:
        code = done.code
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""
