"""GRPO through the CLI on a tiny warm-started llama: both models learn, the metrics reach the event
files, the best pair is exported, and a resumed run ends exactly where an uninterrupted one does."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from nla.commands.cli import main
from nla.models.sidecar import read_sidecar
from nla.modules.grpo.module import GRPOModule
from tests.fixtures.commands import source_overrides
from tests.fixtures.corpus import write_corpus
from tests.fixtures.pairs import warm_tiny_llama, write_sft_export
from tests.fixtures.tensorboard import scalars
from tests.fixtures.paths import ROOT

CONFIG = ROOT / "configs" / "tiny" / "grpo.yaml"


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
          "--data.init_args.source.target.name_or_path", str(model_dir),
          "--data.init_args.source.corpus.path", str(root / "docs.jsonl"),
          "--data.init_args.source.cache.directory", str(root / "cache"), *source_overrides(),
          "--model.init_args.sft_export", str(root / "sft"),
          "--model.init_args.best_export_dir", str(root / run / "export"),
          "--model.init_args.export_dir", str(root / run / "final"),
          "--trainer.default_root_dir", str(root / run), "--trainer.logger.init_args.save_dir", str(root / run),
          *extra])
    return root / run


def checkpoint(run: Path, name: str = "last.ckpt") -> dict:
    (path,) = run.rglob(name)
    return torch.load(path, map_location="cpu", weights_only=True)


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


def test_exports_record_their_round_trip_with_what_reproduces_it(uninterrupted):
    """The final pair records its own held-out figure (it used to read "not recorded"), named for
    what it is, with the generation cap and decoding a third party needs to reproduce it."""
    hparams = checkpoint(uninterrupted)["hyper_parameters"]
    logged = dict(scalars(uninterrupted)["val/fve"])
    for directory, step in (("final", 4), ("export", None)):
        for role in ("av", "ar"):
            meta = read_sidecar(uninterrupted / directory / role)
            trip = meta.training["figures"]["round_trip"]
            assert set(meta.training["figures"]) == {"round_trip", "round_trip_frozen_reconstructor"}
            assert "heldout_fve" not in meta.training
            frozen = meta.training["figures"]["round_trip_frozen_reconstructor"]
            # The same rows and explanations, read by the SFT stage's AR (the run trained its own away
            # from it): another figure, with everything else that reproduces it the same.
            assert frozen["reconstructor"] == str(Path(hparams["sft_export"]) / "ar")
            assert {k: frozen[k] for k in ("rows", "step", "valid_rate", "max_new_tokens")} == {
                k: trip[k] for k in ("rows", "step", "valid_rate", "max_new_tokens")}
            assert frozen["fve"] != pytest.approx(trip["fve"], abs=1e-6) and "not trained" in frozen["what"]
            assert trip["max_new_tokens"] == hparams["rollout"]["max_new_tokens"] and trip["decoding"] == "greedy"
            assert trip["fve"] == pytest.approx(logged[trip["step"]], abs=1e-5)
            assert trip["rows"] > 0 and 0 < trip["documents"] <= trip["rows"] and 0 <= trip["valid_rate"] <= 1
            assert trip["variance"] == meta.training["heldout_variance"] and "MSE 2" in trip["what"]
            if step is not None:
                assert trip["step"] == step
            card = (uninterrupted / directory / role / "README.md").read_text()
            assert f"round trip (AV -> AR): FVE {trip['fve']:.4f} on {trip['rows']} held-out rows" in card
            assert f"at most {hparams['rollout']['max_new_tokens']} new tokens" in card and "not recorded" not in card.split(
                "## Metrics")[1].split("## Use")[0]


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


def test_one_bf16_mixed_step_moves_every_verbalizer_weight(setting):
    _, model_dir = setting
    # data.source.target.dtype bfloat16 is the frozen uses' dtype: the trained AV and AR still load in float32.
    run = fit(setting, "mixed", "--trainer.precision", "bf16-mixed", "--data.init_args.source.target.dtype", "bfloat16",
              "--trainer.max_steps", "1", "--model.init_args.export_dir", str(setting[0] / "mixed" / "final"))
    exported = load_file(str(run / "final" / "av" / "model.safetensors"))
    start = load_file(str(next(model_dir.glob("*.safetensors"))))
    assert all(value.dtype == torch.float32 for value in exported.values())
    for kind, match in (("linear", lambda k: k.endswith("proj.weight") or k == "lm_head.weight"),
                        ("norm", lambda k: "norm" in k)):
        keys = [k for k in start if match(k)]
        changed = sum(int((exported[k] != start[k]).sum()) for k in keys) / sum(start[k].numel() for k in keys)
        assert changed > 0.99, (kind, changed)
    # The reference is stored in bf16 and the policy computes in bf16 under autocast: close, not equal.
    ((_, kl),) = scalars(run)["train/kl"]
    assert 0 <= kl < 1e-3


def test_the_reference_matches_the_policy_at_the_first_step_under_bf16_true(setting):
    # bf16 weights train only with the stochastic rounding optimizer; the reference, stored in the
    # policy's compute dtype, then scores the first rollout exactly as the policy does.
    run = fit(setting, "true", "--trainer.precision", "bf16-true", "--trainer.max_steps", "1",
              "--model.init_args.training.optimizer", "adamw_bf16_stochastic")
    assert scalars(run)["train/kl"] == [(0, 0.0)]


def test_each_process_samples_with_its_own_seed():
    module = GRPOModule(seed=7)
    seeds = {}
    for rank in (0, 1):
        for step in (0, 1):
            module._trainer = SimpleNamespace(global_rank=rank, global_step=step)
            seeds[rank, step] = module._sample_seed()
    assert len(set(seeds.values())) == 4
    module._trainer = SimpleNamespace(global_rank=1, global_step=1)
    assert module._sample_seed() == seeds[1, 1]


def test_evaluation_can_be_turned_off(setting):
    run = fit(setting, "no-eval", "--trainer.max_steps", "2", "--model.init_args.eval_every_n_steps", "0",
              "--model.init_args.best_export_dir", "null", "--model.init_args.memory_probe", "false")
    metrics = scalars(run)
    assert sorted(step for step, _ in metrics["train/reward_mean"]) == [0, 1]
    assert not [tag for tag in metrics if tag.startswith("val/")], "no held-out evaluation, not even at step 0"


def test_the_best_pair_export_needs_evaluation(setting, capsys):
    with pytest.raises(SystemExit) as failed:
        fit(setting, "no-eval-export", "--model.init_args.eval_every_n_steps", "0")
    assert failed.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "nla: error: model.best_export_dir: keeps the best pair by held-out FVE, but eval_every_n_steps is 0 "
        "(evaluation off); unset best_export_dir (export_dir still exports) or evaluate")


def test_a_greedy_answer_needs_a_group_to_compare_it_with(setting, capsys):
    with pytest.raises(SystemExit) as failed:
        fit(setting, "greedy-alone", "--model.init_args.rollout.greedy_answer", "true",
            "--model.init_args.rollout.samples_per_prompt", "1")
    assert failed.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "nla: error: model.rollout.greedy_answer: needs samples_per_prompt of at least 2 (one greedy answer and the sampled "
        "ones it is compared with); set samples_per_prompt or turn it off")


def test_nan_rollouts_stop_grpo_and_keep_the_checkpoint(setting, monkeypatch, capsys):
    """Manual optimization: both models' steps are skipped on NaN rewards and losses; two such steps in a
    row stop the run before the checkpoint of the second. (Step 0's rollouts are all unparseable, so its
    rewards are the finite -2 and its AV step is taken: the skips are steps 1 and 2.)"""
    from nla.models.reconstructor import Reconstructor

    forward = Reconstructor.forward
    monkeypatch.setattr(Reconstructor, "forward", lambda self, *args, **kwargs: forward(self, *args, **kwargs) * float("nan"))
    with pytest.raises(SystemExit) as failed:
        fit(setting, "nan", "--trainer.max_steps", "4", "--model.init_args.eval_every_n_steps", "0",
            "--model.init_args.best_export_dir", "null", "--model.init_args.memory_probe", "false",
            "--model.init_args.training.max_nonfinite_steps", "2")
    assert failed.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "nla: error: model.training.max_nonfinite_steps: 2 training steps in a row had a non-finite loss or gradient and were "
        "skipped (step 3); stopped with the last checkpoint and export untouched: check the data (its "
        "cache.checksums), lower the learning rate, or raise this limit")
    run = setting[0] / "nan"
    kept = checkpoint(run)
    assert kept["global_step"] == 2, "the checkpoint of step 2, not of the step that stopped the run"
    assert all(bool(torch.isfinite(value).all()) for value in kept["state_dict"].values() if value.is_floating_point())
    assert not (run / "export").exists() and not (run / "final").exists()


def test_every_heldout_evaluation_computes_in_the_precision_of_the_steps(setting, monkeypatch):
    """bf16-mixed: the evaluation of the starting pair, those inside training steps and the final pair's
    (after the last step, for its export) all run under the steps' autocast, so ``val/fve``, the
    baseline it is compared with, the best-pair choice and the export's figure are comparable."""
    from nla.modules.grpo import module as grpo_module

    seen, evaluate = [], grpo_module.heldout_fve

    def recording(*args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(grpo_module, "heldout_fve", recording)
    run = fit(setting, "precision", "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "3",
              "--model.init_args.memory_probe", "false")
    assert sorted(step for step, _ in scalars(run)["val/fve"]) == [0, 2], "the start, then step 2"
    assert read_sidecar(run / "final" / "av").training["figures"]["round_trip"]["step"] == 3
    assert seen == [(True, torch.bfloat16)] * 3


@pytest.mark.parametrize("kl_coef", ["0", "0.01"])
def test_without_a_kl_term_no_reference_is_built(setting, monkeypatch, kl_coef):
    """``kl_coef: 0`` means no KL at all: no frozen reference is built or run, no ``train/kl`` (it would
    need the reference), and training runs as usual."""
    from nla.modules.grpo import module as grpo_module

    built, build = [], grpo_module.build_reference
    monkeypatch.setattr(grpo_module, "build_reference", lambda *args, **kwargs: built.append(1) or build(*args, **kwargs))
    run = fit(setting, f"kl-{kl_coef}", "--model.init_args.rollout.kl_coef", kl_coef, "--trainer.max_steps", "2",
              "--model.init_args.eval_every_n_steps", "0", "--model.init_args.best_export_dir", "null",
              "--model.init_args.memory_probe", "false")
    metrics = scalars(run)
    assert checkpoint(run)["global_step"] == 2
    assert sorted(step for step, _ in metrics["train/reward_mean"]) == [0, 1]
    assert (len(built), "train/kl" in metrics) == ((0, False) if kl_coef == "0" else (1, True))
