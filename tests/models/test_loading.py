import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from nla.core.errors import ConfigError, NLAError
from nla.models import adapters
from nla.models.loading import (
    ModelArgs,
    load_causal_lm,
    load_config,
    materialize_gguf,
    resolve_attn_implementation,
    resolve_dtype,
)
from nla.models.packaged import smollm2_gguf


def test_auto_dtype_and_attention_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU defaults")
    assert resolve_dtype("auto") == torch.float32
    assert resolve_attn_implementation("auto") == "sdpa"
    assert resolve_attn_implementation("eager") == "eager"


def test_auto_attention_falls_back_to_eager_where_sdpa_is_missing(tiny_model_dir, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CPU defaults")
    # Which families lack sdpa changes between transformers releases (Gemma 2 has it in 5.17, not in
    # 5.24), so the class flag is set here rather than taken from the installed version.
    from transformers import Gemma2ForCausalLM

    monkeypatch.setattr(Gemma2ForCausalLM, "_supports_sdpa", False)
    gemma2 = load_config(ModelArgs(str(tiny_model_dir("gemma2"))))
    llama = load_config(ModelArgs(str(tiny_model_dir("llama"))))
    assert resolve_attn_implementation("auto", gemma2) == "eager"
    assert resolve_attn_implementation("auto", llama) == "sdpa"


def test_explicit_dtype_is_used(tiny_model_dir):
    model = load_causal_lm(ModelArgs(str(tiny_model_dir("qwen2")), dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="dtype: unknown dtype 'fp8'"):
        resolve_dtype("fp8")


def test_truncated_load_keeps_only_the_first_blocks(tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir("llama")))
    full, cut = load_causal_lm(args), load_causal_lm(args, keep_layers=2)
    assert len(adapters.decoder_layers(cut)) == 2
    for kept, original in zip(adapters.decoder_layers(cut), adapters.decoder_layers(full)):
        for a, b in zip(kept.parameters(), original.parameters()):
            assert torch.equal(a, b), "truncated blocks must carry the checkpoint's weights"


@pytest.mark.parametrize(
    "args, match",
    [
        (ModelArgs("/no/such/model"), "name_or_path: model directory '/no/such/model' does not exist"),
        (ModelArgs("/no/such/model.gguf"), "name_or_path: GGUF file '/no/such/model.gguf' does not exist"),
    ],
)
def test_missing_paths_are_one_line_errors(args, match):
    with pytest.raises(ConfigError, match=match) as error:
        load_config(args)
    assert "\n" not in str(error.value)


def test_missing_gguf_inside_a_directory(tiny_model_dir):
    with pytest.raises(ConfigError, match="gguf_file: GGUF file 'x.gguf' is not in"):
        load_config(ModelArgs(str(tiny_model_dir("llama")), gguf_file="x.gguf"))


def test_unreachable_hub_id_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NLAError, match="name_or_path: cannot load 'nobody/no-such-model'") as error:
        load_config(ModelArgs("nobody/no-such-model"))
    assert "\n" not in str(error.value)


def test_truncation_out_of_range(tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir("llama")))
    with pytest.raises(ConfigError, match="cannot keep 5 of 4 layers"):
        load_causal_lm(args, keep_layers=5)


def test_gguf_file_loads_through_the_plain_directory_cache(smollm2_dir):
    gguf = smollm2_gguf()
    assert materialize_gguf(str(gguf.parent), gguf.name) == smollm2_dir, "second conversion is a cache hit"
    from_gguf = load_causal_lm(ModelArgs(str(gguf)), keep_layers=2).eval()
    from_dir = load_causal_lm(ModelArgs(str(smollm2_dir)), keep_layers=2).eval()
    ids = torch.tensor([[1, 504, 3458, 2114]])
    with torch.no_grad():
        torch.testing.assert_close(from_gguf(ids).logits, from_dir(ids).logits, rtol=0, atol=0)
    assert adapters.num_layers(load_config(ModelArgs(str(gguf)))) == 30


def test_packaged_name_resolves_to_the_installed_gguf(smollm2_dir):
    config = load_config(ModelArgs("packaged:smollm2"))
    assert config.model_type == "llama" and adapters.hidden_size(config) == 576
    with pytest.raises(NLAError, match="unknown packaged model 'gpt5'; choose from smollm2"):
        load_config(ModelArgs("packaged:gpt5"))


def copy_checkpoint(source, target, edit):
    """``source`` copied to ``target`` with its safetensors weights passed through ``edit``."""
    shutil.copytree(source, target)
    weights = load_file(str(target / "model.safetensors"))
    save_file(edit(weights), str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def test_a_checkpoint_missing_a_blocks_weights_is_refused(tiny_model_dir, tmp_path):
    broken = copy_checkpoint(tiny_model_dir("llama"), tmp_path / "broken",
                             lambda weights: {k: v for k, v in weights.items() if ".layers.1." not in k})
    with pytest.raises(ConfigError, match=r"name_or_path: .* lacks 9 weights the model needs \(first: "
                                          r"model\.layers\.1\.input_layernorm\.weight,") as error:
        load_causal_lm(ModelArgs(str(broken)))
    assert "\n" not in str(error.value)
    # Truncated above the gap, nothing the model needs is missing.
    assert len(adapters.decoder_layers(load_causal_lm(ModelArgs(str(broken)), keep_layers=1))) == 1


def test_unused_weights_are_reported_except_the_truncated_blocks(tiny_model_dir, tmp_path, caplog):
    args = ModelArgs(str(tiny_model_dir("llama")))
    with caplog.at_level(logging.WARNING, logger="nla.models.loading"):
        load_causal_lm(args, keep_layers=2)
    assert not caplog.records
    extra = copy_checkpoint(tiny_model_dir("llama"), tmp_path / "extra",
                            lambda weights: {**weights, "model.adapter.weight": torch.zeros(2)})
    with caplog.at_level(logging.WARNING, logger="nla.models.loading"):
        load_causal_lm(ModelArgs(str(extra)))
    assert "holds 1 weights this model does not use (first: model.adapter.weight)" in caplog.text
