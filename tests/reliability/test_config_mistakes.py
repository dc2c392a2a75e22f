"""Every configuration mistake is one line naming the full key path and the fix, exit 2, wherever
jsonargparse meets it: while parsing (unknown keys, with the closest valid key) and while it builds
nested arguments (a ConfigError it would wrap into a ValueError), in ``nla fit`` and ``nla cache``."""

from __future__ import annotations

import json

import pytest
import yaml

from nla.commands.cli import main
from nla.modules.grpo.settings import RolloutArgs
from tests.fixtures.commands import copy_cache, grpo_argv, run_main, sft_argv


@pytest.mark.parametrize("extra, line", [
    (["--data.init_args.source.splits.heldout", "0.5"],
     "data.source.splits: fractions must sum to 1, got 1.3 (av_sft=0.4, ar_sft=0.4, rl=0.0, heldout=0.5)"),
    (["--data.init_args.source.cache.store_dtype", "float16"],
     "data.source.cache.store_dtype: 'float16' is not one of float32, bfloat16"),
    (["--data.init_args.source.corpus.max_length", "4"],
     "data.source.corpus.max_length: must exceed min_position (8) to leave room for a position, got 4"),
    (["--data.init_args.source.target.dtype", "float16"],
     "data.source.target.dtype: is 'float16'; residual norms of Gemma-like models (6e4-8e4) overflow it; use auto, "
     "float32, bfloat16"),
    (["--data.init_args.batch_size", "0"], "data.batch_size: must be at least 1, got 0"),
    (["--model.init_args.num_samples", "0"], "model.num_samples: must be at least 1, got 0"),
    (["--data.init_args.source.cache.layr", "2"], "data.source.cache.layr: unknown key; did you mean `layer`?"),
    (["--data.source.cache.layr", "2"], "data.source.cache.layr: unknown key; did you mean `layer`?"),
    (["--data.init_args.source.corpus.max_lenght", "3"], "data.source.corpus.max_lenght: unknown key; did you mean `max_length`?"),
    (["--model.init_args.training.verbalizr_lr", "3"],
     "model.training.verbalizr_lr: unknown key; did you mean `verbalizer_lr`?"),
    (["--trainer.max_stepz", "3"], "trainer.max_stepz: unknown key; did you mean `max_steps`?"),
    (["--trainer.max_steps", "-5"], "trainer.max_steps: must be a non-negative integer or -1 (infinite steps), got -5"),
    (["--data.init_args.source.cache.layer", "abc"], "data.source.cache.layer: expected int, got 'abc'"),
])
def test_fit_config_mistakes_are_one_line(tiny_sft, tmp_path, capsys, extra, line):
    root, model_dir, _ = tiny_sft
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run", *extra))
    assert (code, err) == (2, f"nla: error: {line}")
    assert not (tmp_path / "cache").exists(), "a config mistake must stop the run before any work"


def test_a_nested_typo_in_yaml_names_the_closest_key(tiny_sft, tmp_path, capsys):
    root, model_dir, _ = tiny_sft
    config = tmp_path / "typo.yaml"
    config.write_text(yaml.safe_dump({"data": {"init_args": {"source": {"cache": {"layr": 2}}}}}))
    code, err = run_main(capsys, [*sft_argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run"),
                                  "--config", str(config)])
    assert (code, err) == (2, "nla: error: data.source.cache.layr: unknown key; did you mean `layer`?")


@pytest.mark.parametrize("extra, line", [
    (["--source.splits.heldout", "0.5"],
     "source.splits: fractions must sum to 1, got 1.45 (av_sft=0.25, ar_sft=0.25, rl=0.45, heldout=0.5)"),
    (["--source.splits.heldot", "0.5"], "source.splits.heldot: unknown key; did you mean `heldout`?"),
    (["--source.cache.layr", "2"], "source.cache.layr: unknown key; did you mean `layer`?"),
    (["--source.targt.dtype", "float32"], "source.targt: unknown key; did you mean `target`?"),
    (["--source.target.dtype", "float16"],
     "source.target.dtype: is 'float16'; residual norms of Gemma-like models (6e4-8e4) overflow it; use auto, float32, "
     "bfloat16"),
    (["--source.cache.layer", "x"], "source.cache.layer: expected int, got 'x'"),
    (["--source.target.name_or_path", "nobody/no-such-model"], None),
])
def test_cache_config_mistakes_are_one_line(tiny_sft, tmp_path, capsys, extra, line):
    root, model_dir, _ = tiny_sft
    argv = ["cache", "--source.target.name_or_path", str(model_dir), "--source.corpus.path", str(root / "docs.jsonl"),
            "--source.cache.directory", str(tmp_path / "cache"), *extra]
    code, err = run_main(capsys, argv)
    assert code == 2
    if line is None:  # the hub's own words vary; the key must be the full one
        assert err.startswith("nla: error: source.target.name_or_path: cannot load 'nobody/no-such-model' (")
    else:
        assert err == f"nla: error: {line}"
    assert not (tmp_path / "cache").exists()


