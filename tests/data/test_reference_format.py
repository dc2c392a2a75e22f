"""``nla import``: reference-format datasets (parquet + .nla_meta.yaml) into a cache that SFT trains on.

The parquet files are written in the reference's schema for a tiny llama (d=32, layer 1) by
``tests/fixtures/reference.py``; the texts are our own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from nla.commands.cli import main
from nla.commands.config_files import read_config
from nla.models.loading import ModelArgs, load_causal_lm
from nla.models.pair_loading import load_pair
from nla.models.sidecar import read_sidecar
from tests.fixtures.tensorboard import scalars
from nla.data.activation_cache import ActivationCache
from tests.fixtures.paths import ROOT
from tests.fixtures.reference import D, LAYER, reference_datasets, run_import, write_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def datasets(tmp_path, tiny_tokenizer):
    return reference_datasets(tmp_path / "ref", tiny_tokenizer)


def test_import_writes_a_cache_with_splits_contexts_and_the_teachers_text(tmp_path, tiny_model_dir, datasets, capsys):
    model_dir = tiny_model_dir("llama")
    run_import(datasets, model_dir, tmp_path / "cache")
    assert "nla import: 68 vectors from 3 file(s)" in capsys.readouterr().out
    cache = ActivationCache(tmp_path / "cache", expect_d=D, expect_layer=LAYER)
    counts = {split: len(cache.split_indices(split)) for split in ("av_sft", "ar_sft", "rl", "heldout")}
    assert counts["ar_sft"] == 24 and counts["rl"] == 12 and counts["av_sft"] + counts["heldout"] == 32
    assert 0 < counts["heldout"] < 32
    table = pq.read_table(datasets[0])
    first = cache.record(0)
    assert first["doc_id"] == "doc-0" and first["position"] == 11
    assert first["context"] == table.column("detokenized_text_truncated")[0].as_py()
    np.testing.assert_array_equal(cache.vectors([0])[0].numpy(), table.column("activation_vector")[0].values.to_numpy())
    summaries = yaml.safe_load((tmp_path / "cache" / "summaries" / "imported" / "ar_sft.json").read_text())
    ar_index = str(int(cache.split_indices("ar_sft")[0]))
    assert summaries["features"][ar_index] == ["A story about a lamp 16.", "The next word follows token 12."]


def test_a_reference_dataset_trains_through_sft_with_nla_fit(tmp_path, tiny_model_dir, datasets):
    model_dir = tiny_model_dir("llama")
    run_import(datasets, model_dir, tmp_path / "cache")
    config = read_config(ROOT / "configs" / "tiny" / "sft.yaml")
    source = config["data"]["init_args"]["source"]
    source["target"]["name_or_path"] = str(model_dir)
    source["cache"].update(directory=str(tmp_path / "cache"), layer=LAYER)
    source["teacher"] = {"provider": "openai", "model": "never-asked", "base_url": "http://127.0.0.1:9"}
    config["trainer"].update(max_steps=2, default_root_dir=str(tmp_path / "run"), val_check_interval=2,
                             limit_val_batches=1)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    config["model"]["init_args"].update(export_dir=str(tmp_path / "export"), sample_every_n_steps=0)
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    # Both models trained on the imported rows: two steps logged, weights moved from the base model.
    logged = scalars(tmp_path / "logs")
    assert [step for step, _ in logged["train/av_loss"]] == [0, 1] and len(logged["train/ar_loss"]) == 2
    exported = load_pair(tmp_path / "export" / "av", tmp_path / "export" / "ar")
    base = load_causal_lm(ModelArgs(str(model_dir))).state_dict()
    assert any(not torch.equal(value, base[key]) for key, value in exported.verbalizer.model.state_dict().items())
    assert not torch.equal(exported.reconstructor.head.weight, torch.eye(D))
    # The sidecar describes the imported cache: its splits, its held-out rows, the AR read on them.
    cache = ActivationCache(tmp_path / "cache", expect_d=D, expect_layer=LAYER)
    training = read_sidecar(tmp_path / "export" / "ar").training
    assert training["cache"] == str(tmp_path / "cache")
    assert training["split_sizes"] == {split: len(cache.split_indices(split))
                                       for split in ("av_sft", "ar_sft", "rl", "heldout")}
    figure = training["figures"]["ar_on_teacher_text"]
    assert 0 < figure["rows"] <= len(cache.split_indices("heldout")) and figure["step"] == 2


@pytest.mark.parametrize(("change", "message"), [
    ({"extraction.d_model": 48}, "extraction.d_model"),
    ({"extraction.layer_index": 2}, "activation_layer"),
    ({"tokens.injection_token_id": 7}, "tokens.injection_token_id: is 7"),
    ({"tokens.injection_left_neighbor_id": 3}, "tokens.injection_left_neighbor_id"),
    ({"kind": "nla_model"}, "kind: is 'nla_model'"),
])
def test_a_sidecar_that_does_not_match_the_model_is_one_line_exit_2(tmp_path, tiny_model_dir, tiny_tokenizer,
                                                                      capsys, change, message):
    root = tmp_path / "ref"
    root.mkdir()
    path = write_dataset(root, tiny_tokenizer, "av_sft", range(4), 0, **change)
    with pytest.raises(SystemExit) as done:
        run_import([path], tiny_model_dir("llama"), tmp_path / "cache")
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_layer_mismatch_non_finite_vectors_and_shared_documents_are_refused(tmp_path, tiny_model_dir,
                                                                             tiny_tokenizer, capsys):
    root = tmp_path / "ref"
    root.mkdir()
    model_dir = tiny_model_dir("llama")
    good = write_dataset(root, tiny_tokenizer, "av_sft", range(4), 0)
    cases = [([good, "--layer", "2"], "extraction.layer_index: is 1 but layer 2 was asked for")]
    bad = np.ones((8, D), dtype=np.float32)
    bad[3, 5] = np.nan
    (root / "nan").mkdir()
    cases.append(([write_dataset(root / "nan", tiny_tokenizer, "av_sft", range(4), 0, vectors=bad)],
                  "row 3 is not finite"))
    (root / "twice").mkdir()
    cases.append(([good, write_dataset(root / "twice", tiny_tokenizer, "rl", range(2, 5), 1)],
                  "document 'doc-2' is also in"))
    for arguments, message in cases:
        paths, extra = [a for a in arguments if isinstance(a, Path)], [a for a in arguments if isinstance(a, str)]
        with pytest.raises(SystemExit) as done:
            run_import(paths, model_dir, tmp_path / "cache", *extra)
        err = capsys.readouterr().err
        assert done.value.code == 2 and message in err, err
        assert not (tmp_path / "cache").exists()


def test_an_imported_cache_serves_only_the_model_and_layer_it_was_imported_for(tmp_path, tiny_model_dir, datasets):
    from nla.data.cache_plan import CacheArgs
    from nla.data.corpus import CorpusArgs
    from nla.data.datamodule import NLADataModule
    from nla.data.source import DataSource
    from nla.core.errors import ConfigError
    from nla.models.loading import ModelArgs

    model_dir = tiny_model_dir("llama")
    run_import(datasets, model_dir, tmp_path / "cache")

    def datamodule(layer: int) -> NLADataModule:
        # The corpus is never read for an imported cache: it is not the one the vectors came from.
        return NLADataModule(DataSource(target=ModelArgs(str(model_dir)), corpus=CorpusArgs("austen"),
                                        cache=CacheArgs(directory=str(tmp_path / "cache"), layer=layer)))

    assert datamodule(LAYER).cache_ready()
    with pytest.raises(ConfigError, match="data.source.cache.directory: .* was imported for .* at layer 1"):
        datamodule(2).cache_ready()
