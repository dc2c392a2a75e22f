"""The FSDP2 strategy: the sharding plan, gathering for sampling, activation checkpointing and export
copies in one process; then sharded SFT and GRPO fits through the CLI on 2 CPU processes (gloo),
with distributed checkpoints, resume from last and the end-of-fit export."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy
from torch.distributed.fsdp._fully_shard import _fsdp_param_group

from nla.core.errors import ConfigError
from nla.models.pair_loading import load_pair
from nla.models import adapters
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.pair import Pair
from nla.modules.fsdp import NLAFSDPStrategy, full_copies, gathered, shard, sharding_plan
from nla.models.reconstructor import Reconstructor
from nla.modules.grpo import rollout as rollout_module
from nla.modules.grpo.reference import FrozenCopy
from nla.modules.grpo.rollout import ar_loss
from nla.models.verbalizer import Verbalizer
from nla.core.prompts import PromptArgs, Prompts
from nla.commands.config_files import read_config
from tests.fixtures.commands import GRPO_SOURCE, SFT_SOURCE, with_source
from tests.fixtures.corpus import write_corpus
from tests.fixtures.pairs import WARM_LAYER as LAYER, WARM_SCALE as SCALE, warm_tiny_llama, write_sft_export
from tests.fixtures.tensorboard import steps as steps_logged
from tests.fixtures.paths import ROOT



pytestmark = pytest.mark.usefixtures("one_thread")


class Holder(nn.Module):
    """The attributes the plan reads, as SFTModule and GRPOModule hold them."""

    def __init__(self, verbalizer: Verbalizer, reconstructor: Reconstructor, reference: FrozenCopy | None = None):
        super().__init__()
        self.verbalizer, self.reconstructor, self.reference = verbalizer, reconstructor, reference


@pytest.fixture(scope="module")
def parts(tiny_model_dir):
    torch.manual_seed(0)
    args = ModelArgs(str(tiny_model_dir("llama")), dtype="float32")
    tokenizer = load_tokenizer(args)
    prompts = Prompts.build(tokenizer, PromptArgs())

    def make(reference: bool = False) -> Holder:
        verbalizer = Verbalizer(load_causal_lm(args), tokenizer, prompts.marker, SCALE)
        frozen = FrozenCopy(verbalizer) if reference else None
        return Holder(verbalizer, Reconstructor.from_target(args, LAYER), frozen)

    return make, prompts


def test_plan_shards_every_block_then_each_models_entry(parts):
    make, _ = parts
    pair = make(reference=True)
    plan = {name: (module, fp32) for name, module, fp32 in sharding_plan(pair)}
    names = list(plan)
    for prefix, model in (("verbalizer", pair.verbalizer.model), ("reference", pair.reference.verbalizer.model),
                          ("reconstructor", pair.reconstructor.model)):
        blocks = adapters.decoder_layers(model)
        assert len(blocks) == (LAYER + 1 if prefix == "reconstructor" else 4)
        for i, block in enumerate(blocks):
            assert plan[f"{prefix}.layers.{i}"][0] is block
    # Roots after their blocks; the AR's root is the decoder its forward enters, and its head stays fp32.
    assert plan["verbalizer.model"][0] is pair.verbalizer.model
    assert plan["reference.model"][0] is pair.reference.verbalizer.model
    assert plan["reconstructor.decoder"][0] is adapters.decoder(pair.reconstructor.model)
    assert names.index("verbalizer.model") > names.index("verbalizer.layers.3")
    assert names.index("reconstructor.decoder") > names.index(f"reconstructor.layers.{LAYER}")
    assert [name for name, (_, fp32) in plan.items() if fp32] == ["reconstructor.head"]
    assert not any(name.startswith("reference.") for name, _, _ in sharding_plan(make()))


def test_strategy_options_and_backend():
    with pytest.raises(ConfigError) as error:
        NLAFSDPStrategy(param_dtype="fp8")
    assert error.value.field == "trainer.strategy.param_dtype"
    strategy = NLAFSDPStrategy(param_dtype="bfloat16")
    assert strategy.mixed_precision.param_dtype == torch.bfloat16
    assert strategy.mixed_precision.reduce_dtype == torch.float32
    strategy.parallel_devices = [torch.device("cpu")] * 2
    assert strategy._get_process_group_backend() == "gloo"


@pytest.fixture(scope="module")
def mesh():
    """A one-process gloo group: enough for fully_shard to run its real code paths in this process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def count_all_gathers(monkeypatch) -> list[int]:
    """Counts units going from sharded to whole: each follows an all-gather (one process skips the
    collective itself, not the transition)."""
    calls = [0]
    group = _fsdp_param_group.FSDPParamGroup
    real = group._to_unsharded

    def counted(self):
        calls[0] += not self.is_unsharded
        return real(self)

    monkeypatch.setattr(group, "_to_unsharded", counted)
    return calls