def test_val_check_interval_longer_than_the_epoch(tiny_sft, tmp_path, capsys):
    root, model_dir, clean = tiny_sft
    cache = copy_cache(clean, tmp_path / "cache")
    rows = json.loads((cache / "meta.json").read_text())["counts"]["vectors"]
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", cache, tmp_path / "run",
                                          "--trainer.val_check_interval", "500"))
    assert code == 2 and rows < 500 * 4
    assert err.startswith("nla: error: trainer.val_check_interval: is 500 training batches but an epoch has ")
    assert err.endswith("(data.batch_size 4); lower it, or set trainer.check_val_every_n_epoch: null to count "
                        "batches across epochs")


def test_val_check_interval_longer_than_any_epoch_stops_before_caching(tiny_sft, tmp_path, capsys):
    # No cache yet: 40 documents of at most 3 positions make at most 120 rows, 30 batches of 4.
    root, model_dir, _ = tiny_sft
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run",
                                          "--trainer.val_check_interval", "500"))
    assert (code, err) == (2, "nla: error: trainer.val_check_interval: is 500 training batches but an epoch has at most "
                              "30: at most 120 rows, corpus.max_documents 40 x cache.positions_per_document 3 "
                              "(data.batch_size 4); lower it, or set trainer.check_val_every_n_epoch: null to count "
                              "batches across epochs")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_val_check_interval_longer_than_the_cached_epoch_stops_before_the_models_load(tiny_sft, tmp_path, capsys,
                                                                                       monkeypatch):
    root, model_dir, clean = tiny_sft
    cache = copy_cache(clean, tmp_path / "cache")
    counts = json.loads((cache / "meta.json").read_text())["stats"]
    longest = max(counts["av_sft"]["count"], counts["ar_sft"]["count"])
    monkeypatch.setattr("nla.modules.sft.load_causal_lm", lambda *args, **kwargs: pytest.fail("a model loaded"))
    code, err = run_main(capsys, sft_argv(model_dir, root / "docs.jsonl", cache, tmp_path / "run",
                                          "--trainer.val_check_interval", "500"))
    assert (code, err) == (2, f"nla: error: trainer.val_check_interval: is 500 training batches but an epoch has at most "
                              f"{-(-longest // 4)}: {longest} rows in the cache (data.batch_size 4); lower it, or set "
                              "trainer.check_val_every_n_epoch: null to count batches across epochs")
    assert not (tmp_path / "run").exists()


def test_one_sample_per_prompt_under_per_group_advantages_is_refused(tiny_sft, tmp_path, capsys):
    root, model_dir, _ = tiny_sft
    code, err = run_main(capsys, grpo_argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run",
                                           "--model.init_args.rollout.samples_per_prompt", "1"))
    assert (code, err) == (2, "nla: error: model.rollout.samples_per_prompt: is 1, so each answer is compared only with "
                              "itself and every advantage is 0 (the AV cannot learn); set it to 2 or more, or "
                              "rollout.uniform_groups: batch to compare answers across the batch")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()
    # Against the batch, one answer per prompt still has an advantage: REINFORCE with a batch baseline.
    assert RolloutArgs(samples_per_prompt=1, uniform_groups="batch").samples_per_prompt == 1


@pytest.mark.parametrize("argv", [sft_argv, grpo_argv], ids=["sft", "grpo"])
@pytest.mark.parametrize("value", ["16-mixed", "16", "16-true"])
def test_float16_precisions_are_refused_before_any_work(tiny_sft, tmp_path, capsys, argv, value):
    """float16 weights are refused, and so is float16 compute: on CPU Lightning quietly turns 16-mixed
    into bf16-mixed, so the config as written is what is judged, or it would pass here and overflow there."""
    root, model_dir, _ = tiny_sft
    code, err = run_main(capsys, argv(model_dir, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run",
                                      "--trainer.precision", value))
    assert (code, err) == (2, f"nla: error: trainer.precision: is {value}: float16 overflows on the residuals of "
                              "Gemma-like models (norms 6e4-8e4), as float16 weights and caches would; use bf16-mixed "
                              "(float32 weights, bf16 compute) or 32-true")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_an_empty_text_corpus_names_the_text_column(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text("".join(json.dumps({"text": "", "body": "real words here"}) + "\n" for _ in range(5)))
    code, err = run_main(capsys, ["cache", "--source.target.name_or_path", str(tiny_model_dir("llama")),
                                  "--source.corpus.path", str(corpus), "--source.corpus.min_position", "2",
                                  "--source.corpus.max_length", "64", "--source.cache.directory", str(tmp_path / "cache")])
    assert (code, err) == (2, f"nla: error: source.corpus.text_column: the text of every document (5) in column 'text' of "
                              f"'{corpus}' is empty; name the column that holds the text")


def test_layer_minus_one_says_which_block_it_picks(tiny_sft, tmp_path, capsys):
    root, model_dir, _ = tiny_sft
    main(["cache", "--source.target.name_or_path", str(model_dir), "--source.corpus.path", str(root / "docs.jsonl"),
          "--source.corpus.min_position", "8", "--source.corpus.max_length", "64", "--source.corpus.max_documents", "4",
          "--source.cache.directory", str(tmp_path / "cache")])
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["layer"] == 3
    # printed with the cache summary (rich may wrap it): the default, not "the last block" by convention
    assert "cache.layer -1: K = 3, the default (about two thirds of 4 blocks)" in " ".join(capsys.readouterr().err.split())
