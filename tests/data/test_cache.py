import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

from nla.commands.cli import main
from nla.data import storage
from nla.data.activation_cache import ActivationCache
from nla.data.cache_format import LOCATION, shard_files
from nla.data.cache_writer import build_cache, length_sorted_batches
from nla.data.splits import SplitArgs
from nla.core.errors import ConfigError, NLAError
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from tests.fixtures.corpus import cache_args
from tests.fixtures.paths import ROOT

QUIET = Console(file=open(os.devnull, "w"))


def build(model, corpus, cache, **kwargs):
    return build_cache(model, corpus, cache, SplitArgs(), console=QUIET, **kwargs)


def tree_bytes(directory: Path) -> dict[str, bytes]:
    # location.json records where the cache sits (host, device, inode), which differs by construction.
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != LOCATION}


def assert_matches_full_forward(cache: ActivationCache, model_dir: Path, atol: float) -> None:
    args = ModelArgs(str(model_dir))
    model, tokenizer = load_causal_lm(args).eval(), load_tokenizer(args)
    for i in range(0, len(cache), max(1, len(cache) // 12)):
        record = cache.record(i)
        ids = tokenizer(record["context"], return_tensors="pt")["input_ids"]
        # The context ends at the cached token, so re-tokenizing it puts that token last.
        assert int(ids[0, -1]) == record["token_id"] and ids.shape[1] == record["position"] + 1
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[cache.layer + 1][0, -1]
        torch.testing.assert_close(cache.vectors([i])[0], hidden.float(), rtol=0, atol=atol)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_cached_vectors_equal_a_fresh_full_forward(family, tmp_path, tiny_model_dir):
    model, corpus, cache = cache_args(tmp_path, tiny_model_dir(family))
    directory = build(model, corpus, cache)
    opened = ActivationCache(directory, expect_d=32, expect_layer=1, verify_checksums=True)
    assert len(opened) == opened.meta["counts"]["vectors"] == len(opened.index)
    assert_matches_full_forward(opened, tiny_model_dir(family), atol=1e-5)


def test_bfloat16_storage_round_trips_to_the_nearest_bfloat16(tmp_path, tiny_model_dir):
    model, corpus, cache = cache_args(tmp_path, tiny_model_dir("llama"), store_dtype="bfloat16")
    bf16 = ActivationCache(build(model, corpus, cache))
    _, _, cache32 = cache_args(tmp_path, tiny_model_dir("llama"), directory=str(tmp_path / "f32"))
    f32 = ActivationCache(build(model, corpus, cache32))
    assert np.load(shard_files(bf16.directory, 0)["vectors"]).dtype == np.uint16
    everything = np.arange(len(f32))
    torch.testing.assert_close(bf16.vectors(everything), f32.vectors(everything).bfloat16().float(), rtol=0, atol=0)


def test_smollm2_cache_matches_the_full_model(tmp_path, smollm2_dir):
    model, corpus, cache = cache_args(tmp_path, smollm2_dir, layer=6, positions_per_document=2, shard_documents=4)
    corpus.max_documents = 6
    opened = ActivationCache(build(model, corpus, cache), expect_d=576, expect_layer=6)
    assert len(opened) == 12
    assert_matches_full_forward(opened, smollm2_dir, atol=1e-4)


def test_statistics_per_split(tmp_path, tiny_model_dir):
    model, corpus, cache = cache_args(tmp_path, tiny_model_dir("llama"))
    opened = ActivationCache(build(model, corpus, cache))
    for split in ("av_sft", "heldout", "all"):
        rows = np.arange(len(opened)) if split == "all" else opened.split_indices(split)
        vectors = opened.vectors(rows).double()
        norms = vectors.norm(dim=-1).numpy()
        normalized = vectors / vectors.norm(dim=-1, keepdim=True) * vectors.shape[1] ** 0.5
        mean = normalized.mean(0)
        stats = opened.stats(split)
        assert stats["count"] == len(rows)
        assert stats["p75_norm"] == pytest.approx(np.percentile(norms, 75), rel=1e-9)
        assert stats["variance"] == pytest.approx(float((normalized - mean).square().sum(1).mean() / 32), rel=1e-9)
        torch.testing.assert_close(stats["mean"], mean, rtol=0, atol=1e-9)


def test_documents_never_straddle_splits(tmp_path, tiny_model_dir):
    model, corpus, cache = cache_args(tmp_path, tiny_model_dir("llama"))
    opened = ActivationCache(build(model, corpus, cache))
    split_of_doc = {}
    for i in range(len(opened)):
        record = opened.record(i)
        assert split_of_doc.setdefault(record["doc_id"], record["split"]) == record["split"]


def test_resharding_changes_no_position_or_vector(tmp_path, tiny_model_dir):
    model, corpus, cache = cache_args(tmp_path, tiny_model_dir("llama"), shard_documents=8)
    a = ActivationCache(build(model, corpus, cache))
    _, _, other = cache_args(tmp_path, tiny_model_dir("llama"), shard_documents=3, directory=str(tmp_path / "b"))
    b = ActivationCache(build(model, corpus, other))
    assert b.meta["num_shards"] > a.meta["num_shards"]
    key = lambda c: sorted((c.record(i)["doc_id"], c.record(i)["position"], i) for i in range(len(c)))  # noqa: E731
    for (doc_a, pos_a, i), (doc_b, pos_b, j) in zip(key(a), key(b)):
        assert (doc_a, pos_a) == (doc_b, pos_b)
        torch.testing.assert_close(a.vectors([i]), b.vectors([j]), rtol=0, atol=1e-6)


def test_a_different_config_is_refused_unless_overwrite(tmp_path, tiny_model_dir):
    model, corpus, cache = cache_args(tmp_path, tiny_model_dir("llama"))
    build(model, corpus, cache)
    cache.positions_per_document = 4
    with pytest.raises(ConfigError, match="cache.overwrite: .* different configuration"):
        build(model, corpus, cache)
    cache.overwrite = True
    assert ActivationCache(build(model, corpus, cache)).meta["positions"]["per_document"] == 4


def test_reader_refuses_mismatched_model_and_damaged_shards(tmp_path, tiny_model_dir):
    model, corpus, cache = cache_args(tmp_path, tiny_model_dir("llama"))
    directory = build(model, corpus, cache)
    with pytest.raises(ConfigError, match="d=32 but the model has d=576"):
        ActivationCache(directory, expect_d=576)
    with pytest.raises(ConfigError, match="holds layer 1 but layer 2"):
        ActivationCache(directory, expect_layer=2)
    vectors = shard_files(directory, 1)["vectors"]
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF
    vectors.write_bytes(bytes(data))
    ActivationCache(directory)  # sizes still match: only the checksum can tell
    with pytest.raises(NLAError, match="shard 1 .* corrupt"):
        ActivationCache(directory, verify_checksums=True)
    vectors.write_bytes(bytes(data[:-100]))
    with pytest.raises(NLAError, match="shard 1 .* truncated"):
        ActivationCache(directory)


def test_data_parallel_ranks_write_disjoint_shards_and_combine(tmp_path, tiny_model_dir):
    model, corpus, single = cache_args(tmp_path, tiny_model_dir("llama"), directory=str(tmp_path / "single"))
    build(model, corpus, single)
    _, _, parallel = cache_args(tmp_path, tiny_model_dir("llama"), directory=str(tmp_path / "parallel"))
    build(model, corpus, parallel, rank=1, world_size=2)
    written = sorted(p.name for p in (tmp_path / "parallel" / "shards").glob("*.json"))
    assert written == ["shard-00001.json", "shard-00003.json"] and not (tmp_path / "parallel" / "meta.json").exists()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "parallel" / "shards").glob("shard-0000[13]*")}
    build(model, corpus, parallel, rank=0, world_size=2)
    assert before == {p: p.stat().st_mtime_ns for p in before}, "combining rewrote another rank's shard"
    assert tree_bytes(tmp_path / "single") == tree_bytes(tmp_path / "parallel")


