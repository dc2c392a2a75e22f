import importlib.util

import pytest
import torch
import yaml

from nla.core.errors import ConfigError
from nla.core.marker import Marker
from nla.models import adapters
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.packing import (
    IGNORE,
    attention_kwargs,
    block_causal_mask,
    check_packed,
    find_packed_marker_slots,
    pack,
    pack_rows,
    unpack,
    use_packing,
)
from nla.models.reconstructor import Reconstructor
from nla.models.verbalizer import Verbalizer
from nla.core.prompts import PromptArgs, Prompts
from tests.fixtures.batches import EXPLANATIONS, LABELS, LAYER, RIGHT_IDS, RIGHT_MASK, ar_batch, av_batch
from tests.fixtures.corpus import write_corpus
from tests.fixtures.paths import ROOT

EQUIVALENT_FAMILIES = ("llama", "qwen2", "mistral")
"""Families without a sliding window shorter than the test sequences (the CPU block mask has none)."""


def left_padded(ids, mask, labels=None):
    """The same rows moved to the right edge."""
    out = [torch.zeros_like(ids), torch.zeros_like(mask)]
    if labels is not None:
        out.append(torch.full_like(labels, IGNORE))
    for row, n in enumerate(mask.sum(dim=1).tolist()):
        for source, target in zip((ids, mask, labels), out):
            target[row, ids.shape[1] - n:] = source[row, :n]
    return out


def shifted_pairs(ids, labels):
    """(input token, target token) of every position the causal-LM loss counts, in row-major order."""
    keep = labels[:, 1:] != IGNORE
    return list(zip(ids[:, :-1][keep].tolist(), labels[:, 1:][keep].tolist()))


# ---- pure functions on hand-made tensors -----------------------------------------------------------


def test_pack_right_padded_batch():
    packed = pack(RIGHT_IDS, RIGHT_MASK)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert packed.cu_seqlens.tolist() == [0, 3, 5, 9] and packed.cu_seqlens.dtype == torch.int32
    assert packed.max_len == 4 and packed.last.tolist() == [2, 4, 8]
    assert packed.labels is None and packed.num_sequences == 3 and packed.num_tokens == 9


def test_left_and_right_padding_pack_alike():
    right = pack(RIGHT_IDS, RIGHT_MASK, LABELS)
    left = pack(*left_padded(RIGHT_IDS, RIGHT_MASK, LABELS))
    for name in ("input_ids", "position_ids", "cu_seqlens", "last", "labels"):
        assert torch.equal(getattr(left, name), getattr(right, name)), name


def test_packed_labels_count_the_same_targets_as_the_padded_batch():
    packed = pack(RIGHT_IDS, RIGHT_MASK, LABELS)
    # Row 2 labels its first token; in the packed row that token follows row 1, so it must be ignored.
    assert packed.labels.tolist() == [[IGNORE, 6, 7, IGNORE, 9, IGNORE, 2, 3, 4]]
    assert shifted_pairs(packed.input_ids, packed.labels) == shifted_pairs(RIGHT_IDS, LABELS)


def test_pack_rows_equals_pack_of_the_padded_rows():
    rows = [[5, 6, 7], [8, 9], [1, 2, 3, 4]]
    labels = [[IGNORE, 6, 7], [IGNORE, 9], [1, 2, 3, 4]]
    from_rows, from_batch = pack_rows(rows, labels), pack(RIGHT_IDS, RIGHT_MASK, LABELS)
    for name in ("input_ids", "position_ids", "cu_seqlens", "last", "labels"):
        assert torch.equal(getattr(from_rows, name), getattr(from_batch, name)), name
    with pytest.raises(ValueError, match="row 1 has 2 tokens but 1 labels"):
        pack_rows(rows, [[1, 2, 3], [1], [1, 2, 3, 4]])


def test_unpack_restores_the_padded_layout_of_either_side():
    for ids, mask in ((RIGHT_IDS, RIGHT_MASK), left_padded(RIGHT_IDS, RIGHT_MASK)):
        packed = pack(ids, mask)
        features = torch.stack([packed.input_ids, 10 * packed.input_ids], dim=-1).float()
        restored = unpack(features, packed, fill=-1)
        assert restored.shape == (3, 4, 2)
        assert torch.equal(restored[..., 0], torch.where(mask.bool(), ids, -1).float())
        assert torch.equal(restored[..., 1], torch.where(mask.bool(), 10 * ids, -1).float())
    with pytest.raises(ValueError, match=r"must be \[1, 9"):
        unpack(torch.zeros(1, 8), pack(RIGHT_IDS, RIGHT_MASK))


def test_pack_refuses_empty_rows_and_holes():
    with pytest.raises(ValueError, match="all-padding row"):
        pack(RIGHT_IDS, torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="contiguous"):
        pack(RIGHT_IDS, torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]))


