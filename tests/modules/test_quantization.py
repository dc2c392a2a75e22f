"""Frozen models in 8 or 4 bits (bitsandbytes, which runs LLM.int8 and NF4 on CPU): close to float32,
usable for caching and as the GRPO reference, refused for a model that trains."""

from __future__ import annotations

import pytest
import torch

from nla.data.activation_cache import ActivationCache
from nla.data.cache_writer import build_cache
from nla.core.errors import ConfigError
from nla.models.pair import Pair
from nla.models.pair_export import export_pair
from nla.models.loading import ModelArgs, check_trainable, load_causal_lm, load_tokenizer
from nla.models.reconstructor import Reconstructor
from nla.modules.grpo.reference import FrozenModel, build_reference
from nla.modules.grpo.rollout import collect
from nla.modules.grpo.settings import RolloutArgs
from nla.models.verbalizer import Verbalizer
from nla.core.prompts import PromptArgs, Prompts
from tests.fixtures.corpus import cache_args
from tests.fixtures.tiny import TINY, build_tokenizer
from tests.fixtures.pairs import WARM_LAYER as LAYER, WARM_SCALE as SCALE

bnb = pytest.importorskip("bitsandbytes")

LINEAR = {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory):
    """The tiny llama at d=64: bitsandbytes' CPU NF4 kernel packs 64-weight blocks along each input
    dimension, and the shared tiny models (d=32) are narrower than one block."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    directory = tmp_path_factory.mktemp("wide-llama")
    tokenizer = build_tokenizer()
    config = LlamaConfig(**dict(TINY, hidden_size=64, intermediate_size=128, head_dim=16), num_hidden_layers=4,
                         vocab_size=len(tokenizer), max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.mark.parametrize("kind", ["8bit", "4bit"])
def test_quantized_logits_stay_close_to_float32(wide_dir, kind):
    directory = str(wide_dir)
    exact = load_causal_lm(ModelArgs(directory, dtype="float32"))
    quantized = load_causal_lm(ModelArgs(directory, dtype="float32", quantization=kind))
    assert type(quantized.model.layers[0].self_attn.q_proj).__name__ == LINEAR[kind]
    assert quantized.get_memory_footprint() < exact.get_memory_footprint()
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = exact(input_ids=ids).logits, quantized(input_ids=ids).logits
    if kind == "8bit":
        # LLM.int8 rounds each weight row to 127 levels of its absmax (<= 0.4% of the row's largest
        # weight per weight) and casts activations to float16; compounded over four blocks that is a
        # few percent of the largest logit at most, and the logits keep their direction.
        assert float((got - want).abs().max()) <= 0.05 * float(want.abs().max())
        assert cosine(got, want) >= 0.999
    else:
        # NF4 keeps 16 levels per 64-weight block (up to ~7% of the block's absmax per weight), and
        # random tiny weights have no outliers to make that cheaper: the direction is what is kept.
        assert cosine(got, want) >= 0.95


def test_quantization_is_refused_for_a_trained_model(tiny_model_dir):
    with pytest.raises(ConfigError, match="^quantization: is '8bit' but this model trains"):
        check_trainable(ModelArgs(str(tiny_model_dir("llama")), quantization="8bit"))
    check_trainable(ModelArgs(str(tiny_model_dir("llama"))))


def test_sft_names_the_data_field(tiny_model_dir, tmp_path):
    from nla.modules.sft import SFTModule

    class Data:
        train_splits = ("av_sft", "ar_sft")
        target_args = ModelArgs(str(tiny_model_dir("llama")), quantization="4bit")
        cache = type("Cache", (), {"meta": {"model": {"name_or_path": target_args.name_or_path}},
                                   "directory": tmp_path, "split_indices": lambda self, split: []})()
        prompts, layer, teacher_args, heldout_variance = None, LAYER, type("T", (), {"provider": "x", "model": None}), None
        base_fingerprint = None
        corpus_args = type("C", (), {"path": "docs.jsonl"})

    with pytest.raises(ConfigError, match="^data.source.target.quantization: is '4bit' but this model trains"):
        SFTModule().build(Data())


def test_unknown_quantization_names_the_field(tiny_model_dir):
    with pytest.raises(ConfigError, match="^quantization: must be one of none, 8bit, 4bit"):
        load_causal_lm(ModelArgs(str(tiny_model_dir("llama")), quantization="3bit"))


@pytest.mark.parametrize("kind", ["8bit", "4bit"])
def test_caching_with_a_quantized_target_matches_float32(wide_dir, tmp_path, kind):
    model_dir = wide_dir
    model, corpus, cache = cache_args(tmp_path, model_dir, directory=str(tmp_path / "exact"))
    exact = ActivationCache(build_cache(model, corpus, cache))
    _, _, other = cache_args(tmp_path, model_dir, directory=str(tmp_path / kind))
    quantized = ActivationCache(build_cache(ModelArgs(str(model_dir), quantization=kind), corpus, other))
    assert len(exact) == len(quantized) > 0
    indices = list(range(len(exact)))
    a, b = exact.vectors(indices), quantized.vectors(indices)
    cosines = torch.nn.functional.cosine_similarity(a, b, dim=1)
    # Layer 1 of 4: two quantized blocks between the embedding and the read-out, and the residual
    # carries the exact embedding past both.
    assert float(cosines.min()) >= (0.999 if kind == "8bit" else 0.95)


@pytest.mark.parametrize("kind", ["8bit", "4bit"])
def test_quantized_reference_scores_like_the_policy(wide_dir, tmp_path, kind):
    model_dir = wide_dir
    args = ModelArgs(str(model_dir), dtype="float32")
    tokenizer = load_tokenizer(args)
    prompts = Prompts.build(tokenizer, PromptArgs())
    verbalizer = Verbalizer(load_causal_lm(args).eval(), tokenizer, prompts.marker, SCALE)
    reconstructor = Reconstructor.from_target(args, LAYER)
    pair = Pair(verbalizer, reconstructor, prompts, LAYER, base_model=str(model_dir))
    export_pair(tmp_path, pair, stage="sft", training={})
    reference = build_reference(verbalizer, str(tmp_path), kind, "same", torch.float32)
    assert isinstance(reference, FrozenModel)
    assert type(reference.verbalizer.model.model.layers[0].mlp.up_proj).__name__ == LINEAR[kind]
    assert not any(p.requires_grad for p in reference.verbalizer.parameters())
    ids = torch.tensor([prompts.av_prompt_ids] * 3)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "vector": torch.randn(3, 64, generator=torch.Generator().manual_seed(0))}
    rollout = collect(pair, reference, batch, RolloutArgs(samples_per_prompt=2, micro_batch_size=6, max_new_tokens=8), 5)
    mask = rollout.mask
    gap = (rollout.ref_logprobs[mask] - rollout.old_logprobs[mask]).abs()
    # The random tiny model spreads its mass over ~250 tokens (log-probs near -5.5); the quantized
    # reference must agree per token to well under one nat, so the KL it feeds is a small correction.
    assert float(gap.max()) < (0.02 if kind == "8bit" else 0.25)
    assert not torch.equal(rollout.ref_logprobs[mask], rollout.old_logprobs[mask]), "really quantized"


def test_quantized_reference_needs_the_sft_export(tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir("llama")), dtype="float32")
    tokenizer = load_tokenizer(args)
    prompts = Prompts.build(tokenizer, PromptArgs())
    verbalizer = Verbalizer(load_causal_lm(args), tokenizer, prompts.marker, SCALE)
    with pytest.raises(ConfigError, match="^model.reference_quantization: loads the reference from model.sft_export"):
        build_reference(verbalizer, None, "8bit", "same", torch.float32)
    with pytest.raises(ConfigError, match="^model.reference_quantization: must be one of"):
        build_reference(verbalizer, None, "2bit", "same", torch.float32)
