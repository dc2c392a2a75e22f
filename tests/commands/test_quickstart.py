"""``nla quickstart`` end to end on a tiny llama: the shipped quickstart configs with the model, corpus
and sizes swapped for toy ones, through the real command. The SmolLM2 run itself takes minutes and is
documented in docs/benchmarks.md; this is the same code path at toy size."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from nla.commands.cli import main
from nla.commands.config_files import read_config
from tests.fixtures.corpus import write_corpus
from tests.fixtures.paths import ROOT

CONFIGS = ROOT / "configs" / "quickstart"


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_config(stage: str, root: Path, model_dir: Path) -> Path:
    config = read_config(CONFIGS / f"{stage}.yaml")
    source = config["data"]["init_args"]["source"]
    source["target"]["name_or_path"] = str(model_dir)
    source["corpus"].update(path=str(root / "docs.jsonl"), chunk_words=120, max_length=64, min_position=8,
                            max_documents=40)
    source["cache"].update(directory=str(root / "cache"), layer=1, positions_per_document=3, shard_documents=8)
    source["splits"] = {"av_sft": 0.3, "ar_sft": 0.3, "rl": 0.2, "heldout": 0.2}
    config["data"]["init_args"]["progress"] = False
    trainer = config["trainer"]
    trainer.update(max_steps=4, default_root_dir=str(root / stage), enable_progress_bar=False)
    trainer["logger"]["init_args"]["save_dir"] = str(root / "logs")
    model = config["model"]["init_args"]
    model.setdefault("training", {}).update(verbalizer_lr=1e-3, reconstructor_lr=1e-3)
    if stage == "sft":
        trainer.update(val_check_interval=4, limit_val_batches=1)
        model.update(max_new_tokens=12, export_dir=str(root / "sft-export"), sample_every_n_steps=2)
    else:
        model.update(sft_export=str(root / "sft-export"), best_export_dir=str(root / "grpo-best"),
                     export_dir=str(root / "grpo-export"), eval_every_n_steps=2, eval_max_batches=1)
        model["rollout"].update(max_new_tokens=12, overlong_buffer=4)  # the shipped buffer, scaled to the cap
    path = root / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def toy_configs(tmp_path, tiny_model_dir) -> tuple[Path, Path]:
    """The shipped quickstart configs at toy size, on a corpus of our own words, in ``tmp_path``."""
    write_corpus(tmp_path)
    model_dir = tiny_model_dir("llama")
    return toy_config("sft", tmp_path, model_dir), toy_config("grpo", tmp_path, model_dir)


def test_quickstart_runs_every_stage_and_prints_the_table(toy_configs, tmp_path, capsys):
    sft, grpo = toy_configs
    command = ["quickstart", "--sft_config", str(sft), "--grpo_config", str(grpo), "--eval_rows", "12",
               "--resamples", "200", "--examples", '["One small test sentence about the garden."]']
    main(command)
    out = capsys.readouterr().out
    for name in ("mean predictor", "shuffled (GRPO pair)", "after SFT", "after GRPO", "GRPO - SFT",
                 "after GRPO, SFT's AR", "GRPO (SFT's AR) - SFT"):
        assert re.search(rf"{re.escape(name)}\s+[+-]\d\.\d{{3}} \[[+-]\d\.\d{{3}}, [+-]\d\.\d{{3}}\]", out), name
    assert "12 rows from" in out and "FVE on valid answers only" in out
    assert "cache + summaries  " in out and "(reused)" not in out
    for path in ("sft-export/av/nla_meta.yaml", "sft-export/ar/value_head.safetensors",
                 "grpo-export/av/nla_meta.yaml", "grpo-export/ar/value_head.safetensors"):
        assert (tmp_path / path).is_file(), path
    assert list((tmp_path / "logs" / "grpo").rglob("events.out.tfevents.*"))
    assert "One small test sentence about the garden." in out
    assert (tmp_path / "explorer.html").read_text().count("nla-data") >= 1

    # A second run finds the cache and reuses it; the previous logs are replaced, not appended to.
    main(command)
    again = capsys.readouterr().out
    assert "cache + summaries (reused)" in again
    assert len(list((tmp_path / "logs" / "sft").rglob("events.out.tfevents.*"))) == 1

    # Comparing the exports again without training: no stage time for SFT or GRPO, the same table.
    main([*command, "--skip_training", "true"])
    compared = capsys.readouterr().out
    assert "after GRPO" in compared and "  SFT  " not in compared and "  GRPO  " not in compared
    assert "held-out test half, which no training choice saw" in compared
    assert f"GRPO pair: {tmp_path / 'grpo-export'}" in compared

    # The pair of the step that scored best on the validation half, read on the test half.
    main([*command, "--skip_training", "true", "--grpo_pair", "best"])
    best = capsys.readouterr().out
    assert f"GRPO pair: {tmp_path / 'grpo-best'}" in best and "after GRPO" in best

    # An ablation of GRPO alone: the SFT export is kept as it is, the table reads the validation half.
    (tmp_path / "explorer.html").unlink()
    sft_weights = (tmp_path / "sft-export" / "ar" / "value_head.safetensors").read_bytes()
    grpo_weights = (tmp_path / "grpo-export" / "av" / "model.safetensors").read_bytes()
    main([*command[:-2], "--examples", "[]", "--reuse_sft", "true", "--eval_split", "validation",
          "--training_seed", "1", "--grpo_overrides", '["--model.init_args.overlong_buffer=0"]'])
    ablation = capsys.readouterr().out
    assert "held-out validation half" in ablation and "  SFT  " not in ablation and "  GRPO  " in ablation
    assert "Example explanations" not in ablation and not (tmp_path / "explorer.html").exists()
    assert (tmp_path / "sft-export" / "ar" / "value_head.safetensors").read_bytes() == sft_weights
    assert (tmp_path / "grpo-export" / "av" / "model.safetensors").read_bytes() != grpo_weights


def refused(capsys, sft: Path, grpo: Path, *options: str) -> str:
    """The one-line error (exit status 2) of a quickstart that must not start."""
    with pytest.raises(SystemExit) as exit_info:
        main(["quickstart", "--sft_config", str(sft), "--grpo_config", str(grpo), *options])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_eval_split_must_be_a_heldout_half(toy_configs, tmp_path, capsys):
    sft, grpo = toy_configs
    assert "eval_split" in refused(capsys, sft, grpo, "--eval_split", "heldout")
    assert not (tmp_path / "cache").exists()


def test_grpo_pair_must_name_an_export(toy_configs, tmp_path, capsys):
    sft, grpo = toy_configs
    assert "grpo_pair: must be one of final, best" in refused(capsys, sft, grpo, "--grpo_pair", "last")
    config = yaml.safe_load(grpo.read_text())
    del config["model"]["init_args"]["best_export_dir"]
    grpo.write_text(yaml.safe_dump(config))
    assert "model.init_args.best_export_dir" in refused(capsys, sft, grpo, "--grpo_pair", "best")
    assert not (tmp_path / "cache").exists()


def test_grpo_config_must_continue_from_the_sft_export(toy_configs, tmp_path, capsys):
    sft, grpo = toy_configs
    config = yaml.safe_load(grpo.read_text())
    config["model"]["init_args"]["sft_export"] = str(tmp_path / "elsewhere")
    grpo.write_text(yaml.safe_dump(config))
    assert "sft_export" in refused(capsys, sft, grpo, "--eval_rows", "4")
