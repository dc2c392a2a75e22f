"""SFTModule through the real CLI on a tiny llama and a tiny cache: training, logging, resume, export."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from nla.commands.cli import main
from nla.data.datamodule import NLADataModule
from nla.core.errors import ConfigError
from nla.core.maths import normalized_mse
from nla.models.sidecar import read_sidecar
from nla.modules import optim
from nla.modules.sft import SFTModule
from tests.fixtures.commands import sft_argv, tiny_source
from tests.fixtures.corpus import write_corpus
from tests.fixtures.tensorboard import scalars, texts

STEPS = 20


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_model_dir):
    """Corpus and cache directory every run of this module shares (the first run builds the cache)."""
    root = tmp_path_factory.mktemp("sft")
    write_corpus(root)
    return root, tiny_model_dir("llama")


def fit(shared, run: Path, *overrides: str) -> None:
    root, model_dir = shared
    main(sft_argv(model_dir, root / "docs.jsonl", root / "cache", run, "--trainer.logger.init_args.version", "0",
                  *overrides))


def checkpoint(run: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run / "sft" / "version_0" / "checkpoints" / name, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def trained(shared, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    fit(shared, run, "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "5")
    return run


def test_fit_trains_both_models_and_logs_the_curves(trained, shared):
    _, model_dir = shared
    state = checkpoint(trained)["state_dict"]
    base = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    av = {key: value for key, value in base.items() if f"verbalizer.model.{key}" in state}
    assert av and all(not torch.equal(state[f"verbalizer.model.{key}"], value) for key, value in av.items())
    ar_layer = [key for key in base if f"reconstructor.model.{key}" in state and ".layers." in key]
    assert ar_layer and all(not torch.equal(state[f"reconstructor.model.{key}"], base[key]) for key in ar_layer)
    assert not torch.equal(state["reconstructor.head.weight"], torch.eye(32))

    logged = scalars(trained)
    assert {"val/fve", "val/av_loss_gap", "val/av_loss_shuffled", "val/ar_cosine", "train/av_loss", "train/ar_loss",
            "train/tokens_per_s", "train/injected_fraction", "train/lr_verbalizer", "samples/cjk_rate"} <= set(logged)
    assert "train/mfu" not in logged  # CPU: no peak to compare with
    av_loss = [value for _, value in logged["train/av_loss"]]
    assert len(av_loss) == STEPS
    assert sum(av_loss[-3:]) / 3 < sum(av_loss[:3]) / 3 - 0.1
    ar_val = [value for _, value in logged["val/ar_loss"]]
    assert len(ar_val) >= 3 and ar_val[-1] < ar_val[0]
    assert all(value == 1.0 for _, value in logged["train/injected_fraction"])
    # Warmup over 2 steps, then a cosine that reaches 0 at the last step.
    lrs = [value for _, value in logged["train/lr_verbalizer"]]
    assert lrs[0] == pytest.approx(1e-3 / 3) and max(lrs) == pytest.approx(1e-3) and lrs[-1] < 1e-5
    gap = logged["val/av_loss_gap"]
    shuffled, real = dict(logged["val/av_loss_shuffled"]), dict(logged["val/av_loss"])
    assert all(value == pytest.approx(shuffled[step] - real[step], abs=1e-5) for step, value in gap)
    table = texts(trained / "sft" / "version_0", "samples/av")
    assert [step for step, _ in table] == [10, 20]
    assert "| teacher summary |" in table[0][1]


def test_fit_exports_the_pair_at_the_end(trained):
    for role in ("av", "ar"):
        meta = read_sidecar(trained / "export" / role)
        assert (meta.role, meta.stage, meta.extraction_layer_index) == (role, "sft", 3)
        assert meta.training["steps"] == STEPS
        assert meta.training["split_sizes"]["heldout"] > 0 and "heldout_fve" not in meta.training
        # SFT measures the AR on the teacher's text, not the pair's round trip: the figure says so.
        figure = meta.training["figures"]["ar_on_teacher_text"]
        assert set(meta.training["figures"]) == {"ar_on_teacher_text"} and "no AV" in figure["what"]
        assert math.isfinite(figure["fve"]) and figure["rows"] > 0 and 0 < figure["documents"] <= figure["rows"]
        # The figure describes the exported weights: the last validation ran steps before the end, so
        # the final weights were validated once more, and that score is the curve's last point too.
        last_step, last_fve = max(scalars(trained)["val/fve"])
        assert figure["step"] == last_step == STEPS and figure["fve"] == pytest.approx(last_fve, abs=1e-6)
        assert figure["variance"] == meta.training["heldout_variance"]
        card = (trained / "export" / role / "README.md").read_text()
        assert f"AR on teacher text: FVE {figure['fve']:.4f} on {figure['rows']} held-out rows" in card
        assert "round trip (AV -> AR): not recorded (`nla evaluate` measures it)" in card
    assert (trained / "export" / "av" / "model.safetensors").is_file()
    assert (trained / "export" / "ar" / "value_head.safetensors").is_file()


def test_resume_from_last_adds_exactly_the_missing_steps(shared, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    # Both runs follow one 6-step schedule; the split run stops after 3 steps and resumes from last.ckpt.
    same = ("--model.init_args.export_dir", "null", "--model.init_args.schedule_steps", "6",
            "--trainer.callbacks.init_args.every_n_train_steps", "3")
    fit(shared, whole, "--trainer.max_steps", "6", *same)
    fit(shared, split, "--trainer.max_steps", "3", *same)
    fit(shared, split, "--trainer.max_steps", "6", *same, "--ckpt_path", "last")
    resumed, uninterrupted = checkpoint(split), checkpoint(whole)
    assert resumed["global_step"] == uninterrupted["global_step"] == 6
    assert resumed["state_dict"].keys() == uninterrupted["state_dict"].keys()
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    steps = [step for step, _ in scalars(split)["train/av_loss"]]
    assert sorted(steps) == [0, 1, 2, 3, 4, 5]  # three from the first run, three after the resume


def test_training_only_the_reconstructor_builds_no_verbalizer(shared, tmp_path):
    fit(shared, tmp_path, "--trainer.max_steps", "2", "--model.init_args.train_verbalizer", "false",
        "--data.init_args.train_splits", "[ar_sft]", "--data.init_args.val_shuffled", "false",
        "--model.init_args.export_dir", "null")
    state = checkpoint(tmp_path)["state_dict"]
    assert not any(key.startswith("verbalizer.") for key in state)
    assert not torch.equal(state["reconstructor.head.weight"], torch.eye(32))
    assert "train/av_loss" not in scalars(tmp_path) and "train/ar_loss" in scalars(tmp_path)


def test_train_splits_must_match_the_enabled_models(shared, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        fit(shared, tmp_path, "--trainer.max_steps", "1", "--model.init_args.train_reconstructor", "false")
    assert done.value.code == 2
    assert "data.train_splits: must be ['av_sft']" in capsys.readouterr().err


def datamodule(shared, **kwargs) -> NLADataModule:
    """The DataModule the tiny config describes (same cache), built directly."""
    root, model_dir = shared
    dm = NLADataModule(tiny_source(model_dir, root / "docs.jsonl", root / "cache"), progress=False, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_auto_injection_scale_is_the_caches_p75_norm(shared, monkeypatch):
    dm = datamodule(shared, train_splits=("av_sft",))
    module = SFTModule(train_reconstructor=False)
    module.build(dm)
    assert module.reconstructor is None
    assert module.verbalizer.injection_scale == pytest.approx(dm.cache.stats("av_sft")["p75_norm"])
    assert SFTModule(train_reconstructor=False, injection_scale=7.5).build(dm) is None

    monkeypatch.setattr(NLADataModule, "auto_injection_scale", property(lambda self: float("nan")))
    with pytest.raises(ConfigError) as error:
        SFTModule(train_reconstructor=False).build(dm)
    assert error.value.field == "model.injection_scale"


def test_fixed_injection_scale_and_model_mismatch(shared):
    dm = datamodule(shared, train_splits=("av_sft",))
    module = SFTModule(train_reconstructor=False, injection_scale=7.5)
    module.build(dm)
    assert module.verbalizer.injection_scale == 7.5
    dm.cache.meta["model"]["name_or_path"] = "someone/other-model"
    with pytest.raises(ConfigError) as error:
        SFTModule(train_reconstructor=False).build(dm)
    assert error.value.field == "data.source.target.name_or_path"


@pytest.mark.parametrize("kwargs, field", [
    ({"train_verbalizer": False, "train_reconstructor": False}, "model.train_verbalizer"),
    ({"injection_scale": "large"}, "model.injection_scale"),
    ({"injection_scale": -1.0}, "model.injection_scale"),
    ({"num_samples": 0}, "model.num_samples"),
])
def test_bad_arguments_name_their_field(kwargs, field):
    with pytest.raises(ConfigError) as error:
        SFTModule(**kwargs)
    assert error.value.field == field


def changed_fraction(export: Path, start_dir: Path) -> dict[str, float]:
    """Fraction of the AV's linear and norm weights that differ from the starting checkpoint."""
    exported = load_file(str(export / "av" / "model.safetensors"))
    start = load_file(str(start_dir / "model.safetensors"))
    assert all(value.dtype == torch.float32 for value in exported.values()), "float32 masters"
    fractions = {}
    for kind, match in (("linear", lambda k: k.endswith("proj.weight") or k == "lm_head.weight"),
                        ("norm", lambda k: "norm" in k)):
        keys = [k for k in start if match(k)]
        assert keys
        changed = sum(int((exported[k] != start[k]).sum()) for k in keys)
        fractions[kind] = changed / sum(start[k].numel() for k in keys)
    return fractions


