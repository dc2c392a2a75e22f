"""GRPO through the CLI on a tiny warm-started llama: both models learn, the metrics reach the event
files, the best pair is exported, and a resumed run ends exactly where an uninterrupted one does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nla.cli import main
from tests.data.cache_helpers import write_corpus
from tests.modules.test_rollout import warm_tiny_llama, write_sft_export

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "grpo.yaml"


@pytest.fixture(scope="module")
def setting(tiny_model_dir, tmp_path_factory):
    """The warm model as target, its SFT export (AV + identity-head AR) and a corpus."""
    root = tmp_path_factory.mktemp("grpo")
    model_dir = warm_tiny_llama(tiny_model_dir("llama"), root / "model")
    write_sft_export(model_dir, root / "sft")
    write_corpus(root)
    return root, model_dir


def fit(setting, run: str, *extra: str) -> Path:
    root, model_dir = setting
    main(["fit", "--config", str(CONFIG),
          "--data.init_args.model.name_or_path", str(model_dir),
          "--data.init_args.corpus.path", str(root / "docs.jsonl"),
          "--data.init_args.cache.directory", str(root / "cache"),
          "--model.init_args.sft_export", str(root / "sft"),
          "--model.init_args.export_dir", str(root / run / "export"),
          "--trainer.default_root_dir", str(root / run), *extra])
    return root / run


def checkpoint(run: Path, name: str = "last.ckpt") -> dict:
    (path,) = run.rglob(name)
    return torch.load(path, map_location="cpu", weights_only=True)


def scalars(run: Path) -> dict[str, list]:
    seen: dict[str, list] = {}
    for events in run.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            seen.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return seen


@pytest.fixture(scope="module")
def uninterrupted(setting):
    return fit(setting, "full")


def test_both_models_learn_and_metrics_are_logged(setting, uninterrupted):
    _, model_dir = setting
    state = checkpoint(uninterrupted)["state_dict"]
    assert checkpoint(uninterrupted)["global_step"] == 4
    start = load_file(str(next(model_dir.glob("*.safetensors"))))
    av = {k[len("verbalizer.model."):]: v for k, v in state.items() if k.startswith("verbalizer.model.")}
    ar = {k[len("reconstructor.model."):]: v for k, v in state.items() if k.startswith("reconstructor.model.")}
    assert av.keys() == start.keys()
    assert any(not torch.equal(av[k], start[k]) for k in start)
    assert any(not torch.equal(ar[k], start[k]) for k in ar)
    assert not torch.equal(state["reconstructor.head.weight"], torch.eye(32))
    assert not any(k.startswith("reference") for k in state)
    metrics = scalars(uninterrupted)
    for tag in ("train/reward_mean", "train/kl", "train/entropy", "train/clip_ratio", "train/rollout_fve",
                "train/completion_length_mean", "train/truncated_rate", "train/injected_fraction",
                "time/generate_s", "val/fve"):
        assert tag in metrics, tag
    assert sorted(step for step, _ in metrics["train/reward_mean"]) == [0, 1, 2, 3]
    assert sorted(step for step, _ in metrics["val/fve"]) == [0, 2, 4], "start (the SFT pair), then every 2 steps"
    assert all(value == 1.0 for _, value in metrics["train/injected_fraction"])
    # Rewards are -MSE_norm = -2(1 - cos) in [-4, 0]: failed answers get the orthogonal -2, and a valid
    # answer the AR reads as pointing away from the vector (cos < 0) scores below it.
    assert all(-4.0 <= value <= 0.0 for _, value in metrics["train/reward_mean"])
    best = max(value for _, value in metrics["val/fve"])
    assert checkpoint(uninterrupted)["nla_best_fve"] == pytest.approx(best)
    export = uninterrupted / "export"
    assert (export / "av" / "nla_meta.yaml").is_file() and (export / "ar" / "value_head.safetensors").is_file()
    assert "stage: grpo" in (export / "av" / "nla_meta.yaml").read_text()


def test_resume_from_last_matches_the_uninterrupted_run(setting, uninterrupted):
    first = fit(setting, "split", "--trainer.max_steps", "2")
    assert checkpoint(first)["global_step"] == 2
    (last,) = first.rglob("last.ckpt")
    resumed = fit(setting, "resumed", "--trainer.max_steps", "4", "--ckpt_path", str(last))
    done, reference = checkpoint(resumed), checkpoint(uninterrupted)
    assert done["global_step"] == 4
    assert sorted(step for step, _ in scalars(resumed)["train/reward_mean"]) == [2, 3]
    assert done["state_dict"].keys() == reference["state_dict"].keys()
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(done["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for ours, theirs in zip(done["optimizer_states"], reference["optimizer_states"]):
        for slot, state in theirs["state"].items():
            torch.testing.assert_close(ours["state"][slot]["exp_avg"], state["exp_avg"], rtol=0, atol=0)


def test_prompts_per_step_must_match_the_batch_size(setting, capsys):
    with pytest.raises(SystemExit) as failed:
        fit(setting, "mismatch", "--model.init_args.prompts_per_step", "3")
    assert failed.value.code == 2
    assert "model.prompts_per_step" in capsys.readouterr().err