def test_sampling_gathers_each_unit_once_per_rollout(parts, mesh, monkeypatch):
    make, prompts = parts
    pair = make()
    shard(pair, mesh, MixedPrecisionPolicy())
    units = sum(isinstance(m, FSDPModule) for m in pair.verbalizer.modules())
    assert units == 5  # four blocks and the causal LM
    calls = count_all_gathers(monkeypatch)
    vectors, ids = torch.randn(2, 32), [prompts.av_prompt_ids] * 2
    free = pair.verbalizer.sample(vectors, ids, max_new_tokens=6, greedy=True)
    steps = max(len(t) for t in free.tokens)
    # Unmanaged: the blocks are gathered again for every token (the root, as FSDP2 does, stays whole).
    assert steps > 1 and calls[0] == 4 * steps + 1
    pair.verbalizer.model.reshard()
    calls[0] = 0
    with gathered(pair.verbalizer):
        held = pair.verbalizer.sample(vectors, ids, max_new_tokens=6, greedy=True)
    assert calls[0] == units
    assert held.tokens == free.tokens
    # Resharded afterwards, with the blocks' own setting back: the next token-by-token loop gathers again.
    calls[0] = 0
    pair.verbalizer.sample(vectors, ids, max_new_tokens=6, greedy=True)
    assert calls[0] == 4 * steps + 1


def test_activation_checkpointing_keeps_the_injected_gradients(parts, mesh):
    make, prompts = parts
    plain = make()
    checkpointed = copy.deepcopy(plain)
    shard(plain, mesh, MixedPrecisionPolicy())
    shard(checkpointed, mesh, MixedPrecisionPolicy(), checkpointing=True)
    ids, labels = prompts.av_example("a quiet evening by the river")
    ids, labels = torch.tensor([ids]), torch.tensor([labels])
    vector = torch.randn(1, 32)
    with torch.no_grad():
        other = float(plain.verbalizer(ids, torch.ones_like(ids), -vector, labels).loss)
    runs, losses = [], []
    for pair in (plain, checkpointed):
        attention = adapters.decoder_layers(pair.verbalizer.model)[0].self_attn
        seen = [0]
        attention.register_forward_hook(lambda *_: seen.__setitem__(0, seen[0] + 1))
        loss = pair.verbalizer(ids, torch.ones_like(ids), vector, labels).loss
        loss.backward()
        runs.append(seen[0])
        losses.append(float(loss.detach()))
    assert runs == [1, 2], "the checkpointed block must run again in backward"
    assert other != losses[0], "the loss must depend on the injected vector"
    grads = {n: p.grad.full_tensor() for n, p in plain.verbalizer.named_parameters() if p.grad is not None}
    assert any(".layers." in name for name in grads)
    again = {n: p.grad.full_tensor() for n, p in checkpointed.verbalizer.named_parameters() if p.grad is not None}
    assert again.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(again[name], grad, msg=name)


def test_full_copies_are_plain_modules_with_the_weights(parts, mesh):
    make, _ = parts
    pair = make()
    before = {k: v.clone() for k, v in pair.state_dict().items()}
    shard(pair, mesh, MixedPrecisionPolicy())
    verbalizer, reconstructor = full_copies(pair.verbalizer, pair.reconstructor)
    assert not any(isinstance(m, FSDPModule) for m in (*verbalizer.modules(), *reconstructor.modules()))
    copied = {**{f"verbalizer.{k}": v for k, v in verbalizer.state_dict().items()},
              **{f"reconstructor.{k}": v for k, v in reconstructor.state_dict().items()}}
    assert copied.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(copied[key], value), key
    unsharded = make()
    assert full_copies(unsharded.verbalizer, None) == (unsharded.verbalizer, None)