def test_one_bf16_mixed_step_in_warmup_moves_every_verbalizer_weight(shared, tmp_path):
    # data.source.target.dtype bfloat16 (the frozen uses' dtype) must not make the trained weights bf16.
    fit(shared, tmp_path, "--trainer.max_steps", "1", "--trainer.precision", "bf16-mixed",
        "--trainer.limit_val_batches", "0", "--data.init_args.source.target.dtype", "bfloat16",
        "--model.init_args.training.verbalizer_lr", "1e-5", "--model.init_args.training.reconstructor_lr", "1e-5",
        "--model.init_args.warmup_steps", "50", "--model.init_args.sample_every_n_steps", "0")
    fractions = changed_fraction(tmp_path / "export", shared[1])
    assert fractions["linear"] > 0.99 and fractions["norm"] > 0.99, fractions


@pytest.mark.parametrize("overrides, message", [
    (("--trainer.precision", "bf16-true"), "trainer.precision: is bf16-true: it casts the trained weights"),
    (("--model.init_args.training.dtype", "bfloat16"), "model.training.dtype: is bfloat16: AdamW updates at small learning rates"),
])
def test_bf16_trained_weights_are_refused_without_a_compensating_optimizer(shared, tmp_path, capsys, overrides,
                                                                          message):
    with pytest.raises(SystemExit) as done:
        fit(shared, tmp_path, "--trainer.max_steps", "1", *overrides)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "bf16-mixed" in err and "adamw_bf16_stochastic" in err