def test_disk_full_leaves_no_partial_shard_and_resumes(tmp_path, tiny_model_dir, monkeypatch):
    model, corpus, cache = cache_args(tmp_path, tiny_model_dir("llama"))
    real_save, calls = np.save, []

    def save_until_full(stream, array, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(stream, array, **kwargs)

    monkeypatch.setattr(storage.np, "save", save_until_full)
    with pytest.raises(NLAError, match="disk full while writing .*shard-00001.vectors.npy"):
        build(model, corpus, cache)
    shards = Path(cache.directory) / "shards"
    assert sorted(p.name for p in shards.iterdir()) == [f"shard-00000.{s}" for s in ("docs.jsonl", "index.npy", "json", "vectors.npy")]
    monkeypatch.setattr(storage.np, "save", real_save)
    assert len(ActivationCache(build(model, corpus, cache))) > 0


def test_killed_run_resumes_byte_identical(tmp_path, tiny_model_dir):
    model, corpus, cache = cache_args(tmp_path, tiny_model_dir("llama"), shard_documents=1, directory=str(tmp_path / "killed"))
    config = {"source": {
        "target": {"name_or_path": model.name_or_path},
        "corpus": {"path": corpus.path, "min_position": 8, "max_length": 64},
        "cache": {"directory": cache.directory, "layer": 1, "positions_per_document": 3, "shard_documents": 1},
    }}
    config_path = tmp_path / "cache.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "nla", "cache", "--config", str(config_path)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifests = Path(cache.directory) / "shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(manifests.glob("*.json"))) < 3:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(manifests.glob("*.json")))
    assert 3 <= done < 40, f"kill should land mid-run, found {done} of 40 shards"
    assert not (Path(cache.directory) / "meta.json").exists()
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0

    _, _, fresh = cache_args(tmp_path, tiny_model_dir("llama"), shard_documents=1, directory=str(tmp_path / "fresh"))
    build(model, corpus, fresh)
    assert tree_bytes(Path(cache.directory)) == tree_bytes(tmp_path / "fresh")


def test_cache_subcommand_reads_yaml_and_reports_bad_layer(tmp_path, tiny_model_dir, capsys):
    model, corpus, cache = cache_args(tmp_path, tiny_model_dir("llama"))
    config = {"source": {
        "target": {"name_or_path": model.name_or_path},
        "corpus": {"path": corpus.path, "min_position": 8, "max_length": 64},
        "cache": {"directory": cache.directory, "layer": 9},
    }}
    path = tmp_path / "cache.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as done:
        main(["cache", "--config", str(path)])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip() == "nla: error: source.cache.layer: layer 9 is out of range for a 4-layer model; use 0 to 3"


def test_length_sorted_batches_respect_the_token_budget():
    lengths = [5, 40, 12, 40, 7, 30]
    batches = length_sorted_batches(lengths, batch_tokens=80)
    assert sorted(i for batch in batches for i in batch) == list(range(6))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 80 or len(batch) == 1
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    assert batches[0] == [1, 3]
