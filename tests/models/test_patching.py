"""Patching the residual after block K at one position: the forward hook shared by ``nla steer`` and
the causal splice."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch

from nla.models.loading import ModelArgs, load_causal_lm
from nla.models.patching import greedy_continuation, next_token_logprobs, patched_residual, rescaled
from nla.models.residual import read_residual

LAYER = 1


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_causal_lm(ModelArgs(str(tiny_model_dir("llama")), dtype="float32")).eval()


def test_rescaled_keeps_directions_and_returns_a_row_at_its_own_norm_exactly():
    rows = torch.tensor([[3.0, 4.0], [0.1, -0.2]])
    out = rescaled(rows, torch.tensor([10.0, rows[1].norm().item()]))
    assert torch.allclose(out[0], torch.tensor([6.0, 8.0]))
    assert torch.equal(out[1], rows[1])


def test_identity_patch_changes_nothing_and_a_patch_reaches_the_block_output(model):
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        plain = torch.log_softmax(model(input_ids=ids).logits[:, 3].float(), dim=-1)
    assert torch.equal(next_token_logprobs(model, ids, LAYER, 3, lambda clean: clean), plain)
    vector = torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    with patched_residual(model, LAYER, 3, lambda clean: vector) as seen, torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    clean = read_residual(model, LAYER, ids, torch.ones_like(ids), torch.tensor([0]), torch.tensor([3]))
    assert torch.equal(seen["clean"], clean.float())
    assert torch.equal(hidden[LAYER + 1][0, 3], vector[0])
    # Earlier positions cannot see it; the next position's prediction does change.
    torch.testing.assert_close(hidden[LAYER + 1][0, :3], model(input_ids=ids, output_hidden_states=True)
                               .hidden_states[LAYER + 1][0, :3])
    assert not torch.equal(next_token_logprobs(model, ids, LAYER, 3, lambda clean: vector.expand_as(clean)), plain)


def test_only_the_prefill_is_patched(model):
    ids = torch.tensor([[1, 40, 41, 42]])
    clean_tokens, clean_first = greedy_continuation(model, ids, 6, LAYER, 3, None)
    same_tokens, same_first = greedy_continuation(model, ids, 6, LAYER, 3, lambda clean: clean)
    assert clean_tokens == same_tokens and torch.equal(clean_first, same_first)
    calls = []

    def count(clean):
        calls.append(clean.shape)
        return clean * 3

    greedy_continuation(model, ids, 5, LAYER, 3, count)
    assert calls == [torch.Size([1, 32])]
    with torch.no_grad():
        expected = [int(model(input_ids=ids).logits[0, -1].argmax())]
    assert clean_tokens[0] == expected[0]


def test_greedy_continuation_reuses_its_cache_under_the_name_forward_takes(model, monkeypatch):
    # transformers 5.2x renamed ``past_key_values`` to ``cache`` (the old name warns, and goes in 5.40);
    # the GPU image's 5.17 knows only the old one.
    ids = torch.tensor([[1, 40, 41, 42]])
    names, forward = [], model.forward

    @functools.wraps(forward)  # keeps forward's signature, where the name is looked up
    def spy(*args, **kwargs):
        names.append({"cache", "past_key_values"} & kwargs.keys())
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    tokens, _ = greedy_continuation(model, ids, 5, LAYER, 3, None)
    monkeypatch.undo()
    taken = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    assert names[1:] == [{taken}] * 4
    recomputed = ids
    with torch.no_grad():
        for _ in range(5):
            recomputed = torch.cat([recomputed, model(input_ids=recomputed).logits[:, -1:].argmax(-1)], dim=1)
    assert tokens == recomputed[0, ids.shape[1]:].tolist()
