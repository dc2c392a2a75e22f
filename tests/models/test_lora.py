"""LoRA: only adapters train, the GRPO reference is a frozen adapter copy on the shared base, and both
export layouts (merged, adapter-only) load back to the same model; SFT and GRPO run with it end to end."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

from nla.models import lora
from nla.models.pair import Pair
from nla.models.pair_export import export_pair
from nla.models.pair_loading import load_pair
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.reconstructor import Reconstructor
from nla.modules.grpo.reference import AdapterReference
from nla.modules.grpo.rollout import collect, policy_logprobs
from nla.modules.grpo.settings import RolloutArgs
from nla.models.verbalizer import Verbalizer
from nla.core.prompts import PromptArgs, Prompts
from tests.fixtures.pairs import WARM_LAYER as LAYER, WARM_SCALE as SCALE, rl_batch
from tests.fixtures.paths import ROOT

pytest.importorskip("peft")

ARGS = lora.LoraArgs(r=4, alpha=8.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def trained_adapter(model: torch.nn.Module, seed: int) -> None:
    """Give the ``default`` adapter values an SFT run might have left (a fresh one is the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_" in name and f".{lora.TRAINED}." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


@pytest.fixture
def pair(tiny_model_dir):
    model_dir = tiny_model_dir("llama")
    args = ModelArgs(str(model_dir), dtype="float32")
    tokenizer = load_tokenizer(args)
    prompts = Prompts.build(tokenizer, PromptArgs())
    verbalizer = Verbalizer(lora.wrap(load_causal_lm(args), ARGS, "model.training.verbalizer_lora").eval(), tokenizer,
                            prompts.marker, SCALE)
    reconstructor = Reconstructor.from_target(args, LAYER).eval()
    lora.wrap(reconstructor.model, ARGS, "model.training.reconstructor_lora")
    trained_adapter(verbalizer.model, 1)
    trained_adapter(reconstructor.model, 2)
    return Pair(verbalizer, reconstructor, prompts, LAYER, base_model=str(model_dir))


def test_only_the_adapters_and_the_ar_head_train(pair):
    verbalizer, reconstructor = pair.verbalizer, pair.reconstructor
    trainable = [name for name, p in verbalizer.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    # 7 projections x 4 blocks, an A and a B each.
    assert len(trainable) == 7 * 4 * 2
    ar_trainable = {name for name, p in reconstructor.named_parameters() if p.requires_grad}
    assert "head.weight" in ar_trainable
    assert all(".lora_" in n for n in ar_trainable - {"head.weight"})


def rollout(pair, reference):
    args = RolloutArgs(samples_per_prompt=2, micro_batch_size=6, max_new_tokens=8)
    return collect(pair, reference, rl_batch(pair.prompts), args, 5)


def test_adapter_reference_is_the_starting_policy_on_the_same_base(pair):
    verbalizer = pair.verbalizer
    before = sum(p.numel() for p in verbalizer.parameters())
    adapter = sum(p.numel() for n, p in verbalizer.named_parameters() if ".lora_" in n)
    reference = AdapterReference(verbalizer)
    # One more adapter, no second base model.
    assert sum(p.numel() for p in verbalizer.parameters()) == before + adapter
    assert adapter < 0.25 * before
    trainable = [n for n, p in verbalizer.named_parameters() if p.requires_grad]
    assert len(trainable) == 7 * 4 * 2 and all(".default." in n for n in trainable)

    first = rollout(pair, reference)
    mask = first.mask
    assert torch.equal(first.ref_logprobs[mask], first.old_logprobs[mask])

    trained_adapter(verbalizer.model, 3)  # the policy's adapter moves, as an optimizer step would move it
    moved, _ = policy_logprobs(verbalizer, first, micro=6)
    assert not torch.allclose(moved[mask], first.old_logprobs[mask])
    assert torch.equal(reference.logprobs(first, micro=6)[mask], first.ref_logprobs[mask])
    # Switching back leaves the policy's adapter active and the only trainable one.
    assert torch.equal(policy_logprobs(verbalizer, first, micro=6)[0][mask], moved[mask])
    assert [n for n, p in verbalizer.named_parameters() if p.requires_grad] == trainable


def av_logits(verbalizer, prompts):
    ids = torch.tensor([prompts.av_prompt_ids] * 2)
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return verbalizer(ids, torch.ones_like(ids), vectors).logits


def ar_outputs(reconstructor, prompts):
    ids = torch.tensor([prompts.ar_ids("rivers and stones"), prompts.ar_ids("sailors at night")])
    with torch.no_grad():
        return reconstructor(ids, torch.ones_like(ids))


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "adapter"])
def test_export_round_trip_gives_the_same_model(pair, tmp_path, merge):
    verbalizer, reconstructor, prompts = pair.verbalizer, pair.reconstructor, pair.prompts
    export_pair(tmp_path, pair, stage="sft", training={}, merge_adapters=merge)
    av, ar = tmp_path / "av", tmp_path / "ar"
    assert (av / "config.json").is_file() == merge
    assert (av / lora.ADAPTER_CONFIG).is_file() == (not merge)
    ar_keys = load_file(str(ar / "model.safetensors")).keys()
    assert not any("lora_" in k or "base_layer" in k for k in ar_keys), "the AR is always merged"
    if merge:
        keys = load_file(str(av / "model.safetensors")).keys()
        assert "model.layers.0.self_attn.q_proj.weight" in keys
        assert not any("lora_" in k or "base_layer" in k for k in keys)

    loaded = load_pair(av, ar, dtype="float32")
    loaded_av, loaded_ar, loaded_prompts = loaded.verbalizer, loaded.reconstructor, loaded.prompts
    assert loaded_prompts.av_prompt_ids == prompts.av_prompt_ids
    expected, got = av_logits(verbalizer, prompts), av_logits(loaded_av, loaded_prompts)
    if merge:
        # W x + B (A x) against (W + B A) x: float32 reassociation, nothing more.
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(got, expected)
    torch.testing.assert_close(ar_outputs(loaded_ar, prompts), ar_outputs(reconstructor, prompts),
                               rtol=1e-5, atol=1e-5)


