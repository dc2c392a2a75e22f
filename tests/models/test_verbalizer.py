import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from nla.models import adapters
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.injection import InjectionSite, Injector
from nla.models.verbalizer import Verbalizer, cjk_rate
from nla.core.prompts import PromptArgs, Prompts

SCALE = 7.0
"""Far above the tiny models' embedding norms, so an injected row is recognisable by its norm."""
FAMILIES = ("llama", "gemma3_text", "gemma3")
EXPLANATIONS = ["The text is a recipe.", "Rivers bend around old stones, and the miller listens to the wheel."]


def build(family, tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir(family)))
    model, tokenizer = load_causal_lm(args).eval(), load_tokenizer(args)
    prompts = Prompts.build(tokenizer, PromptArgs())
    return Verbalizer(model, tokenizer, prompts.marker, SCALE), prompts


def batch(prompts, side):
    """Two SFT examples of different lengths, padded on ``side``: the slot moves with left padding."""
    examples = [prompts.av_example(text) for text in EXPLANATIONS]
    width = max(len(ids) for ids, _ in examples)
    pad = prompts.tokenizer.pad_token_id
    ids = torch.full((len(examples), width), pad)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for row, (row_ids, row_labels) in enumerate(examples):
        span = slice(width - len(row_ids), width) if side == "left" else slice(0, len(row_ids))
        ids[row, span], mask[row, span], labels[row, span] = torch.tensor(row_ids), 1, torch.tensor(row_labels)
    return ids, mask, labels


def vectors(d, rows=2, seed=0):
    return torch.randn(rows, d, generator=torch.Generator().manual_seed(seed))


def capture_block_inputs(model, block=0):
    """Every hidden state entering ``block`` (the first by default), one tensor per call."""
    seen = []

    def hook(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    return seen, adapters.decoder_layers(model)[block].register_forward_pre_hook(hook, with_kwargs=True)


def marker_slots(ids, marker):
    return ((ids == marker.token_id).long().argmax(dim=1)).tolist()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_marker_slot_enters_block0_as_the_rescaled_vector(family, side, tiny_model_dir):
    verbalizer, prompts = build(family, tiny_model_dir)
    ids, mask, _ = batch(prompts, side)
    v = vectors(adapters.hidden_size(verbalizer.model.config))
    seen, handle = capture_block_inputs(verbalizer.model)
    with torch.no_grad():
        verbalizer(ids, mask, v)
        # The vectors stay loaded after a forward (for checkpointed recomputes); unload for the baseline.
        verbalizer.injector.unload()
        verbalizer.model(input_ids=ids, attention_mask=mask)
    handle.remove()
    injected, plain = seen
    assert verbalizer.injection_stats.passed_calls == 1
    slots = marker_slots(ids, prompts.marker)
    assert len(set(slots)) == 2 or side == "right"
    for row, slot in enumerate(slots):
        expected = v[row] * (SCALE / v[row].norm())
        torch.testing.assert_close(injected[row, slot], expected, rtol=1e-6, atol=1e-6)
        assert injected[row, slot].norm().item() == pytest.approx(SCALE, rel=1e-5)
    # Gemma's embedding output is the looked-up row times sqrt(d); the vector is written after it.
    assert adapters.embedding_scale(verbalizer.model.config) == (1.0 if family == "llama" else math.sqrt(32))
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[torch.arange(2), torch.tensor(slots)] = False
    torch.testing.assert_close(injected[keep], plain[keep], rtol=0, atol=0)
    assert verbalizer.injection_stats.injected_rows == 2 and verbalizer.injection_stats.injected_fraction == 1.0


def test_different_vectors_give_different_last_logits(tiny_model_dir):
    verbalizer, prompts = build("llama", tiny_model_dir)
    ids, mask, _ = batch(prompts, "right")
    d = adapters.hidden_size(verbalizer.model.config)
    with torch.no_grad():
        first = verbalizer(ids, mask, vectors(d, seed=0)).logits
        second = verbalizer(ids, mask, vectors(d, seed=1)).logits
    last = mask.sum(dim=1) - 1
    rows = torch.arange(2)
    assert (first[rows, last] - second[rows, last]).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_loss_trains_the_model_not_the_vector(family, tiny_model_dir):
    verbalizer, prompts = build(family, tiny_model_dir)
    ids, mask, labels = batch(prompts, "right")
    v = vectors(adapters.hidden_size(verbalizer.model.config)).requires_grad_()
    out = verbalizer(ids, mask, v, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    block = adapters.decoder_layers(verbalizer.model)[0]
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in block.parameters())
    assert v.grad is None
    # The loss only counts answer tokens: relabelling the prompt must not change it.
    with torch.no_grad():
        everything = verbalizer(ids, mask, v, labels=torch.where(mask.bool(), ids, -100)).loss
        again = verbalizer(ids, mask, v, labels=labels).loss
    assert again.item() == pytest.approx(out.loss.item(), rel=1e-6)
    assert everything.item() != pytest.approx(out.loss.item(), rel=1e-3)


def grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_checkpointed_recompute_injects_the_same_vectors(tiny_model_dir):
    verbalizer, prompts = build("llama", tiny_model_dir)
    model = verbalizer.model
    ids, mask, labels = batch(prompts, "right")
    v = vectors(adapters.hidden_size(model.config))
    verbalizer(ids, mask, v, labels=labels).loss.backward()
    reference = grads(model)
    model.zero_grad(set_to_none=True)
    verbalizer.injector.load(v, once=False)
    # The whole forward is recomputed in backward, embedding call included, after the load returned.
    loss = checkpoint(
        lambda i, m, l: model(input_ids=i, attention_mask=m, labels=l, use_cache=False).loss,
        ids, mask, labels, use_reentrant=False,
    )
    loss.backward()
    assert verbalizer.injection_stats.injected_calls == 2
    recomputed = grads(model)
    assert recomputed.keys() == reference.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_sample_injects_once_per_row_at_prefill(family, tiny_model_dir):
    verbalizer, prompts = build(family, tiny_model_dir)
    short = prompts.av_prompt_ids
    rows = [short, prompts.tokenizer.encode("Describe", add_special_tokens=False) + short]
    seen, handle = capture_block_inputs(verbalizer.model)
    out = verbalizer.sample(vectors(adapters.hidden_size(verbalizer.model.config)), rows, max_new_tokens=6, greedy=True)
    handle.remove()
    assert len(seen) == 6 and seen[0].shape[1] == len(rows[1]) and all(s.shape[1] == 1 for s in seen[1:])
    hits = [int(((s.norm(dim=-1) - SCALE).abs() < 1e-3).sum()) for s in seen]
    assert hits == [2, 0, 0, 0, 0, 0]
    stats = out.injection
    assert (stats.injected_calls, stats.injected_rows, stats.passed_calls) == (1, 2, 5)
    assert not verbalizer.injector.loaded


def test_sample_matches_hf_generate_under_left_padding(tiny_model_dir):
    verbalizer, prompts = build("llama", tiny_model_dir)
    prefix = prompts.tokenizer.encode("Describe", add_special_tokens=False)
    rows = [prompts.av_prompt_ids, prefix + prompts.av_prompt_ids]
    v = vectors(adapters.hidden_size(verbalizer.model.config))
    ours = verbalizer.sample(v, rows, max_new_tokens=8, greedy=True)
    ids, mask = verbalizer._left_padded(rows, None, torch.device("cpu"))
    separate = Injector(adapters.input_embeddings(verbalizer.model), prompts.marker, SCALE)
    separate.load(v, once=True)
    theirs = verbalizer.model.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=8,
        pad_token_id=prompts.tokenizer.pad_token_id, eos_token_id=sorted(verbalizer.stop_ids),
    )
    separate.remove()
    assert separate.stats.injected_rows == 2
    for row, tokens in enumerate(ours.tokens):
        assert tokens == theirs[row, ids.shape[1] : ids.shape[1] + len(tokens)].tolist()