def test_block_causal_mask_keeps_sequences_apart():
    packed = pack_rows([[1, 2], [3], [4, 5, 6]])
    allowed = (block_causal_mask(packed, torch.float32) == 0)[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 1],
    ]
    assert block_causal_mask(packed, torch.bfloat16).min() == torch.finfo(torch.bfloat16).min


class _Config:
    """The two attributes ``attention_kwargs`` reads from a transformers config."""

    def __init__(self, attn: str, window: int | None = None) -> None:
        self._attn_implementation, self.sliding_window = attn, window

    def get_text_config(self):
        return self


def test_attention_kwargs_flash_gets_varlen_boundaries_others_a_mask():
    packed = pack(RIGHT_IDS, RIGHT_MASK)
    flash = attention_kwargs(packed, _Config("flash_attention_2"), torch.bfloat16)
    assert flash["attention_mask"] is None and flash["max_length_q"] == flash["max_length_k"] == 4
    assert flash["cu_seq_lens_q"].tolist() == flash["cu_seq_lens_k"].tolist() == [0, 3, 5, 9]
    assert torch.equal(flash["position_ids"], packed.position_ids)
    sdpa = attention_kwargs(packed, _Config("sdpa"), torch.float32)
    assert sdpa["attention_mask"].shape == (1, 1, 9, 9) and "cu_seq_lens_q" not in sdpa
    # The 4D mask cannot narrow only the sliding-window layers: longer sequences are refused.
    with pytest.raises(ConfigError, match="packed: a 4-token sequence exceeds this model's 3-token sliding window"):
        attention_kwargs(packed, _Config("sdpa", window=3), torch.float32)
    assert "cu_seq_lens_q" in attention_kwargs(packed, _Config("flash_attention_2", window=3), torch.float32)


def test_packed_switch_values_and_auto_resolution():
    class Model:
        config = _Config("sdpa")

    assert check_packed("auto") == "auto" and check_packed(False) is False
    with pytest.raises(ConfigError, match="reconstructor.packed: must be true, false or auto"):
        check_packed("yes", "reconstructor.packed")
    assert use_packing("auto", Model) is False and use_packing(True, Model) is True
    Model.config = _Config("flash_attention_2")
    assert use_packing("auto", Model) is True and use_packing(False, Model) is False


MARKER = Marker(char="§", token_id=7, left_id=6, right_id=8, rule="explicit")


def test_find_packed_marker_slots_one_per_sequence():
    packed = pack_rows([[1, 6, 7, 8, 2], [6, 7, 8], [3, 3, 6, 7, 8, 4]])
    assert find_packed_marker_slots(packed.input_ids, MARKER, packed.cu_seqlens).tolist() == [2, 6, 11]
    # 6 | 7 8 straddles a boundary: the marker opening sequence 1 has no left neighbour of its own.
    straddle = pack_rows([[1, 6, 7, 8, 6], [7, 8, 2]])
    with pytest.raises(ValueError, match="packed sequence 1 has 0 marker slots"):
        find_packed_marker_slots(straddle.input_ids, MARKER, straddle.cu_seqlens)
    with pytest.raises(ValueError, match="cu_seqlens covers 8 tokens, the packed row holds 5"):
        find_packed_marker_slots(straddle.input_ids[:, :5], MARKER, straddle.cu_seqlens)


# ---- packed and padded agree end to end on tiny models (block mask on CPU) -------------------------


@pytest.mark.parametrize("family", EQUIVALENT_FAMILIES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_packed_ar_predictions_equal_the_padded_path(family, side, tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir(family)), dtype="float32")
    tokenizer = load_tokenizer(args)
    ar = Reconstructor.from_target(args, LAYER).eval()
    ids, mask = ar_batch(tokenizer, side)
    assert ar.packed == "auto" and not use_packing(ar.packed, ar.model)
    with torch.no_grad():
        padded = ar(ids, mask)
        ar.packed = True
        packed = ar(ids, mask)
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", EQUIVALENT_FAMILIES)
def test_packed_av_loss_and_gradients_equal_the_padded_path(family, tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir(family)), dtype="float32")
    tokenizer = load_tokenizer(args)
    prompts = Prompts.build(tokenizer, PromptArgs())
    verbalizer = Verbalizer(load_causal_lm(args).train(), tokenizer, prompts.marker, 7.0)
    ids, mask, labels = av_batch(prompts)
    vectors = torch.randn(len(EXPLANATIONS), adapters.hidden_size(verbalizer.model.config),
                          generator=torch.Generator().manual_seed(0))

    def loss_and_grads(packed):
        verbalizer.packed = packed
        verbalizer.model.zero_grad(set_to_none=True)
        out = verbalizer(ids, mask, vectors, labels)
        out.loss.backward()
        assert verbalizer.injection_stats.injected_rows == len(EXPLANATIONS)
        grads = {n: p.grad.clone() for n, p in verbalizer.model.named_parameters() if p.grad is not None}
        return out, grads

    padded, padded_grads = loss_and_grads("auto")
    assert padded.logits.shape[:2] == ids.shape
    packed, packed_grads = loss_and_grads(True)
    assert packed.logits.shape[:2] == (1, int(mask.sum()))
    torch.testing.assert_close(packed.loss, padded.loss, rtol=1e-5, atol=1e-5)
    assert packed_grads.keys() == padded_grads.keys()
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)
    # The packed logits are the padded ones at the real tokens.
    torch.testing.assert_close(unpack(packed.logits.detach(), pack(ids, mask)),
                               torch.where(mask.bool()[..., None], padded.logits.detach(), 0.0),
                               rtol=1e-5, atol=1e-5)


