"""Building small caches in tests: a corpus of our own words and the argument objects."""

from __future__ import annotations

import json
import random
from pathlib import Path

from nla.data.cache_plan import CacheArgs
from nla.data.corpus import CorpusArgs
from nla.modules.backbone import BackboneArgs

WORDS = (
    "the reconstructor reads an explanation and predicts a vector while the verbalizer writes short notes "
    "about rivers stones millers wheels teachers numbers boards sailors waves storms and quiet nights"
).split()


def write_corpus(directory: Path, documents: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path = directory / "docs.jsonl"
    with open(path, "w") as stream:
        for _ in range(documents):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 90))) + "."
            stream.write(json.dumps({"text": text}) + "\n")
    return path


def cache_args(tmp_path: Path, model_dir: Path, **cache) -> tuple[BackboneArgs, CorpusArgs, CacheArgs]:
    corpus_path = tmp_path / "docs.jsonl"
    if not corpus_path.exists():
        write_corpus(tmp_path)
    settings = dict(directory=str(tmp_path / "cache"), layer=1, positions_per_document=3, shard_documents=8)
    settings.update(cache)
    return (
        BackboneArgs(str(model_dir)),
        CorpusArgs(str(corpus_path), min_position=8, max_length=64),
        CacheArgs(**settings),
    )
