"""NLADataModule over a tiny cache: prepare/setup, batch layouts, shuffled control, workers and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from nla.data import datamodule as datamodule_module
from nla.data import summaries as summaries_module
from nla.data.cache_plan import CacheArgs
from nla.data.corpus import CorpusArgs
from nla.data.datamodule import NLADataModule
from nla.data.source import DataSource
from nla.data.datasets import IGNORE
from nla.data.teachers import Summary, Teacher
from nla.core.errors import ConfigError
from nla.core.marker import find_marker_slots
from nla.models.loading import ModelArgs

# Written for this test: sentences of our own, varied in length so positions and splits vary.
WORDS = (
    "the lighthouse keeper counts ships at dusk while the miller grinds oats and a teacher writes "
    "numbers on the board before the storm reaches the harbour and the river floods the lower field"
).split()


def write_corpus(path: Path, documents: int = 40) -> Path:
    with path.open("w") as handle:
        for i in range(documents):
            text = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(24 + i))
            handle.write(json.dumps({"text": text}) + "\n")
    return path


def make_datamodule(root: Path, model_dir: Path, **kwargs) -> NLADataModule:
    options = {"train_splits": ("av_sft", "ar_sft", "rl"), "batch_size": 4, "progress": False, **kwargs}
    source = DataSource(target=ModelArgs(str(model_dir)),
                        corpus=CorpusArgs(str(root / "corpus.jsonl"), max_length=64, min_position=8),
                        cache=CacheArgs(str(root / "cache"), positions_per_document=3))
    return NLADataModule(source, **options)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("datamodule")
    write_corpus(root / "corpus.jsonl")
    dm = make_datamodule(root, tiny_model_dir("llama"))
    dm.prepare_data()
    dm.setup("fit")
    return root, tiny_model_dir("llama"), dm


def first_batch(loader) -> dict:
    return next(iter(loader))


def test_setup_exposes_cache_marker_and_statistics(built):
    _, _, dm = built
    assert (dm.d, dm.layer) == (32, 3)
    assert dm.marker.rule == "cjk-range" and dm.marker == dm.prompts.marker
    assert dm.auto_injection_scale == pytest.approx(dm.cache.stats("av_sft")["p75_norm"])
    assert dm.heldout_variance == pytest.approx(dm.cache.stats("heldout")["variance"])
    assert all(len(dm.dataset(split)) > 0 for split in ("av_sft", "ar_sft", "rl", "heldout"))
    assert dm.excluded == {"av_sft": 0, "ar_sft": 0, "heldout": 0}


def test_prepare_data_twice_does_no_new_work(built, monkeypatch):
    root, model_dir, _ = built
    files = sorted(p for p in (root / "cache").rglob("*") if p.is_file())
    assert any(p.name == "av_sft.json" for p in files) and any(p.name == "heldout.json" for p in files)
    before = {p: p.stat().st_mtime_ns for p in files}

    def forbidden(*args, **kwargs):
        raise AssertionError("no cache building or teacher on a second prepare_data")

    monkeypatch.setattr(datamodule_module, "build_cache", forbidden)
    monkeypatch.setattr(summaries_module, "build_teacher", forbidden)
    make_datamodule(root, model_dir).prepare_data()
    after = sorted(p for p in (root / "cache").rglob("*") if p.is_file())
    assert after == files and {p: p.stat().st_mtime_ns for p in after} == before


def test_a_changed_cache_configuration_goes_to_build_cache(built):
    root, model_dir, _ = built
    changed = make_datamodule(root, model_dir)
    changed.cache_args.positions_per_document = 2
    with pytest.raises(ConfigError, match="different configuration"):
        changed.prepare_data()


def test_av_sft_batch_is_right_padded_with_labels_on_the_answer_only(built):
    _, _, dm = built
    dataset = dm.dataset("av_sft")
    batch = first_batch(dm.dataloader("av_sft"))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert batch["vector"].shape == (4, 32) and batch["vector"].dtype == torch.float32
    assert torch.equal(batch["vector"], dm.cache.vectors(batch["index"].numpy()))
    slots = find_marker_slots(ids, dm.marker)
    assert torch.all(slots == slots[0])
    prompt = len(dm.prompts.av_prompt_ids)
    bos = dm.tokenizer.bos_token_id
    for row in range(4):
        real = int(mask[row].sum())
        assert torch.all(mask[row, :real] == 1) and torch.all(mask[row, real:] == 0)
        assert ids[row, 0] == bos and int((ids[row, :real] == bos).sum()) == 1
        assert torch.all(labels[row, :prompt] == IGNORE) and torch.all(labels[row, real:] == IGNORE)
        answer = dm.tokenizer.decode(labels[row, prompt:real])
        assert answer == f"<explanation>{dataset.explanations[row]}</explanation><|im_end|>"
        assert torch.equal(labels[row, prompt:real], ids[row, prompt:real])


def test_ar_batch_ends_each_prompt_at_its_last_real_token(built):
    _, _, dm = built
    batch = first_batch(dm.dataloader("ar_sft"))
    ids, mask, last = batch["input_ids"], batch["attention_mask"], batch["last_index"]
    suffix = dm.prompts.ar_suffix_ids()
    lengths = mask.sum(dim=1)
    assert len(set(lengths.tolist())) > 1, "rows of different lengths are needed to test padding"
    for row in range(len(ids)):
        assert int(last[row]) == int(lengths[row]) - 1
        assert torch.all(mask[row, : int(last[row]) + 1] == 1) and torch.all(mask[row, int(last[row]) + 1 :] == 0)
        assert ids[row, : int(last[row]) + 1].tolist()[-len(suffix) :] == suffix
        assert ids[row, 0] == dm.tokenizer.bos_token_id


def test_rl_and_heldout_batches(built):
    _, _, dm = built
    rl = first_batch(dm.dataloader("rl"))
    assert set(rl) == {"index", "vector", "input_ids", "attention_mask"}
    assert torch.all(rl["attention_mask"][:, -1] == 1)
    find_marker_slots(rl["input_ids"], dm.marker)
    held = first_batch(dm.val_dataloader())
    dataset = dm.dataset("validation")
    assert held["explanation"] == dataset.explanations[: len(held["explanation"])]
    assert torch.equal(held["index"], torch.as_tensor(dataset.indices[: len(held["index"])]))
    # The av and ar batches of the same rows, nested as in a training step's batch.
    assert set(held) == {"index", "vector", "explanation", "av", "ar"}
    assert set(held["av"]) == {"input_ids", "attention_mask", "labels", "layout", "marker_slots"}
    assert set(held["ar"]) == {"input_ids", "attention_mask", "last_index", "layout"}
    assert torch.equal(held["av"]["marker_slots"], find_marker_slots(held["av"]["input_ids"], dm.marker))
    assert torch.equal(held["ar"]["last_index"], held["ar"]["attention_mask"].sum(1) - 1)
    rows = len(held["index"])
    assert [dm.prompts.ar_ids(text) for text in held["explanation"]] == [
        row[:n].tolist() for row, n in zip(held["ar"]["input_ids"], held["ar"]["attention_mask"].sum(1))]
    examples = [dm.prompts.av_example(text)[1] for text in held["explanation"]]
    assert [labels[:n].tolist() for labels, n in zip(held["av"]["labels"], held["av"]["attention_mask"].sum(1))] \
        == examples and rows == len(examples)


def test_limited_heldout_evaluation_reads_rows_of_many_documents(built):
    # limit_val_batches / eval_max_batches read the first batches: they must not be the first documents.
    _, _, dm = built
    documents = [dm.cache.record(int(i))["doc_id"] for i in dm.dataset("heldout").indices]
    count = len(set(documents))
    assert count >= 3 and len(documents) > count
    assert len(set(documents[:count])) == count
    assert sorted(dm.dataset("heldout").indices.tolist()) == dm.cache.split_indices("heldout").tolist()


def test_validation_and_test_halves_divide_the_heldout_rows_by_document(built):
    # Curves and the best checkpoint read the validation half, reported figures the test half: no
    # document, and so no row, is in both, and together they are the whole held-out split.
    _, _, dm = built
    halves = {part: dm.dataset(part).indices.tolist() for part in ("validation", "test")}
    documents = {part: {dm.cache.record(i)["doc_id"] for i in rows} for part, rows in halves.items()}
    assert halves["validation"] and halves["test"]
    assert not documents["validation"] & documents["test"]
    assert sorted(halves["validation"] + halves["test"]) == dm.cache.split_indices("heldout").tolist()
    assert first_batch(dm.val_dataloader())["index"].tolist() == halves["validation"][: dm.eval_batch_size]
    assert first_batch(dm.test_dataloader())["index"].tolist() == halves["test"][: dm.eval_batch_size]


def test_shuffled_pairs_texts_with_a_fixed_permutation_of_vectors(built):
    _, _, dm = built
    real, shuffled = dm.dataset("ar_sft"), dm.dataset("ar_sft", shuffled=True)
    assert shuffled.explanations == real.explanations and np.array_equal(shuffled.indices, real.indices)
    assert sorted(shuffled.vector_indices.tolist()) == sorted(real.indices.tolist())
    assert np.all(shuffled.vector_indices != real.indices)
    assert np.array_equal(dm.dataset("ar_sft", shuffled=True).vector_indices, shuffled.vector_indices)
    item = shuffled[0]
    assert torch.equal(item["vector"], dm.cache.vectors([shuffled.vector_indices[0]])[0])
    assert not torch.equal(item["vector"], dm.cache.vectors([real.indices[0]])[0])


def test_splits_never_share_documents(built):
    _, _, dm = built
    documents = {
        split: {dm.cache.record(int(i))["doc_id"] for i in dm.dataset(split).indices}
        for split in ("av_sft", "ar_sft", "rl", "heldout")
    }
    names = list(documents)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert not documents[names[a]] & documents[names[b]], (names[a], names[b])


def test_dropped_summaries_are_excluded_and_counted(built, tmp_path, monkeypatch):
    root, model_dir, _ = built

    class Terse(Teacher):
        name, model = "extractive", "terse"

        def stream(self, requests):
            for index, request in enumerate(requests):
                features = ["Only one feature."] if index % 3 == 0 else ["First feature.", "Last feature."]
                yield index, Summary(features)

    monkeypatch.setattr(summaries_module, "build_teacher", lambda args: Terse())
    dm = make_datamodule(root, model_dir, summaries_dir=str(tmp_path), train_splits=("ar_sft",))
    dm.prepare_data()
    dm.setup()
    total = len(dm.cache.split_indices("ar_sft"))
    assert dm.excluded["ar_sft"] == len(range(0, total, 3)) > 0
    assert len(dm.dataset("ar_sft")) == total - dm.excluded["ar_sft"]
    assert set(dm.dataset("ar_sft").explanations) == {"First feature.\nLast feature."}
    report = json.loads(next(tmp_path.rglob("ar_sft.json")).read_text())["report"]
    assert report["dropped"] == dm.excluded["ar_sft"]


def test_workers_load_the_same_batches(built):
    root, model_dir, dm = built
    threaded = make_datamodule(root, model_dir, num_workers=1)
    threaded.setup()
    combined = threaded.train_dataloader()
    iterator = iter(combined)
    with_worker = [next(iterator)[0] for _ in range(3)]
    in_process = iter(dm.train_dataloader())
    for batch in with_worker:
        expected = next(in_process)[0]
        for key in ("av", "ar", "rl"):
            assert torch.equal(batch[key]["index"], expected[key]["index"])
            assert torch.equal(batch[key]["input_ids"], expected[key]["input_ids"])


class Recorder(LightningModule):
    """Records which rows each training batch held; learns nothing of interest."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, list[int], list[int]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.current_epoch, batch["av"]["index"].tolist(), batch["ar"]["index"].tolist()))
        return (self.weight - batch["av"]["vector"].mean()) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm, directory: Path, max_steps: int = -1, ckpt_path: str | None = None) -> Recorder:
    module = Recorder()
    trainer = Trainer(
        max_epochs=2, max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=directory,
        callbacks=[ModelCheckpoint(dirpath=directory, every_n_train_steps=1, save_top_k=-1)],
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module


def test_training_order_is_seeded_and_resumes_mid_epoch(built, tmp_path):
    root, model_dir, _ = built

    def make(**kwargs) -> NLADataModule:
        return make_datamodule(root, model_dir, train_splits=("av_sft", "ar_sft"), **kwargs)

    whole = fit(make(), tmp_path / "whole").seen
    per_epoch = len(whole) // 2
    assert per_epoch > 4 and [epoch for epoch, _, _ in whole] == [0] * per_epoch + [1] * per_epoch
    assert whole[:per_epoch] != whole[per_epoch:], "each epoch has its own order"
    assert fit(make(), tmp_path / "again").seen == whole
    assert fit(make(seed=1), tmp_path / "other").seen != whole
    stop = per_epoch - 2
    first = fit(make(), tmp_path / "part", max_steps=stop).seen
    checkpoint = tmp_path / "part" / f"epoch=0-step={stop}.ckpt"
    rest = fit(make(), tmp_path / "rest", ckpt_path=str(checkpoint)).seen
    assert first + rest == whole


def test_jsonargparse_builds_it_from_dotted_keys(tmp_path):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(NLADataModule, "data")
    config = parser.parse_args([
        "--data.source.target.name_or_path", "some/model", "--data.source.corpus.path", "austen",
        "--data.source.cache.directory", str(tmp_path), "--data.train_splits", "[rl]",
        "--data.source.prompts.marker", "^",
    ])
    dm = parser.instantiate_classes(config).data
    assert dm.cache_args.directory == str(tmp_path) and dm.train_splits == ("rl",)
    assert dm.prompt_args.marker == "^" and dm.text_splits == ["heldout"]
    with pytest.raises(ConfigError, match="data.train_splits"):
        NLADataModule(DataSource(target=ModelArgs("m"), corpus=CorpusArgs("austen")), train_splits=("heldout",))
