"""Model configs without weights, and exact parameter counts on the meta device."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from nla.commands.plan.architectures import ARCHITECTURES, model_config, table_config
from nla.commands.plan.shapes import model_shapes
from nla.core.errors import ConfigError

# Parameter counts the model cards publish (billions, rounded as published).
PUBLISHED = {"HuggingFaceTB/SmolLM2-135M-Instruct": 0.135, "Qwen/Qwen2.5-0.5B-Instruct": 0.49,
             "Qwen/Qwen2.5-7B-Instruct": 7.61, "Qwen/Qwen3-8B": 8.2, "meta-llama/Llama-3.1-8B-Instruct": 8.03,
             "meta-llama/Llama-3.3-70B-Instruct": 70.6, "google/gemma-3-12b-it": 12.2, "google/gemma-3-27b-it": 27.4}


@pytest.mark.parametrize("hub_id", sorted(ARCHITECTURES))
def test_the_table_reproduces_the_published_parameter_counts(hub_id):
    shapes = model_shapes(table_config(hub_id), layer=-1)
    assert abs(shapes.av.params / 1e9 - PUBLISHED[hub_id]) / PUBLISHED[hub_id] < 0.01
    assert shapes.ar.params < shapes.av.params and shapes.ar.layers == shapes.layer + 1


def test_offline_a_hub_id_falls_back_to_the_table_and_packaged_names_resolve(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config, source = model_config("Qwen/Qwen2.5-7B-Instruct")
    assert source == "nla's table" and config.hidden_size == 3584
    assert model_config("packaged:smollm2")[0].num_hidden_layers == 30
    with pytest.raises(ConfigError, match="nla's table of architectures"):
        model_config("someone/unknown-model")


def test_a_local_directory_is_read_and_counted_exactly(tiny_model_dir):
    directory = tiny_model_dir("qwen2")
    config, source = model_config(str(directory))
    assert source.endswith("config.json")
    model = AutoModelForCausalLM.from_pretrained(directory)
    shapes = model_shapes(config, layer=1)
    assert shapes.av.params == sum(p.numel() for p in model.parameters())
    # The AR: embeddings, two blocks and the d x d head; no final norm's use, no LM head gradient.
    blocks = sum(p.numel() for p in model.model.layers[:2].parameters())
    embeddings = model.model.embed_tokens.weight.numel()
    assert shapes.ar.grad_params == embeddings + blocks + model.model.norm.weight.numel() + 32 * 32