def test_bf16_trained_weights_train_with_the_stochastic_rounding_optimizer(shared, tmp_path):
    fit(shared, tmp_path, "--trainer.max_steps", "1", "--trainer.precision", "bf16-true",
        "--trainer.limit_val_batches", "0", "--model.init_args.training.optimizer", "adamw_bf16_stochastic",
        "--model.init_args.sample_every_n_steps", "0")
    state = checkpoint(tmp_path)["state_dict"]
    assert state["verbalizer.model.model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16
    assert state["reconstructor.head.weight"].dtype == torch.float32


class Recorded:
    """Wraps a metric's ``update`` to keep what it was given."""

    def __init__(self, metric) -> None:
        self.calls, self.update = [], metric.update
        metric.update = self

    def __call__(self, *args) -> None:
        self.calls.append([value.detach().double().clone() for value in args])
        self.update(*args)


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_validation_metrics_are_exact_under_bf16_precisions(shared, precision):
    from lightning.pytorch import Trainer

    dm = datamodule(shared, val_shuffled=False)
    module = SFTModule()
    module.build(dm)
    fve, loss = Recorded(module.fve), Recorded(module.av_val_loss)
    Trainer(accelerator="cpu", precision=precision, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False).validate(module, datamodule=dm)
    # The float32/float64 computation on the same predictions and losses.
    mse = torch.cat([normalized_mse(pred.float(), target.float()) for pred, target in fve.calls]).double()
    expected_fve = 1 - float(mse.mean()) / dm.heldout_variance
    losses, tokens = (torch.stack(values) for values in zip(*loss.calls))
    expected_loss = float((losses * tokens).sum() / tokens.sum())
    assert len(mse) == len(dm.dataset("validation"))
    assert module.last_validation["val/fve"] == pytest.approx(expected_fve, abs=1e-6)
    assert module.last_validation["val/av_loss"] == pytest.approx(expected_loss, abs=1e-6)


def test_nla_test_scores_the_test_half_and_keeps_no_figure(shared):
    from lightning.pytorch import Trainer

    dm = datamodule(shared)
    module = SFTModule()
    module.build(dm)
    fve = Recorded(module.fve)
    results = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False).test(module, datamodule=dm)
    mse = torch.cat([normalized_mse(pred.float(), target.float()) for pred, target in fve.calls]).double()
    assert len(mse) == len(dm.dataset("test")) != len(dm.dataset("validation"))
    assert results[0]["test/fve"] == pytest.approx(1 - float(mse.mean()) / dm.heldout_variance, abs=1e-6)
    assert "test/av_loss" in results[0] and not any(name.startswith("val/") for name in results[0])
    # What describes the run (sidecar, checkpoint) comes from validation only.
    assert module.last_validation == {}


def test_gradient_clipping_clips_each_model_by_its_own_norm(shared):
    from lightning.pytorch import Trainer

    dm = datamodule(shared)
    module = SFTModule()
    module.build(dm)
    module.trainer = Trainer(accelerator="cpu", gradient_clip_val=1.0, logger=False, enable_checkpointing=False)
    optimizer = optim.adamw([optim.param_group("verbalizer", module.verbalizer, 1e-5),
                             optim.param_group("reconstructor", module.reconstructor, 1e-5)], (0.9, 0.95), 0.0)
    for scale, group in zip((10.0, 1e-3), optimizer.param_groups):
        for p in group["params"]:
            p.grad = torch.full_like(p, scale)
    small = [p.grad.clone() for p in optimizer.param_groups[1]["params"]]
    module.configure_gradient_clipping(optimizer, 1.0, "norm")
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in optimizer.param_groups[0]["params"]]))
    assert float(norm) == pytest.approx(1.0, rel=1e-4)
    # The AR's small gradients are under the threshold on their own: untouched.
    assert all(torch.equal(p.grad, g) for p, g in zip(optimizer.param_groups[1]["params"], small))
