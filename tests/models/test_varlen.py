"""``nla_varlen``: PyTorch's variable-length attention registered with transformers, exercised on CPU
through ``varlen_reference`` (same arguments), against padded SDPA."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from nla.models import adapters, loading, varlen
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer, resolve_attn_implementation
from nla.models.packing import attention_kwargs, pack, pack_layout, packed_slots, use_packing
from nla.models.reconstructor import Reconstructor
from nla.models.verbalizer import Verbalizer
from nla.core.marker import find_marker_slots
from nla.core.prompts import PromptArgs, Prompts
from tests.fixtures.batches import EXPLANATIONS, LAYER, RIGHT_IDS, RIGHT_MASK, ar_batch, av_batch

FAMILIES = ("llama", "qwen2", "gemma3_text")
"""gemma3_text's 16-token sliding window is shorter than the test sequences: the kernel's window applies."""


def per_sequence_attention(query, key, value, cu, window=None):
    """Causal SDPA on each sequence alone: the meaning of the varlen call."""
    outs = []
    for begin, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        q, k, v = (t[begin:end].transpose(0, 1) for t in (query, key, value))
        n = end - begin
        allowed = torch.ones(n, n, dtype=torch.bool).tril()
        if window is not None:
            allowed &= ~torch.ones(n, n, dtype=torch.bool).tril(-window)
        outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True).transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("window", [None, 2])
def test_reference_is_causal_attention_per_sequence(window):
    generator = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 3, 4, 9], dtype=torch.int32)
    query = torch.randn(9, 4, 8, generator=generator)
    key, value = torch.randn(9, 2, 8, generator=generator), torch.randn(9, 2, 8, generator=generator)
    window_size = (-1, 0) if window is None else (window - 1, 0)
    ours = varlen.varlen_reference(query, key, value, cu, cu, 5, 5, window_size=window_size, enable_gqa=True)
    torch.testing.assert_close(ours, per_sequence_attention(query, key, value, cu, window))


def test_reference_refuses_mixed_dtypes_as_the_kernel_does():
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    query, key = torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    with pytest.raises(ValueError, match="one dtype .* got torch.float32, torch.float32, torch.bfloat16"):
        varlen.varlen_reference(query, key, key.bfloat16(), cu, cu, 3, 3, window_size=(-1, 0))


def test_cuda_kernel_only_for_half_precision():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert varlen._kernel(cpu, torch.bfloat16) is varlen.varlen_reference
    with pytest.warns(RuntimeWarning, match="float32 attention on CUDA runs the reference kernel"):
        assert varlen._kernel(cuda, torch.float32) is varlen.varlen_reference
    if importlib.util.find_spec("torch.nn.attention.varlen") is not None:
        from torch.nn.attention.varlen import varlen_attn

        assert varlen._kernel(cuda, torch.bfloat16) is varlen_attn


@pytest.mark.parametrize("family", FAMILIES)
def test_nla_varlen_under_bf16_autocast_over_float32_weights(family, tiny_model_dir, monkeypatch, one_thread):
    # bf16-mixed training: RoPE leaves query and key float32, the value projection gives bf16; the kernel
    # must get all three in bf16 (SDPA is cast by autocast, a custom kernel is not).
    results = {}
    for attn in ("sdpa", varlen.NAME):
        args, tokenizer = load(family, tiny_model_dir, attn)
        ar = Reconstructor.from_target(args, LAYER).train()
        ids, mask = ar_batch(tokenizer, "right")
        calls = count_calls(monkeypatch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            predicted = ar(ids, mask, layout=pack_layout(mask))
        predicted.float().pow(2).mean().backward()
        grad = ar.model.get_input_embeddings().weight.grad
        results[attn] = predicted.detach().float(), grad
    assert calls and all(dtype == torch.bfloat16 for _, dtype in calls)
    (sdpa, sdpa_grad), (packed, packed_grad) = results["sdpa"], results[varlen.NAME]
    # bf16 rounding, as in the GPU test: a leak across sequences moves the results far more.
    torch.testing.assert_close(packed, sdpa, rtol=2e-2, atol=2e-2 * float(sdpa.abs().mean()))
    assert torch.isfinite(packed_grad).all() and float(packed_grad.abs().sum()) > 0


def test_registration_and_auto_selection(monkeypatch):
    varlen.register()
    from transformers import AttentionInterface

    assert AttentionInterface._global_mapping[varlen.NAME] is varlen.varlen_attention_forward
    assert not varlen.NAME.startswith("flash")
    assert resolve_attn_implementation("auto") == "sdpa"  # no CUDA here
    monkeypatch.setattr(loading.varlen, "available", lambda: True)
    assert resolve_attn_implementation("auto") == varlen.NAME


def test_attention_kwargs_give_nla_varlen_the_boundaries_and_an_all_real_mask():
    class Config:
        _attn_implementation, sliding_window = varlen.NAME, 3

        def get_text_config(self):
            return self

    packed = pack(RIGHT_IDS, RIGHT_MASK)
    kwargs = attention_kwargs(packed, Config(), torch.float32)
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 9] and kwargs["max_length_q"] == 4
    # A 2D all-real mask: transformers then builds no [N, N] mask (the window is the kernel's business).
    assert kwargs["attention_mask"].shape == (1, 9) and bool(kwargs["attention_mask"].all())


def load(family, tiny_model_dir, attn):
    args = ModelArgs(str(tiny_model_dir(family)), dtype="float32", attn_implementation=attn)
    return args, load_tokenizer(args)


def count_calls(monkeypatch):
    calls = []
    original = varlen._kernel

    def kernel(device, dtype):
        calls.append((device, dtype))
        return original(device, dtype)

    monkeypatch.setattr(varlen, "_kernel", kernel)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_nla_varlen_ar_equals_padded_sdpa(family, side, tiny_model_dir, monkeypatch, one_thread):
    args, tokenizer = load(family, tiny_model_dir, "sdpa")
    padded_ar = Reconstructor.from_target(args, LAYER).eval()
    args, _ = load(family, tiny_model_dir, varlen.NAME)
    ar = Reconstructor.from_target(args, LAYER).eval()
    assert use_packing(ar.packed, ar.model) and not use_packing(padded_ar.packed, padded_ar.model)
    ids, mask = ar_batch(tokenizer, side)
    layout = pack_layout(mask)
    calls = count_calls(monkeypatch)
    with torch.no_grad():
        expected = padded_ar(ids, mask)
        # With the layout the collate step computes, packing makes no host round trip of its own.
        monkeypatch.setattr("nla.models.packing.pack_layout", None)
        packed = ar(ids, mask, layout=layout)
    assert len(calls) == LAYER + 1
    torch.testing.assert_close(packed, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_nla_varlen_av_loss_and_gradients_equal_padded_sdpa(family, tiny_model_dir, monkeypatch, one_thread):
    results = {}
    for attn in ("sdpa", varlen.NAME):
        args, tokenizer = load(family, tiny_model_dir, attn)
        prompts = Prompts.build(tokenizer, PromptArgs())
        verbalizer = Verbalizer(load_causal_lm(args).train(), tokenizer, prompts.marker, 7.0)
        ids, mask, labels = av_batch(prompts)
        vectors = torch.randn(len(EXPLANATIONS), adapters.hidden_size(verbalizer.model.config),
                              generator=torch.Generator().manual_seed(0))
        layout, slots = pack_layout(mask), find_marker_slots(ids, prompts.marker)
        if attn == varlen.NAME:
            # Slots and layout from the collate step: the forward searches for neither.
            monkeypatch.setattr("nla.models.injection.find_packed_marker_slots", None)
            monkeypatch.setattr("nla.models.packing.pack_layout", None)
        loss = verbalizer(ids, mask, vectors, labels, slots=slots, layout=layout).loss
        loss.backward()
        assert verbalizer.injection_stats.injected_rows == len(EXPLANATIONS)
        results[attn] = loss.detach(), {n: p.grad for n, p in verbalizer.model.named_parameters() if p.grad is not None}
    (loss_sdpa, grads_sdpa), (loss_varlen, grads_varlen) = results["sdpa"], results[varlen.NAME]
    torch.testing.assert_close(loss_varlen, loss_sdpa, rtol=1e-5, atol=1e-5)
    assert grads_varlen.keys() == grads_sdpa.keys()
    for name, grad in grads_sdpa.items():
        torch.testing.assert_close(grads_varlen[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_padded_calls_of_an_nla_varlen_model_run_sdpa(tiny_model_dir):
    args, tokenizer = load("llama", tiny_model_dir, "sdpa")
    sdpa = load_causal_lm(args).eval()
    args, _ = load("llama", tiny_model_dir, varlen.NAME)
    model = load_causal_lm(args).eval()
    ids, mask = ar_batch(tokenizer, "left")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                                   sdpa(input_ids=ids, attention_mask=mask).logits)


def test_packed_slots_map_row_slots_into_the_packed_row():
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]])
    # Row slots 2, 0, 3 of a left-padded batch: packed positions 1, 3 + 0, 7 + 1.
    assert packed_slots(pack_layout(mask), torch.tensor([2, 0, 3])).tolist() == [1, 3, 8]


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_torch_varlen_kernel_matches_padded_sdpa_in_bf16(family, tiny_model_dir):
    # Tolerances as in test_packing's flash test: bf16 rounding compounds over blocks; a leak across
    # sequences or a wrong window moves the results far more.
    path = str(tiny_model_dir(family))
    tokenizer = load_tokenizer(ModelArgs(path))
    prompts = Prompts.build(tokenizer, PromptArgs())
    results = {}
    for attn in ("sdpa", varlen.NAME):
        args = ModelArgs(path, dtype="bfloat16", attn_implementation=attn)
        ar = Reconstructor.from_target(args, LAYER).cuda().eval()
        verbalizer = Verbalizer(load_causal_lm(args).cuda().eval(), tokenizer, prompts.marker, 7.0)
        ids, mask, labels = (t.cuda() for t in av_batch(prompts))
        vectors = torch.randn(len(EXPLANATIONS), 32, generator=torch.Generator().manual_seed(0)).cuda()
        with torch.no_grad():
            results[attn] = (ar(*(t.cuda() for t in ar_batch(tokenizer, "right"))),
                             verbalizer(ids, mask, vectors, labels).loss.float())
    (ar_sdpa, loss_sdpa), (ar_varlen, loss_varlen) = results["sdpa"], results[varlen.NAME]
    torch.testing.assert_close(loss_varlen, loss_sdpa, rtol=2e-2, atol=0)
    torch.testing.assert_close(ar_varlen, ar_sdpa, rtol=2e-2, atol=2e-2 * float(ar_sdpa.abs().mean()))
