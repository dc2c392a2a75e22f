import math

import pytest
import torch
import yaml
from safetensors.torch import save_file

from nla.core.errors import ConfigError, NLAError
from nla.models.sidecar import SidecarExtraction, Sidecar, PromptTemplates, SidecarTokens, read_sidecar
from nla.models import adapters
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.reconstructor import Reconstructor, last_real_token
from nla.models.residual import read_residual
from tests.fixtures.tiny import FAMILIES, pad_texts

TEXTS = [
    "Summary of the following text: <text>the sailor counts the waves</text> <summary>",
    "A teacher writes numbers on the board: one, two, three, four, five, six, seven.",
    "Rivers bend.",
]
LAYER = 2


def residual_at_last_token(args, layer, tokenizer, texts):
    full = load_causal_lm(args).eval()
    ids, mask = pad_texts(tokenizer, texts)
    rows = torch.arange(len(texts))
    return read_residual(full, layer, ids, mask, rows, mask.sum(dim=1) - 1)


def ar_meta(layer: int, d: int) -> Sidecar:
    return Sidecar(
        role="ar",
        d_model=d,
        extraction_layer_index=layer,
        extraction=SidecarExtraction(injection_scale=None, mse_scale=math.sqrt(d)),
        tokens=SidecarTokens("\u321c", 300, 301, 302, [7, 8]),
        prompt_templates=PromptTemplates(av="Vector: <concept>{injection_char}</concept>", ar="<text>{x}</text>"),
        stage="sft",
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_head_returns_the_layer_k_residual(family, tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir(family)))
    tokenizer = load_tokenizer(args)
    ar = Reconstructor.from_target(args, LAYER).eval()
    assert len(adapters.decoder_layers(ar.model)) == LAYER + 1
    torch.testing.assert_close(ar.head.weight, torch.eye(32), rtol=0, atol=0)
    with torch.no_grad():
        pred = ar(*pad_texts(tokenizer, TEXTS))
    assert pred.dtype == torch.float32 and pred.shape == (len(TEXTS), 32)
    expected = residual_at_last_token(args, LAYER, tokenizer, TEXTS)
    torch.testing.assert_close(pred, expected, rtol=0, atol=1e-5)


def test_smollm2_layer_6_matches_its_residual(smollm2_dir):
    args = ModelArgs(str(smollm2_dir), dtype="float32")
    tokenizer = load_tokenizer(args)
    ar = Reconstructor.from_target(args, 6).eval()
    assert len(adapters.decoder_layers(ar.model)) == 7 and ar.d_model == 576
    text = ["Summary of the following text: <text>a lighthouse keeper at night</text> <summary>"]
    with torch.no_grad():
        pred = ar(*pad_texts(tokenizer, text))
    expected = residual_at_last_token(args, 6, tokenizer, text)
    torch.testing.assert_close(pred, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_and_right_padding_agree_with_single_rows(family, tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir(family)))
    tokenizer = load_tokenizer(args)
    ar = Reconstructor.from_target(args, LAYER).eval()
    with torch.no_grad():
        single = torch.cat([ar(*pad_texts(tokenizer, [text])) for text in TEXTS])
        right = ar(*pad_texts(tokenizer, TEXTS, "right"))
        left_ids, left_mask = pad_texts(tokenizer, TEXTS, "left")
        assert bool((left_mask[:, 0] == 0).any()), "the batch must actually be left-padded"
        left = ar(left_ids, left_mask)
    torch.testing.assert_close(right, single, rtol=0, atol=1e-5)
    torch.testing.assert_close(left, single, rtol=0, atol=1e-5)


def test_last_real_token_for_both_padding_sides():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_real_token(mask).tolist() == [2, 4, 4]
    with pytest.raises(ValueError, match="all-padding row"):
        last_real_token(torch.tensor([[0, 0]]))


def test_bf16_backbone_keeps_an_fp32_head_that_moves_at_small_lr(tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir("llama")), dtype="bfloat16")
    tokenizer = load_tokenizer(args)
    ar = Reconstructor.from_target(args, LAYER)
    assert adapters.decoder_layers(ar.model)[0].mlp.down_proj.weight.dtype == torch.bfloat16
    assert ar.head.weight.dtype == torch.float32
    ar.to(torch.bfloat16)
    assert ar.head.weight.dtype == torch.float32, "a whole-module cast must leave the head in fp32"

    ids, mask = pad_texts(tokenizer, TEXTS)
    targets = torch.randn(len(TEXTS), 32, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(ar.head.parameters(), lr=1e-4, weight_decay=0.0)
    bf16_diagonal = torch.ones(32, dtype=torch.bfloat16)
    for _ in range(3):
        before = ar.head.weight.detach().diagonal().clone()
        optimizer.zero_grad()
        ar.loss(ar(ids, mask), targets).backward()
        optimizer.step()
        # The same update, applied to a bf16 copy of the diagonal.
        bf16_diagonal = bf16_diagonal + (ar.head.weight.detach().diagonal() - before).bfloat16()
    moved = (ar.head.weight.detach().diagonal() - 1).abs()
    # Adam's first steps have size ~lr = 1e-4 per entry, so three steps move the diagonal by ~3e-4.
    assert float(moved.max()) > 1e-4 and int((moved > 0).sum()) == 32
    # Near 1 bf16 has 7 mantissa bits: neighbours are 1 - 2**-8 = 0.99609 and 1 + 2**-7 = 1.0078, so
    # 1 - 1e-4 and 1 + 1e-4 both round back to exactly 1.0 and a bf16 identity never moves.
    assert torch.equal(bf16_diagonal, torch.ones(32, dtype=torch.bfloat16))
    assert torch.tensor(1 + 1e-4).bfloat16().item() == 1.0 and torch.tensor(1 - 1e-4).bfloat16().item() == 1.0


def test_the_head_computes_in_fp32_under_bf16_autocast(tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir("llama")))
    ar = Reconstructor.from_target(args, LAYER).eval()
    with torch.no_grad():
        ar.head.weight.add_(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)) * 1e-3)
    seen = []
    ar.head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pred = ar(*pad_texts(load_tokenizer(args), TEXTS))
    # The blocks compute in bf16; the head multiplies their float32-cast output by its float32 weight.
    assert seen[0].dtype == torch.float32 and pred.dtype == torch.float32
    torch.testing.assert_close(pred, seen[0].double().matmul(ar.head.weight.double().T).float(), rtol=1e-6, atol=1e-6)