def test_sample_is_deterministic_greedy_and_reproducible_with_a_seed(tiny_model_dir):
    verbalizer, prompts = build("llama", tiny_model_dir)
    v = vectors(adapters.hidden_size(verbalizer.model.config))
    rows = [prompts.av_prompt_ids] * 2

    def run(**kwargs):
        return verbalizer.sample(v, rows, max_new_tokens=10, **kwargs).tokens

    assert run(greedy=True) == run(greedy=True)
    assert run(seed=3) == run(seed=3)
    assert run(seed=3) != run(seed=4)


def test_sample_takes_a_left_padded_tensor_batch(tiny_model_dir):
    verbalizer, prompts = build("llama", tiny_model_dir)
    v = vectors(adapters.hidden_size(verbalizer.model.config))
    prefix = prompts.tokenizer.encode("Describe", add_special_tokens=False)
    rows = [prompts.av_prompt_ids, prefix + prompts.av_prompt_ids]
    from_lists = verbalizer.sample(v, rows, max_new_tokens=5, greedy=True).tokens
    ids, mask = verbalizer._left_padded(rows, None, torch.device("cpu"))
    assert verbalizer.sample(v, ids, mask, max_new_tokens=5, greedy=True).tokens == from_lists
    right = torch.stack([ids[0].roll(-1), ids[1]])
    with pytest.raises(ValueError, match="left-padded"):
        verbalizer.sample(v, right, torch.stack([mask[0].roll(-1), mask[1]]), max_new_tokens=2)