def test_ar_update_keeps_pace_with_busier_processes(parts, monkeypatch):
    make, prompts = parts
    reconstructor = make().reconstructor
    pair = Pair(None, reconstructor, prompts, LAYER)
    valid = SimpleNamespace(valid=torch.tensor([True, True]), explanations=["a b", "c d"], vectors=torch.randn(2, 32))
    alone = ar_loss(pair, valid, 2, lambda loss: None)
    # Another process holds 2 more valid rows and needs 2 passes: this one runs 2, weighted x 2 / 4.
    monkeypatch.setattr(rollout_module, "_across_processes", lambda rows, passes, device: (rows + 2, 2, 2))
    passes = []
    shared = ar_loss(pair, valid, 2, passes.append)
    assert len(passes) == 2 and shared == pytest.approx(alone) and float(passes[1].detach()) == 0.0
    # With no valid row here, it still runs the passes, weightless: no gradient, but no missed collective.
    empty = SimpleNamespace(valid=torch.tensor([False, False]), explanations=[None, None], vectors=torch.randn(2, 32))
    passes.clear()
    assert ar_loss(pair, empty, 2, lambda loss: passes.append(loss.backward())) == 0.0
    assert len(passes) == 2
    assert all(p.grad is not None and not p.grad.any() for p in reconstructor.parameters())


# ---- two processes through the CLI --------------------------------------------------------------


@pytest.fixture(scope="module")
def setting(tiny_model_dir, tmp_path_factory):
    """A tiny llama (SFT target), its warm-started copy with an SFT export (GRPO), a corpus."""
    root = tmp_path_factory.mktemp("fsdp")
    write_corpus(root)
    warm = warm_tiny_llama(tiny_model_dir("llama"), root / "warm")
    write_sft_export(warm, root / "sft")
    return root, tiny_model_dir("llama"), warm


