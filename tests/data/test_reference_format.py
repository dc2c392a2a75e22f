"""``nla import``: reference-format datasets (parquet + .nla_meta.yaml) into a cache that SFT trains on.

The parquet files are written here in the reference's schema for a tiny llama (d=32, layer 1); the
texts are our own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
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
from nla.core.marker import choose_marker
from tests.fixtures.paths import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")

D, LAYER = 32, 1
TEXT = "The keeper climbed the stair and lit the lamp while the boats waited beyond the harbour wall."
AV_PROMPT = "Here is a vector: <concept><INJECT></concept>. Explain it between <explanation> tags."
CRITIC = "Summary of the following text: <text>{explanation}</text> <summary>"


def sidecar(tokenizer, stage: str, rows: int, **changes) -> dict:
    marker = choose_marker(tokenizer)
    meta = {
        "kind": "nla_dataset", "dataset_id": f"test-{stage}", "stage": stage, "row_count": rows,
        "extraction": {"base_model": "tiny-llama", "d_model": D, "layer_index": LAYER, "norm": "none",
                       "corpus": "ours", "positions_per_doc": 2},
        "tokens": {"injection_char": marker.char, "injection_token_id": marker.token_id,
                   "injection_left_neighbor_id": marker.left_id, "injection_right_neighbor_id": marker.right_id},
        "prompt_templates": {"actor": AV_PROMPT, "critic": CRITIC},
        "api_summaries": {"model": "a-teacher", "max_tokens": 300, "temperature": 1.0, "instruction_prompt": "..."},
    }
    if stage == "ar_sft":
        suffix = tokenizer.encode(CRITIC.split("{explanation}")[1], add_special_tokens=False)
        meta["tokens"]["critic_suffix_ids"] = suffix[-2:]
    for key, value in changes.items():
        section, _, name = key.partition(".")
        meta[section] = value if not name else {**meta[section], name: value}
    return meta


def write_dataset(root: Path, tokenizer, stage: str, docs: range, seed: int, vectors=None, **changes) -> Path:
    """Two rows per document: the explained tokens 12 and 16 of its text, with their prefixes."""
    rng = np.random.default_rng(seed)
    ids = tokenizer.encode(TEXT, add_special_tokens=True)
    rows = {"activation_vector": [], "doc_id": [], "n_raw_tokens": [], "activation_layer": [],
            "detokenized_text_truncated": [], "prompt": [], "response": []}
    for doc in docs:
        for n in (12, 16):
            rows["activation_vector"].append(rng.normal(size=D).astype(np.float32) * (1 + doc))
            rows["doc_id"].append(f"doc-{doc}")
            rows["n_raw_tokens"].append(n)
            rows["activation_layer"].append(LAYER)
            rows["detokenized_text_truncated"].append(tokenizer.decode(ids[1:n], skip_special_tokens=True))
            explanation = f"A story about a lamp {doc}.\nThe next word follows token {n}."
            if stage == "ar_sft":
                rows["prompt"].append(CRITIC.replace("{explanation}", explanation))
            else:
                rows["prompt"].append([{"role": "user", "content": AV_PROMPT}])
            rows["response"].append(f"<explanation>{explanation}</explanation>")
    if stage == "ar_sft":
        del rows["response"]
    if stage == "rl":
        del rows["response"]
    vectors = vectors if vectors is not None else np.stack(rows["activation_vector"])
    columns = {**rows, "activation_vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), D)}
    table = pa.table(columns)
    path = root / f"{stage}.parquet"
    pq.write_table(table, path)
    meta = sidecar(tokenizer, stage, table.num_rows, **changes)
    Path(f"{path}.nla_meta.yaml").write_text(yaml.safe_dump(meta, allow_unicode=True))
    return path


@pytest.fixture
def datasets(tmp_path, tiny_model_dir, tiny_tokenizer):
    root = tmp_path / "ref"
    root.mkdir()
    return [write_dataset(root, tiny_tokenizer, "av_sft", range(0, 16), 0),
            write_dataset(root, tiny_tokenizer, "ar_sft", range(16, 28), 1),
            write_dataset(root, tiny_tokenizer, "rl", range(28, 34), 2)]


def run_import(paths, model_dir, output, *extra):
    main(["import", "--datasets", yaml.safe_dump([str(p) for p in paths], default_flow_style=True).strip(),
          "--target.name_or_path", str(model_dir), "--output", str(output), "--heldout_fraction", "0.25", *extra])


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
