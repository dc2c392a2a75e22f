import pytest
import torch
from torch import nn

from nla.core.errors import ConfigError
from nla.models import adapters
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.residual import read_residual
from tests.fixtures.tiny import FAMILIES, pad_texts

TEXTS = [
    "The reconstructor reads an explanation and predicts the activation vector at the last token.",
    "A teacher writes numbers on the board: one, two, three.",
]


def all_real_tokens(mask):
    rows, cols = mask.nonzero(as_tuple=True)
    return rows, cols


def full_hidden_states(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("family", FAMILIES)
def test_early_exit_equals_hidden_states_k_plus_1(family, tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir(family)))
    model, tokenizer = load_causal_lm(args).eval(), load_tokenizer(args)
    ids, mask = pad_texts(tokenizer, TEXTS)
    hidden = full_hidden_states(model, ids, mask)
    rows, cols = all_real_tokens(mask)
    # The last block is excluded: HF applies the final norm to hidden_states[-1], while the residual
    # after block K is always the raw block output.
    for layer in range(adapters.num_layers(model.config) - 1):
        residual = read_residual(model, layer, ids, mask, rows, cols)
        torch.testing.assert_close(residual, hidden[layer + 1][rows, cols], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_truncated_model_gives_the_same_residual(family, tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir(family)))
    full = load_causal_lm(args).eval()
    tokenizer = load_tokenizer(args)
    ids, mask = pad_texts(tokenizer, TEXTS)
    rows, cols = all_real_tokens(mask)
    layer = 1
    truncated = load_causal_lm(args, keep_layers=layer + 1).eval()
    assert len(adapters.decoder_layers(truncated)) == layer + 1
    adapters.replace_final_norm(truncated, nn.Identity())
    with torch.no_grad():
        out = adapters.decoder(truncated)(input_ids=ids, attention_mask=mask, use_cache=False)
    expected = read_residual(full, layer, ids, mask, rows, cols)
    torch.testing.assert_close(out.last_hidden_state[rows, cols], expected, rtol=0, atol=1e-5)


def test_early_exit_never_runs_the_blocks_above(tiny_model_dir):
    model = load_causal_lm(ModelArgs(str(tiny_model_dir("llama")))).eval()
    ran = []
    for index, block in enumerate(adapters.decoder_layers(model)):
        block.register_forward_hook(lambda *_, index=index: ran.append(index))
    ids = torch.tensor([[1, 40, 41, 42]])
    read_residual(model, 1, ids, torch.ones_like(ids), torch.tensor([0]), torch.tensor([3]))
    assert ran == [0, 1]


def test_left_padding_is_refused(tiny_model_dir):
    model = load_causal_lm(ModelArgs(str(tiny_model_dir("llama")))).eval()
    ids = torch.tensor([[0, 1, 40], [1, 41, 42]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="right-padded"):
        read_residual(model, 0, ids, mask, torch.tensor([0]), torch.tensor([2]))


def test_layer_out_of_range_is_a_config_error(tiny_model_dir):
    model = load_causal_lm(ModelArgs(str(tiny_model_dir("llama"))))
    ids = torch.tensor([[1, 40]])
    for layer in (-1, adapters.num_layers(model.config)):
        with pytest.raises(ConfigError, match="model.layer: layer .* out of range .* use 0 to 3"):
            read_residual(model, layer, ids, torch.ones_like(ids), torch.tensor([0]), torch.tensor([1]))


@pytest.mark.parametrize("layer", [6, 20])
def test_smollm2_early_exit_and_truncation(layer, smollm2_dir):
    args = ModelArgs(str(smollm2_dir))
    model, tokenizer = load_causal_lm(args).eval(), load_tokenizer(args)
    tokenizer.padding_side = "right"
    ids, mask = pad_texts(tokenizer, TEXTS)
    rows, cols = all_real_tokens(mask)
    hidden = full_hidden_states(model, ids, mask)
    residual = read_residual(model, layer, ids, mask, rows, cols)
    torch.testing.assert_close(residual, hidden[layer + 1][rows, cols], rtol=0, atol=1e-4)

    truncated = load_causal_lm(args, keep_layers=layer + 1).eval()
    adapters.replace_final_norm(truncated, nn.Identity())
    with torch.no_grad():
        out = adapters.decoder(truncated)(input_ids=ids, attention_mask=mask, use_cache=False)
    torch.testing.assert_close(out.last_hidden_state[rows, cols], residual, rtol=0, atol=1e-4)
