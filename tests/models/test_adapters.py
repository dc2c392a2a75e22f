import math

import pytest
import torch
from transformers import AutoConfig, GPTNeoXConfig

from nla.core.errors import ConfigError
from nla.models import adapters
from nla.models.loading import ModelArgs, load_causal_lm


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text", "gemma3"])
def test_gemma_embedding_module_applies_sqrt_d(family, tiny_model_dir):
    model = load_causal_lm(ModelArgs(str(tiny_model_dir(family))))
    d = adapters.hidden_size(model.config)
    assert adapters.embedding_scale(model.config) == pytest.approx(math.sqrt(d))
    embeddings = adapters.input_embeddings(model)
    ids = torch.tensor([[5, 9, 77]])
    with torch.no_grad():
        # The module output carries the sqrt(d) scale; a raw weight lookup is sqrt(d) times smaller.
        torch.testing.assert_close(embeddings(ids), embeddings.weight[ids] * math.sqrt(d))


def test_non_gemma_embedding_scale_is_one(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir("llama"))
    assert adapters.embedding_scale(config) == 1.0


def test_multimodal_gemma3_is_unwrapped_to_its_text_model(tiny_model_dir):
    model = load_causal_lm(ModelArgs(str(tiny_model_dir("gemma3"))), keep_layers=2)
    assert type(adapters.decoder(model)).__name__ == "Gemma3TextModel"
    assert len(adapters.decoder_layers(model)) == 2
    assert model.config.text_config.num_hidden_layers == 2
    assert len(model.config.text_config.layer_types) == 2


def test_truncation_slices_per_layer_lists(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir("gemma2"))
    original = list(config.layer_types)
    cut = adapters.truncated_config(config, 3)
    assert cut.layer_types == original[:3]
    assert cut.num_hidden_layers == 3
    assert config.num_hidden_layers == 4, "the caller's config is left untouched"


def test_gpt2_uses_its_own_keys(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir("gpt2"))
    assert adapters.num_layers(config) == 4 and adapters.hidden_size(config) == 32
    assert adapters.truncated_config(config, 2).n_layer == 2


def test_unsupported_architecture_lists_supported_and_the_file_to_extend():
    with pytest.raises(ConfigError) as error:
        adapters.family_of(GPTNeoXConfig())
    message = str(error.value)
    assert "gpt_neox" in message and "llama" in message and "nla/modules/adapters.py" in message
    assert "\n" not in message


def test_default_layer_is_two_thirds_of_depth():
    depths = {48: 32, 62: 41, 80: 53, 30: 20}
    for depth, expected in depths.items():
        config = AutoConfig.for_model("llama", num_hidden_layers=depth)
        assert adapters.default_layer(config) == expected