def test_sample_stops_at_end_of_turn_and_parses(tiny_model_dir):
    verbalizer, prompts = build("llama", tiny_model_dir)
    v = vectors(adapters.hidden_size(verbalizer.model.config))
    rows = [prompts.av_prompt_ids] * 2
    first = verbalizer.sample(v, rows, max_new_tokens=4, greedy=True)
    assert first.truncated == [True, True] and all(len(t) == 4 for t in first.tokens)
    assert first.parsed == [None, None]
    # Declaring the first greedy token an end-of-turn token must stop each row right after it.
    verbalizer.stop_ids = verbalizer.stop_ids | {first.tokens[0][0], first.tokens[1][0]}
    stopped = verbalizer.sample(v, rows, max_new_tokens=4, greedy=True)
    assert stopped.truncated == [False, False] and stopped.tokens == [t[:1] for t in first.tokens]
    eot = prompts.tokenizer.eos_token_id
    answer = prompts.tokenizer.encode("<explanation> A recipe. </explanation>", add_special_tokens=False)
    collected = verbalizer._collect([answer + [eot, 5, 6], answer[:3]], stopped.injection)
    assert collected.tokens[0] == answer + [eot] and collected.truncated == [False, True]
    assert collected.parsed == ["A recipe.", None]


def test_row_without_marker_is_refused(tiny_model_dir):
    verbalizer, prompts = build("llama", tiny_model_dir)
    ids, mask, _ = batch(prompts, "right")
    ids[1] = torch.where(ids[1] == prompts.marker.token_id, prompts.marker.left_id, ids[1])
    v = vectors(adapters.hidden_size(verbalizer.model.config))
    with pytest.raises(ValueError, match="row 1 has 0 marker slots"):
        verbalizer(ids, mask, v)
    plain = prompts.tokenizer.encode("Describe the vector.", add_special_tokens=False)
    with pytest.raises(ValueError, match="row 1 has 0 marker slots"):
        verbalizer.sample(v, [prompts.av_prompt_ids, plain], max_new_tokens=2)
    assert not verbalizer.injector.loaded
    with pytest.raises(ValueError, match="3 vectors loaded for a batch of 2"):
        verbalizer(batch(prompts, "right")[0], mask, vectors(v.shape[1], rows=3))


def test_cjk_rate():
    assert cjk_rate([]) == 0.0 and cjk_rate(["   "]) == 0.0
    assert cjk_rate(["plain English text"]) == 0.0
    assert cjk_rate(["漢字", "かな"]) == 1.0
    # Whitespace is not counted: 2 CJK characters out of 4.
    assert cjk_rate(["ab 한글"]) == pytest.approx(0.5)
    assert cjk_rate(["a\u321c", "ＡB"]) == pytest.approx(0.5)


def test_smollm2_samples_with_injection(smollm2_dir):
    args = ModelArgs(str(smollm2_dir), dtype="float32")
    model, tokenizer = load_causal_lm(args).eval(), load_tokenizer(args)
    prompts = Prompts.build(tokenizer, PromptArgs())
    verbalizer = Verbalizer(model, tokenizer, prompts.marker, 30.0)
    v = vectors(adapters.hidden_size(model.config))
    out = verbalizer.sample(v, [prompts.av_prompt_ids] * 2, max_new_tokens=16, seed=0)
    assert len(out.texts) == 2 and all(isinstance(t, str) and t for t in out.texts)
    assert out.injection.injected_rows == 2 and out.injection.injected_calls == 1
    assert all(len(t) <= 16 for t in out.tokens)


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_an_add_site_adds_the_norm_matched_vector_after_its_block_and_only_at_prefill(family, tiny_model_dir):
    plain, prompts = build(family, tiny_model_dir)
    plain.injector.remove()
    model = plain.model
    adding = Verbalizer(model, plain.tokenizer, prompts.marker, None, site=InjectionSite("add", 1, "matched"))
    ids, mask, _ = batch(prompts, "left")
    v = vectors(adapters.hidden_size(model.config))
    seen, handle = capture_block_inputs(model, 2)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, use_cache=False)
        adding(ids, mask, v)
    clean, injected = seen
    slots = marker_slots(ids, prompts.marker)
    for row, slot in enumerate(slots):
        expected = clean[row, slot] + v[row] * (clean[row, slot].norm() / v[row].norm())
        torch.testing.assert_close(injected[row, slot], expected)
    # Only the slots change: the vector enters after block 1, so nothing before it saw the vector.
    changed = (injected != clean).any(dim=-1)
    assert changed.nonzero().tolist() == [[row, slot] for row, slot in enumerate(slots)]
    seen.clear()
    out = adding.sample(v, [prompts.av_prompt_ids] * 2, max_new_tokens=5, greedy=True)
    handle.remove()
    stats = out.injection
    assert (stats.injected_calls, stats.injected_rows, stats.passed_calls) == (1, 2, len(seen) - 1)
    assert len(seen) > 1 and not adding.injector.loaded
