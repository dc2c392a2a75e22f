"""Nothing silently mixes two base models: a pair, a cache and a target are bound to the weights they
came from (``nla.models.fingerprint``), and every command that combines two of them refuses a mismatch
in one line naming both, before any weights load."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from nla.data.datamodule import NLADataModule
from nla.models.fingerprint import model_fingerprint
from nla.models.loading import ModelArgs
from tests.fixtures.commands import GRPO, GRPO_SOURCE, run_main, sft_argv, source_overrides, tiny_source
from tests.fixtures.pairs import LAYER, build_pair, export

TEXT = "The sailor counts the waves before the storm arrives at night."


def other_weights(source, target):
    """A copy of the model at ``source`` whose weights differ (same config and tokenizer)."""
    shutil.copytree(source, target)
    for path in target.glob("*.safetensors"):
        tensors = load_file(str(path))
        save_file({name: value + 0.01 for name, value in tensors.items()}, str(path), metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model_dir):
    """Two tiny llamas of one architecture and tokenizer but different weights, each with its export."""
    root = tmp_path_factory.mktemp("two-bases")
    first = tiny_model_dir("llama")
    second = other_weights(first, root / "other-model")
    exports = {}
    for name, directory in (("first", first), ("second", second)):
        exports[name] = export(root / name, build_pair(directory), training={})
    return first, second, exports


def fingerprints(first, second):
    return model_fingerprint(ModelArgs(str(first))), model_fingerprint(ModelArgs(str(second)))


def test_fingerprints_tell_the_weights_apart(models):
    first, second, _ = models
    one, two = fingerprints(first, second)
    assert one.startswith("sha256:") and len(one) == 23 and one != two
    assert model_fingerprint(ModelArgs(str(first))) == one, "the same weights, the same fingerprint"


@pytest.mark.parametrize("command", [
    ["explain", "--text", TEXT, "--positions", "[-1]", "--max_new_tokens", "2"],
    ["steer", "--text", TEXT, "--max_new_tokens", "2", "--tokens", "2", "--explanation", "Storms."],
    ["evaluate", "--texts", f'["{TEXT}"]', "--positions", "[-1]", "--checks", "[round_trip]"],
])
def test_an_av_and_an_ar_of_different_models_are_refused(models, tmp_path, capsys, command):
    first, second, exports = models
    one, two = fingerprints(first, second)
    extra = ["--out", str(tmp_path / "report")] if command[0] == "evaluate" else []
    code, err = run_main(capsys, [command[0], "--av", str(exports["first"]["av"]), "--ar", str(exports["second"]["ar"]),
                                  *command[1:], *extra])
    assert (code, err) == (2, f"nla: error: ar: the AV comes from base model '{first}' ({one}) but the AR from "
                              f"'{second}' ({two}); these two directories are not one pair; give an AV and an AR "
                              "trained on the same model")


def test_a_target_of_other_weights_is_refused(models, capsys):
    first, second, exports = models
    one, two = fingerprints(first, second)
    code, err = run_main(capsys, ["explain", "--av", str(exports["first"]["av"]), "--ar", str(exports["first"]["ar"]),
                                  "--text", TEXT,
                                  "--positions", "[-1]", "--max_new_tokens", "2", "--target", str(second)])
    assert (code, err) == (2, f"nla: error: target: the pair comes from base model '{first}' ({one}) but the target "
                              f"from '{second}' ({two}); pass --target with the model the pair was trained on")


def test_a_pair_is_not_scored_on_another_models_cache(models, tmp_path, capsys, tiny_sft):
    first, second, exports = models
    root, _, _ = tiny_sft
    cache = tmp_path / "cache"
    source = tiny_source(second, root / "docs.jsonl", cache)
    NLADataModule(replace(source, cache=replace(source.cache, layer=LAYER)), progress=False).prepare_data()
    one, two = fingerprints(first, second)
    code, err = run_main(capsys, ["evaluate", "--pair", str(exports["first"]["av"].parent), "--cache", str(cache),
                                  "--split", "heldout", "--checks", "[round_trip]", "--out", str(tmp_path / "r")])
    assert (code, err) == (2, f"nla: error: cache: the cache {cache} comes from base model '{second}' ({two}) but the "
                              f"pair from '{first}' ({one}); score the pair on a cache of its own base model")


def test_grpo_refuses_an_sft_export_of_another_model_before_caching(models, tmp_path, capsys, tiny_sft):
    first, second, exports = models
    root, _, _ = tiny_sft
    export_dir = exports["first"]["av"].parent
    one, two = fingerprints(first, second)
    code, err = run_main(capsys, [
        "fit", "--config", str(GRPO), *source_overrides(GRPO_SOURCE),
        "--data.init_args.source.target.name_or_path", str(second),
        "--data.init_args.source.corpus.path", str(root / "docs.jsonl"),
        "--data.init_args.source.cache.directory", str(tmp_path / "cache"),
        "--data.init_args.source.cache.layer", str(LAYER),
        "--model.init_args.sft_export", str(export_dir), "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.logger.init_args.save_dir", str(tmp_path / "run")])
    assert (code, err) == (2, f"nla: error: model.sft_export: the pair in {export_dir} comes from base model "
                              f"'{first}' ({one}) but data.source.target from '{second}' ({two}); start from an SFT "
                              f"export of {second}, or point data.source.target at the model that export was trained "
                              "on")
    assert not (tmp_path / "cache").exists()


def test_weights_replaced_at_the_same_path_do_not_reuse_the_cache(models, tmp_path, capsys, tiny_sft):
    first, second, _ = models
    root, _, _ = tiny_sft
    model = tmp_path / "model"
    shutil.copytree(first, model)
    argv = sft_argv(model, root / "docs.jsonl", tmp_path / "cache", tmp_path / "run", "--trainer.max_steps", "1",
                    "--model.init_args.export_dir", "null")
    NLADataModule(tiny_source(model, root / "docs.jsonl", tmp_path / "cache"), progress=False).prepare_data()
    was = model_fingerprint(ModelArgs(str(model)))
    for path in second.glob("*.safetensors"):
        shutil.copy(path, model / path.name)
    now = model_fingerprint(ModelArgs(str(model)))
    assert was != now
    code, err = run_main(capsys, argv)
    assert (code, err) == (2, f"nla: error: data.source.cache.overwrite: {tmp_path / 'cache'} holds vectors of other "
                              f"weights than those now at {model} (base model fingerprint {was}, now {now}); set "
                              "data.source.cache.overwrite: true to rebuild it, or point data.source.cache.directory "
                              "elsewhere")
    vectors_before = {p.name: p.read_bytes() for p in (tmp_path / "cache" / "shards").glob("*.vectors.npy")}
    assert run_main(capsys, [*argv, "--data.init_args.source.cache.overwrite", "true"])[0] is None
    rebuilt = {p.name: p.read_bytes() for p in (tmp_path / "cache" / "shards").glob("*.vectors.npy")}
    assert rebuilt.keys() == vectors_before.keys() and rebuilt != vectors_before
    assert torch.load(next((tmp_path / "run").rglob("last.ckpt")), weights_only=True)["global_step"] == 1