def test_packing_a_sliding_window_model_off_flash_is_refused(tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir("gemma3_text")), dtype="float32")
    tokenizer = load_tokenizer(args)
    ar = Reconstructor.from_target(args, LAYER).eval()
    ar.packed = True
    with pytest.raises(ConfigError, match="sliding window"):
        ar(*ar_batch(tokenizer, "right"))


# ---- flash attention on a GPU -----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn")
def test_packed_flash_attention_matches_padded_sdpa_in_bf16(tiny_model_dir):
    # Both paths run in bf16 (8-bit mantissa, relative rounding 2**-8 ~ 0.4%) and the two kernels sum
    # in different orders, so per-element differences of a few rounding steps compound over the
    # blocks; 2% relative on the loss and on the AR prediction is ~5 rounding steps, while a mask leak
    # across sequences or a wrong position shifts them by far more (the CPU tests pin exactness in fp32).
    path = str(tiny_model_dir("llama"))
    tokenizer = load_tokenizer(ModelArgs(path))
    prompts = Prompts.build(tokenizer, PromptArgs())
    results = {}
    for attn in ("sdpa", "flash_attention_2"):
        args = ModelArgs(path, dtype="bfloat16", attn_implementation=attn)
        ar = Reconstructor.from_target(args, LAYER).cuda().eval()
        verbalizer = Verbalizer(load_causal_lm(args).cuda().eval(), tokenizer, prompts.marker, 7.0)
        assert use_packing("auto", ar.model) == use_packing("auto", verbalizer.model) == (attn != "sdpa")
        ids, mask, labels = (t.cuda() for t in av_batch(prompts))
        vectors = torch.randn(len(EXPLANATIONS), 32, generator=torch.Generator().manual_seed(0)).cuda()
        with torch.no_grad():
            results[attn] = (ar(*(t.cuda() for t in ar_batch(tokenizer, "right"))),
                             verbalizer(ids, mask, vectors, labels).loss.float())
    (ar_sdpa, loss_sdpa), (ar_flash, loss_flash) = results["sdpa"], results["flash_attention_2"]
    torch.testing.assert_close(loss_flash, loss_sdpa, rtol=2e-2, atol=0)
    torch.testing.assert_close(ar_flash, ar_sdpa, rtol=2e-2, atol=2e-2 * float(ar_sdpa.abs().mean()))


# ---- tools/bench/packing.py ---------------------------------------------------------------------------


def load_bench():
    script = ROOT / "tools" / "bench" / "packing.py"
    spec = importlib.util.spec_from_file_location("bench_packing", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_counts_the_real_and_padded_tokens_of_the_training_batches(tmp_path, tiny_model_dir):
    corpus = write_corpus(tmp_path)
    data = {"class_path": "nla.data.datamodule.NLADataModule", "init_args": {"source": {
        "target": {"name_or_path": str(tiny_model_dir("llama"))},
        "corpus": {"path": str(corpus), "min_position": 8, "max_length": 64},
        "cache": {"directory": str(tmp_path / "missing"), "positions_per_document": 3},
    }, "batch_size": 4}}
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({"data": data}))
    bench = load_bench()
    # The configured cache is not built, so the bench builds a scratch one of 30 documents.
    dm, source = bench.datamodule(config, tmp_path / "scratch", documents=30)
    assert "scratch cache of 30 documents" in source and not (tmp_path / "missing").exists()
    for split in bench.SPLITS:
        counts = bench.count(dm, split, epochs=2)
        in_order = list(dm.dataloader(split))
        assert counts["rows"] == 2 * sum(len(b["attention_mask"]) for b in in_order)
        assert counts["real"] == 2 * sum(int(b["attention_mask"].sum()) for b in in_order)
        # Explanations differ in length, so padded batches carry padding that packing drops.
        assert counts["padded"] > counts["real"] and counts["padded_pairs"] > counts["packed_pairs"]