def test_training_on_a_fixed_batch_lowers_the_loss(tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir("llama")))
    tokenizer = load_tokenizer(args)
    torch.manual_seed(0)
    ar = Reconstructor.from_target(args, LAYER)
    ids, mask = pad_texts(tokenizer, TEXTS)
    targets = torch.randn(len(TEXTS), 32, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(ar.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = ar.loss(ar(ids, mask), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_save_then_load_gives_identical_predictions(tmp_path, tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir("llama")))
    tokenizer = load_tokenizer(args)
    ar = Reconstructor.from_target(args, LAYER).eval()
    with torch.no_grad():
        ar.head.weight.add_(0.01 * torch.randn(32, 32, generator=torch.Generator().manual_seed(2)))
    with pytest.raises(ConfigError, match=r"^meta: .*layer 1; this is the AR for layer 2"):
        ar.save_pretrained(tmp_path / "wrong", meta=ar_meta(1, 32))
    tokenizer.padding_side = "left"
    ar.save_pretrained(tmp_path / "ar", meta=ar_meta(LAYER, 32), tokenizer=tokenizer)
    assert tokenizer.padding_side == "left", "saving must not change the caller's tokenizer"

    names = {path.name for path in (tmp_path / "ar").iterdir()}
    assert {"config.json", "model.safetensors", "value_head.safetensors", "nla_meta.yaml"} <= names
    saved_tokenizer = load_tokenizer(ModelArgs(str(tmp_path / "ar")))
    assert saved_tokenizer.padding_side == "right"
    assert read_sidecar(tmp_path / "ar").extraction_layer_index == LAYER

    loaded = Reconstructor.from_pretrained(tmp_path / "ar").eval()
    assert loaded.layer == LAYER and adapters.num_layers(loaded.model.config) == LAYER + 1
    ids, mask = pad_texts(tokenizer, TEXTS, "right")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask), ar(ids, mask), rtol=0, atol=0)


def test_released_layout_loads_with_k_from_the_critic_section(tmp_path, tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir("llama")))
    tokenizer = load_tokenizer(args)
    released = tmp_path / "released"
    load_causal_lm(args, keep_layers=LAYER + 1).save_pretrained(released)
    tokenizer.save_pretrained(released)
    head = torch.randn(32, 32, generator=torch.Generator().manual_seed(3)).bfloat16()
    save_file({"weight": head}, str(released / "value_head.safetensors"))
    sidecar = {
        "kind": "nla_model",
        "role": "critic",
        "d_model": 32,
        "extraction": {"mse_scale": "sqrt_d_model"},
        "critic": {"num_hidden_layers": LAYER + 1, "value_head": "value_head.safetensors"},
        "tokens": {"injection_char": "\u321c", "injection_token_id": 300, "injection_left_neighbor_id": 301,
                   "injection_right_neighbor_id": 302, "critic_suffix_ids": [7]},
        "prompt_templates": {"critic": "<text>{x}</text>"},
    }
    (released / "nla_meta.yaml").write_text(yaml.safe_dump(sidecar), encoding="utf-8")

    ar = Reconstructor.from_pretrained(released).eval()
    assert ar.layer == LAYER and ar.head.weight.dtype == torch.float32
    with torch.no_grad():
        pred = ar(*pad_texts(tokenizer, TEXTS))
    residual = residual_at_last_token(args, LAYER, tokenizer, TEXTS)
    torch.testing.assert_close(pred, residual @ head.float().T, rtol=1e-5, atol=1e-5)


def test_without_sidecar_k_is_config_layers_minus_one(tmp_path, tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir("gpt2")))
    directory = tmp_path / "bare"
    load_causal_lm(args, keep_layers=2).save_pretrained(directory)
    save_file({"weight": torch.eye(32)}, str(directory / "value_head.safetensors"))
    assert Reconstructor.from_pretrained(directory).layer == 1


def test_missing_value_head_is_a_one_line_error(tmp_path, tiny_model_dir):
    directory = tmp_path / "headless"
    load_causal_lm(ModelArgs(str(tiny_model_dir("llama"))), keep_layers=2).save_pretrained(directory)
    with pytest.raises(NLAError, match=r"^value_head\.safetensors: not found in .*headless") as error:
        Reconstructor.from_pretrained(directory)
    assert "\n" not in str(error.value)


def test_loss_is_two_times_one_minus_cosine():
    pred = torch.tensor([[1.0, 0.0], [3.0, 4.0], [2.0, 2.0]])
    target = torch.tensor([[0.0, 5.0], [6.0, 8.0], [-1.0, 0.0]])
    # cosines by hand: orthogonal 0, parallel 1, 135 degrees -1/sqrt(2).
    per_sample = [2 * (1 - 0), 2 * (1 - 1), 2 * (1 + 1 / math.sqrt(2))]
    expected = sum(per_sample) / 3
    assert Reconstructor.loss(pred, target).item() == pytest.approx(expected, abs=1e-6)
    assert Reconstructor.loss(pred[:1], target[:1]).item() == pytest.approx(2.0, abs=1e-6)