def sharded_config(kind: str, run: Path, model_dir: Path, root: Path, **model) -> Path:
    """configs/tiny/<kind>.yaml on 2 CPU processes under NLAFSDPStrategy, paths pointed at ``run``."""
    config = read_config(ROOT / "configs" / "tiny" / f"{kind}.yaml")
    with_source(config, GRPO_SOURCE if kind == "grpo" else SFT_SOURCE)
    trainer, source = config["trainer"], config["data"]["init_args"]["source"]
    trainer.update(devices=2, default_root_dir=str(run), strategy={"class_path": "nla.modules.fsdp.NLAFSDPStrategy"},
                   logger={"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                           "init_args": {"save_dir": str(run), "name": kind, "version": 0}})
    trainer["callbacks"][0]["init_args"].update(every_n_train_steps=2, save_top_k=-1)
    # The SFT pair, or GRPO's best one, in run/export.
    config["model"]["init_args"].update({"export_dir" if kind == "sft" else "best_export_dir": str(run / "export")},
                                        **model)
    source["target"]["name_or_path"] = str(model_dir)
    source["corpus"]["path"] = str(root / "docs.jsonl")
    source["cache"]["directory"] = str(root / f"cache-{kind}")
    path = run / f"{kind}.yaml"
    run.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def cli(config: Path, *extra: str) -> None:
    # One intra-op thread per process: two processes share the small CI machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "nla", "fit", "--config", str(config), *extra], cwd=config.parent,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def assert_distributed_checkpoint(run: Path, global_step: int) -> None:
    (last,) = run.rglob("last.ckpt")
    assert last.is_dir() and {"__0_0.distcp", "__1_0.distcp", "meta.pt"} <= {p.name for p in last.iterdir()}
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == global_step


def assert_trained_export(export: Path, start_dir: Path, every: bool) -> None:
    """The export loads as a pair and differs from the starting weights (``every`` AV tensor, or some)."""
    pair = load_pair(export / "av", export / "ar")
    verbalizer, reconstructor = pair.verbalizer, pair.reconstructor
    start = load_file(str(start_dir / "model.safetensors"))
    av = verbalizer.model.state_dict()
    changed = [not torch.equal(av[k], v) for k, v in start.items()]
    assert av.keys() >= start.keys() and (all(changed) if every else any(changed)), "AV unchanged"
    ar = {k: v for k, v in reconstructor.model.state_dict().items() if ".layers." in k}
    assert ar and any(not torch.equal(v, start[k]) for k, v in ar.items()), "AR blocks unchanged"
    assert not torch.equal(reconstructor.head.weight, torch.eye(32))


def test_sharded_sft_resumes_from_last_and_exports(setting, tmp_path):
    root, model_dir, _ = setting
    config = sharded_config("sft", tmp_path, model_dir, root, sample_every_n_steps=2, schedule_steps=3)
    cli(config, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2")
    assert_distributed_checkpoint(tmp_path, 2)
    cli(config, "--trainer.max_steps", "3", "--trainer.val_check_interval", "2", "--ckpt_path", "last")
    assert_distributed_checkpoint(tmp_path, 3)
    assert steps_logged(tmp_path, "train/av_loss") == [0, 1, 2]  # two steps, then exactly one after resume
    assert_trained_export(tmp_path / "export", model_dir, every=True)


def test_sharded_grpo_resumes_from_last_and_exports(setting, tmp_path):
    root, _, warm = setting
    config = sharded_config("grpo", tmp_path, warm, root, sft_export=str(root / "sft"),
                            export_dir=str(tmp_path / "final"))
    cli(config, "--trainer.max_steps", "2")
    assert_distributed_checkpoint(tmp_path, 2)
    cli(config, "--trainer.max_steps", "3", "--ckpt_path", "last")
    assert_distributed_checkpoint(tmp_path, 3)
    assert steps_logged(tmp_path, "train/reward_mean") == [0, 1, 2]
    # The best-FVE export (written at the start, maybe later) and the final one, both gathered on rank 0.
    assert "stage: grpo" in (tmp_path / "export" / "av" / "nla_meta.yaml").read_text()
    load_pair(tmp_path / "export" / "av", tmp_path / "export" / "ar")
    assert_trained_export(tmp_path / "final", warm, every=False)


def bf16_config(kind: str, run: Path, model_dir: Path, root: Path, **model) -> Path:
    """``sharded_config`` computing in bf16 (param_dtype) with data.source.target.dtype bfloat16, AV LR 1e-5."""
    path = sharded_config(kind, run, model_dir, root, **model)
    config = yaml.safe_load(path.read_text())
    config["trainer"]["strategy"]["init_args"] = {"param_dtype": "bfloat16"}
    config["data"]["init_args"]["source"]["target"]["dtype"] = "bfloat16"
    path.write_text(yaml.safe_dump(config))
    return path


def changed_fraction(av_dir: Path, start_dir: Path) -> dict[str, float]:
    exported, start = load_file(str(av_dir / "model.safetensors")), load_file(str(start_dir / "model.safetensors"))
    assert all(value.dtype == torch.float32 for value in exported.values()), "float32 sharded masters"
    fractions = {}
    for kind, match in (("linear", lambda k: k.endswith("proj.weight") or k == "lm_head.weight"),
                        ("norm", lambda k: "norm" in k)):
        keys = [k for k in start if match(k)]
        fractions[kind] = sum(int((exported[k] != start[k]).sum()) for k in keys) / sum(start[k].numel() for k in keys)
    return fractions


def test_sharded_bf16_sft_step_in_warmup_moves_every_verbalizer_weight(setting, tmp_path):
    root, model_dir, _ = setting
    config = bf16_config("sft", tmp_path, model_dir, root, training={"verbalizer_lr": 1e-5, "reconstructor_lr": 1e-5},
                         warmup_steps=50, sample_every_n_steps=0)
    cli(config, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0")
    fractions = changed_fraction(tmp_path / "export" / "av", model_dir)
    assert fractions["linear"] > 0.99 and fractions["norm"] > 0.99, fractions


def test_sharded_bf16_grpo_step_moves_every_verbalizer_weight(setting, tmp_path):
    root, _, warm = setting
    config = bf16_config("grpo", tmp_path, warm, root, sft_export=str(root / "sft"),
                         export_dir=str(tmp_path / "final"), memory_probe=False)
    cli(config, "--trainer.max_steps", "1")
    fractions = changed_fraction(tmp_path / "final" / "av", warm)
    assert fractions["linear"] > 0.99 and fractions["norm"] > 0.99, fractions