def test_adapter_export_loads_in_plain_peft(pair, tmp_path):
    from peft import PeftModel

    verbalizer, prompts = pair.verbalizer, pair.prompts
    export_pair(tmp_path, Pair(verbalizer, None, prompts, LAYER, base_model=pair.base_model), stage="sft",
                training={}, merge_adapters=False)
    base = load_causal_lm(ModelArgs(pair.base_model, dtype="float32"))
    plain = PeftModel.from_pretrained(base, str(tmp_path / "av")).eval()
    ids = torch.tensor([prompts.ar_ids("rivers and stones")])
    verbalizer.injector.unload()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, verbalizer.model(input_ids=ids).logits)


@pytest.mark.parametrize("damage", ["missing", "unexpected"])
def test_an_adapter_file_must_hold_exactly_the_adapters_tensors(pair, tmp_path, damage):
    """A tensor missing from the adapter file would leave its layer at the fresh adapter's values (the
    identity) without a word; one the base model has no place for would be dropped. Either is one line
    naming the file and the key."""
    from safetensors.torch import save_file

    from nla.core.errors import ConfigError

    export_pair(tmp_path, pair, stage="sft", training={}, merge_adapters=False)
    path = tmp_path / "av" / lora.ADAPTER_WEIGHTS
    saved = load_file(str(path))
    key = sorted(saved)[len(saved) // 2]
    if damage == "missing":
        del saved[key]
    else:
        key = key.replace(".layers.", ".extra_layers.")
        saved[key] = torch.zeros(1)
    save_file(saved, str(path))
    with pytest.raises(ConfigError) as refused:
        load_pair(tmp_path / "av", tmp_path / "ar", dtype="float32")
    message = str(refused.value)
    assert str(path) in message and key in message and "\n" not in message


# ---- end to end through the CLI -----------------------------------------------------------------

CONFIGS = ROOT / "configs"


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory):
    """Three SFT steps with LoRA on both models and 8-bit AdamW; the AV exported as an adapter."""
    from nla.commands.cli import main
    from tests.fixtures.commands import SFT_SOURCE, source_overrides
    from tests.fixtures.corpus import write_corpus

    root = tmp_path_factory.mktemp("lora-sft")
    write_corpus(root)
    model_dir = tiny_model_dir("llama")
    main(["fit", "--config", str(CONFIGS / "tiny" / "sft.yaml"), *source_overrides(SFT_SOURCE),
          "--data.init_args.source.target.name_or_path", str(model_dir),
          "--data.init_args.source.corpus.path", str(root / "docs.jsonl"),
          "--data.init_args.source.corpus.max_length", "64",
          "--data.init_args.source.cache.directory", str(root / "cache"),
          "--data.init_args.source.cache.layer", str(LAYER),
          "--trainer.default_root_dir", str(root / "run"),
          "--trainer.logger.init_args.save_dir", str(root / "run"),
          "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
          "--model.init_args.sample_every_n_steps", "0",
          "--model.init_args.training.optimizer", "adamw8bit",
          "--model.init_args.training.verbalizer_lora", '{"r": 4, "alpha": 8, "merge_on_export": false}',
          "--model.init_args.training.reconstructor_lora", '{"r": 4, "alpha": 8}',
          "--model.init_args.export_dir", str(root / "export")])
    return root, model_dir


