"""Training steps on a CUDA device through the real CLI (skipped without one): bf16-mixed SFT and GRPO
steps on one GPU, and the FSDP2 strategy at world size 1 on NCCL (NCCL refuses two ranks on one GPU).
Run by ``tools/gpu/check.sh`` on the lent GPU. The SFT and GRPO steps also run on CPU with the GPU's
code paths (bf16-mixed, packed ``nla_varlen`` attention through its reference kernel, the static
sampler), so ``tools/gpu/rehearse.sh`` tries them with the GPU image's package versions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from nla.commands.cli import main
from nla.models import sampling
from nla.commands.config_files import read_config
from tests.fixtures.commands import GRPO_SOURCE, SFT_SOURCE, with_source
from tests.fixtures.corpus import write_corpus
from tests.fixtures.tensorboard import scalars
from tests.fixtures.paths import ROOT


DEVICES = [pytest.param("cuda", marks=pytest.mark.gpu), "cpu"]


def config(kind: str, run: Path, model_dir: Path, corpus: Path, device: str = "cuda", **trainer) -> Path:
    """configs/tiny/<kind>.yaml on one GPU (or the CPU), bf16-mixed, 2 steps, everything written under ``run``."""
    values = read_config(ROOT / "configs" / "tiny" / f"{kind}.yaml")
    with_source(values, GRPO_SOURCE if kind == "grpo" else SFT_SOURCE)
    accelerator = "gpu" if device == "cuda" else "cpu"
    values["trainer"].update(accelerator=accelerator, devices=1, precision="bf16-mixed", max_steps=2,
                             default_root_dir=str(run),
                             logger={"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                     "init_args": {"save_dir": str(run), "name": kind, "version": 0}}, **trainer)
    values["trainer"].pop("val_check_interval", None)
    source = values["data"]["init_args"]["source"]
    source["target"]["name_or_path"] = str(model_dir)
    source["target"]["attn_implementation"] = "nla_varlen"  # what auto picks on CUDA
    source["corpus"]["path"] = str(corpus)
    source["cache"]["directory"] = str(run / "cache")
    values["model"]["init_args"]["export_dir"] = str(run / "export")
    path = run / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpu-corpus")
    write_corpus(root)
    return root / "docs.jsonl"


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_mixed_sft_steps_log_mfu(device, tmp_path, corpus, tiny_model_dir):
    main(["fit", "--config", str(config("sft", tmp_path, tiny_model_dir("llama"), corpus, device))])
    logged = scalars(tmp_path)
    assert len(logged["train/av_loss"]) == 2 and all(math.isfinite(v) for _, v in logged["train/av_loss"])
    if device == "cuda":
        assert all(0 < v < 1 for _, v in logged["train/mfu"])  # the device's peak came from the table
    assert (tmp_path / "export" / "av" / "config.json").is_file()


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_mixed_grpo_steps_sample_on_the_static_engine(device, tmp_path, corpus, tiny_model_dir, monkeypatch):
    engines = []
    for engine in (sampling.LoopSampler, sampling.StaticSampler):
        generate = engine.generate
        monkeypatch.setattr(engine, "generate", lambda self, *args, generate=generate, **kwargs: (
            engines.append(type(self).__name__), generate(self, *args, **kwargs))[1])
    main(["fit", "--config", str(config("grpo", tmp_path, tiny_model_dir("llama"), corpus, device)),
          "--model.init_args.rollout.sampler", "static"])
    # The held-out evaluations (at the start and at step 2) decode on the default engine, static on CUDA
    # and the loop elsewhere; both steps' rollouts sample on the static engine the config names.
    evaluation = "StaticSampler" if device == "cuda" else "LoopSampler"
    assert engines == [evaluation, "StaticSampler", "StaticSampler", evaluation]
    logged = scalars(tmp_path)
    assert len(logged["time/generate_s"]) == 2 and all(v == 1.0 for _, v in logged["train/injected_fraction"])
    assert all(math.isfinite(v) for _, v in logged["train/av_loss"])


@pytest.mark.gpu
def test_fsdp2_sft_at_world_size_one_on_nccl(tmp_path, corpus, tiny_model_dir):
    path = config("sft", tmp_path, tiny_model_dir("llama"), corpus,
                  strategy={"class_path": "nla.modules.fsdp.NLAFSDPStrategy"})
    main(["fit", "--config", str(path)])
    assert torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl"
    assert len(scalars(tmp_path)["train/ar_loss"]) == 2
    assert (tmp_path / "export" / "ar" / "value_head.safetensors").is_file()
