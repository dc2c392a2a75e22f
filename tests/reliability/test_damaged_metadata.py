"""Damaged metadata of a finished cache (``meta.json``, ``bounds.npy``, ``split_means.npy``, a shard
manifest, ``plan.json``) is one line naming the file and the fix (exit 2), found by the pre-flight
before anything is read or loaded; ``cache.repair: true`` rebuilds from the shards whatever they
determine (statistics, bounds and means byte-identical; a shard whose manifest is lost is re-extracted,
since the manifest is the only record of its checksums), and says in one line what to delete where
nothing can."""

from __future__ import annotations

import json

import pytest

from nla.data.cache_format import shard_files
from tests.fixtures.commands import ROOT, SFT_SOURCE, copy_cache, run_main, sft_argv

META, BOUNDS, MEANS, PLAN, LOCATION = "meta.json", "bounds.npy", "split_means.npy", "plan.json", "location.json"
SHARD = 1
REPAIR = "--data.init_args.source.cache.repair"


def truncate_meta(cache):
    path = cache / META
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def zero_heldout_variance(cache):
    meta = json.loads((cache / META).read_text())
    meta["stats"]["heldout"]["variance"] = 0.0
    (cache / META).write_text(json.dumps(meta))


def empty_bounds(cache):
    (cache / BOUNDS).write_bytes(b"")


def garbage_means(cache):
    (cache / MEANS).write_bytes(b"\x00garbage" * 40)


def garbage_manifest(cache):
    shard_files(cache, SHARD)["manifest"].write_bytes(b"\x93\x00not json at all")


def metadata_line(cache, name: str, problem: str, key: str = "data.source.cache") -> str:
    return (f"nla: error: {key}.directory: {cache / name} is damaged ({problem}); rebuild it from the shards with "
            f"{key}.repair: true")


DAMAGE = {
    "truncated meta.json": (truncate_meta, lambda cache, key: metadata_line(cache, META, "not valid JSON", key)),
    "held-out variance 0": (zero_heldout_variance, lambda cache, key: metadata_line(
        cache, META, "stats.heldout.variance is 0.0, not a positive number", key)),
    "empty bounds.npy": (empty_bounds, lambda cache, key: metadata_line(cache, BOUNDS, "empty", key)),
    "garbage split_means.npy": (garbage_means, lambda cache, key: metadata_line(
        cache, MEANS, "not a readable .npy array", key)),
    "garbage manifest": (garbage_manifest, lambda cache, key: (
        f"nla: error: {key}.directory: shard {SHARD} of {cache} is damaged: shard-{SHARD:05d}.json is not valid "
        f"JSON; re-extract the damaged shards with {key}.repair: true, or delete "
        f"{cache / 'shards' / f'shard-{SHARD:05d}'}.* and rerun")),
}


def cache_argv(model_dir, corpus, cache, *extra: str) -> list[str]:
    """``nla cache`` of the tiny data block with the settings ``sft_argv`` runs (the same cache)."""
    splits = [arg for split, value in SFT_SOURCE["splits"].items() for arg in (f"--source.splits.{split}", str(value))]
    return ["cache", "--source", str(ROOT / "configs" / "tiny" / "data.yaml"), *splits,
            "--source.target.name_or_path", str(model_dir), "--source.corpus.path", str(corpus),
            "--source.cache.directory", str(cache), *extra]


def files(cache) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*"))
            if p.is_file() and p.name != LOCATION}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_metadata_stops_fit_in_the_preflight(tiny_sft, tmp_path, capsys, monkeypatch, case):
    root, model_dir, clean = tiny_sft
    cache = copy_cache(clean, tmp_path / "cache")
    damage, line = DAMAGE[case]
    damage(cache)
    # The pre-flight reads these small files; the corpus must never be read for it.
    monkeypatch.setattr("nla.data.cache_plan.load_corpus", lambda *args: pytest.fail("the corpus was read"))
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", cache, tmp_path / "run"))
    assert (code, err) == (2, line(cache, "data.source.cache"))
    assert not (tmp_path / "run" / "export").exists() and not list((tmp_path / "run").rglob("*.ckpt"))


@pytest.mark.parametrize("case", list(DAMAGE))
def test_nla_cache_names_the_damage_and_repair_rebuilds_it(tiny_sft, tmp_path, capsys, case):
    root, model_dir, clean = tiny_sft
    cache = copy_cache(clean, tmp_path / "cache")
    damage, line = DAMAGE[case]
    damage(cache)
    argv = cache_argv(model_dir, root / "docs.jsonl", cache)
    assert run_main(capsys, argv) == (2, line(cache, "source.cache"))
    assert run_main(capsys, [*argv, "--source.cache.repair", "true"])[0] is None
    assert files(cache) == files(clean)


def test_fit_with_repair_rebuilds_meta_json_and_trains(tiny_sft, tmp_path, capsys):
    root, model_dir, clean = tiny_sft
    cache = copy_cache(clean, tmp_path / "cache")
    truncate_meta(cache)
    code, _ = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", cache, tmp_path / "run", REPAIR, "true",
                                        "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"))
    assert code is None
    assert files(cache) == files(clean)


def test_a_damaged_plan_json_is_rewritten_from_meta_json(tiny_sft, tmp_path, capsys):
    root, model_dir, clean = tiny_sft
    cache = copy_cache(clean, tmp_path / "cache")
    (cache / PLAN).write_bytes(b"{\"fingerprint\": ")
    assert run_main(capsys, cache_argv(model_dir, root / "docs.jsonl", cache))[0] is None
    assert files(cache) == files(clean)


def test_repair_without_a_record_of_the_configuration_says_what_to_delete(tiny_sft, tmp_path, capsys):
    root, model_dir, clean = tiny_sft
    cache = copy_cache(clean, tmp_path / "cache")
    (cache / PLAN).write_bytes(b"{\"fingerprint\": ")
    truncate_meta(cache)
    argv = cache_argv(model_dir, root / "docs.jsonl", cache, "--source.cache.repair", "true")
    assert run_main(capsys, argv) == (2, (
        f"nla: error: source.cache.directory: {cache / PLAN} is damaged and no readable {META} says which "
        f"configuration built {cache}; delete {cache} and rerun, or set source.cache.overwrite: true"))
    assert (cache / "shards").is_dir(), "nothing is deleted on the user's behalf"