def test_sft_with_lora_trains_only_adapters_and_exports_the_adapter(sft_run):
    root, model_dir = sft_run
    (path,) = (root / "run").rglob("last.ckpt")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    base = load_causal_lm(ModelArgs(str(model_dir), dtype="float32")).state_dict()
    for key, value in base.items():
        key = f"verbalizer.model.{key}"
        moved = key.removesuffix(".weight") + ".base_layer.weight"
        assert torch.equal(state[moved if moved in state else key], value), key
    lora_b = [k for k in state if k.startswith("verbalizer.") and ".lora_B." in k]
    assert lora_b and all(state[k].abs().sum() > 0 for k in lora_b), "B starts at zero; SFT moved it"
    assert any(".lora_B." in k and state[k].abs().sum() > 0 for k in state if k.startswith("reconstructor."))
    assert not torch.equal(state["reconstructor.head.weight"], torch.eye(32))
    optimizer = checkpoint["optimizer_states"][0]
    # bitsandbytes' own state layout, for exactly the trainable tensors: every adapter A and B, and the AR head.
    assert all("__bnb_optimizer_quant_state__" in entry for entry in optimizer["state"].values())
    trainable = sum(1 for k in state if ".lora_" in k) + 1
    assert sum(len(group["params"]) for group in optimizer["param_groups"]) == trainable
    assert lora.is_adapter_dir(root / "export" / "av")
    assert (root / "export" / "ar" / "config.json").is_file()


def test_grpo_continues_the_sft_adapter_against_a_frozen_copy_of_it(sft_run):
    from nla.commands.cli import main
    from tests.fixtures.commands import source_overrides
    from tests.fixtures.corpus import write_corpus

    root, model_dir = sft_run
    run = root / "grpo"
    run.mkdir()
    write_corpus(run)
    main(["fit", "--config", str(CONFIGS / "tiny" / "grpo.yaml"),
          "--data.init_args.source.target.name_or_path", str(model_dir),
          "--data.init_args.source.corpus.path", str(run / "docs.jsonl"),
          "--data.init_args.source.cache.directory", str(run / "cache"), *source_overrides(),
          "--model.init_args.sft_export", str(root / "export"),
          "--model.init_args.best_export_dir", str(run / "export"),
          "--model.init_args.memory_probe", "false",
          "--model.init_args.training.verbalizer_lora", '{"merge_on_export": false}',
          # The random tiny AV writes no explanation, so every advantage is 0 and the default k2 penalty
          # has no gradient at the reference; k1's gradient noise still moves the adapter that trains.
          "--model.init_args.rollout.kl_estimator", "k1",
          "--trainer.max_steps", "2", "--trainer.default_root_dir", str(run),
          "--trainer.logger.init_args.save_dir", str(run)])
    (path,) = run.rglob("last.ckpt")
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    sft = load_file(str(root / "export" / "av" / lora.ADAPTER_WEIGHTS))
    default = {k: v for k, v in state.items() if k.startswith("verbalizer.") and ".default." in k}
    assert len(default) == len(sft)
    moved = 0
    for key, value in default.items():
        saved = sft[lora._SAVED_PREFIX + key.removeprefix("verbalizer.model.").replace(".default.", ".")]
        assert torch.equal(state[key.replace(".default.", ".reference.")], saved), "the reference stays the SFT adapter"
        moved += not torch.equal(value, saved)
    assert moved > 0, "RL moved the adapter it continued"
    assert not any("base_layer" not in k and "lora_" not in k and "q_proj.weight" in k
                   for k in state if k.startswith("verbalizer.")), "no second base model in the checkpoint"
    assert lora.is_adapter_dir(run / "export" / "av")
