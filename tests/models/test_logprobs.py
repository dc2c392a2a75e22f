import pytest
import torch

from nla.models import adapters
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.logprobs import chosen_logprobs, output_head
from nla.modules.grpo.rollout import token_logprobs
from nla.models.verbalizer import Verbalizer
from nla.core.padding import pad
from nla.core.prompts import PromptArgs, Prompts


def full_logits_reference(verbalizer, ids, mask, vectors, start, width):
    """Today's path before the change: every position's logits, then the completion positions picked."""
    logits = verbalizer(ids, mask, vectors).logits
    positions = (start[:, None] + torch.arange(width) - 1).clamp(0, ids.shape[1] - 1)
    targets = ids.gather(1, (positions + 1).clamp_max(ids.shape[1] - 1))
    log_probs = torch.log_softmax(logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1])).float(), -1)
    return log_probs.gather(-1, targets[..., None]).squeeze(-1), -(log_probs.exp() * log_probs).sum(-1)


def rollout_rows(family, tiny_model_dir):
    args = ModelArgs(str(tiny_model_dir(family)), dtype="float32")
    model, tokenizer = load_causal_lm(args).eval(), load_tokenizer(args)
    prompts = Prompts.build(tokenizer, PromptArgs())
    verbalizer = Verbalizer(model, tokenizer, prompts.marker, 7.0)
    answers = ["<explanation> a recipe </explanation>", "rivers", "one two three four five six"]
    rows = [prompts.av_prompt_ids + tokenizer.encode(a, add_special_tokens=False) for a in answers]
    ids, mask = pad(rows, tokenizer.pad_token_id, "right")
    start = torch.tensor([len(prompts.av_prompt_ids)] * len(rows))
    d = adapters.hidden_size(model.config)
    vectors = torch.randn(len(rows), d, generator=torch.Generator().manual_seed(0))
    return verbalizer, ids, mask, vectors, start, int(mask.sum(1).max() - start.min())


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "gemma3", "phi3", "gpt2"])
def test_chunked_logprobs_and_gradients_equal_the_full_logits_path(family, tiny_model_dir, one_thread):
    verbalizer, ids, mask, vectors, start, width = rollout_rows(family, tiny_model_dir)
    weights = torch.randn(len(ids), width, generator=torch.Generator().manual_seed(1))

    def grads(run):
        verbalizer.model.zero_grad()
        chosen, spread = run()
        ((chosen + 0.1 * spread) * weights).sum().backward()
        return chosen.detach(), spread.detach(), {n: p.grad.clone() for n, p in verbalizer.model.named_parameters()
                                                 if p.grad is not None}

    ours = grads(lambda: token_logprobs(verbalizer, ids, mask, vectors, start, width, entropy=True))
    theirs = grads(lambda: full_logits_reference(verbalizer, ids, mask, vectors, start, width))
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=1e-5)
    assert ours[2].keys() == theirs[2].keys()
    for name, grad in theirs[2].items():
        torch.testing.assert_close(ours[2][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_lm_head_sees_only_completion_positions_a_chunk_at_a_time(tiny_model_dir, monkeypatch, one_thread):
    verbalizer, ids, mask, vectors, start, width = rollout_rows("llama", tiny_model_dir)
    seen = []
    head, _ = output_head(verbalizer.model)
    handle = head.register_forward_hook(lambda module, args, output: seen.append(tuple(output.shape)))
    monkeypatch.setattr("nla.models.logprobs.CHUNK_TOKENS", 4)
    try:
        with torch.no_grad():
            token_logprobs(verbalizer, ids, mask, vectors, start, width)
    finally:
        handle.remove()
    vocab = verbalizer.model.config.vocab_size
    picked = [shape for shape in seen if len(shape) == 2]
    # The model's own head runs on one position per row; ours on at most 4 positions per call.
    assert [shape for shape in seen if len(shape) == 3] == [(len(ids), 1, vocab)]
    assert sum(s[0] for s in picked) == len(ids) * width and all(s[0] <= 4 for s in picked)


def test_chosen_logprobs_hand_computed():
    head = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    hidden = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    chosen, spread = chosen_logprobs(hidden, torch.tensor([2, 0]), head, entropy=True, chunk=1)
    # Row 0: logits 0, 0, 0 -> log(1/3); row 1: logits 2, 0, 0 -> 2 - log(e^2 + 2).
    expected = torch.tensor([-torch.log(torch.tensor(3.0)), 2 - torch.log(torch.tensor(2.0).exp() + 2)])
    torch.testing.assert_close(chosen, expected)
    torch.testing.assert_close(spread[0], torch.log(torch.tensor(3.0)))
    # A soft-cap of 1 squeezes logit 2 to tanh(2).
    capped, _ = chosen_logprobs(hidden[1:], torch.tensor([0]), head, softcap=1.0)
    top = torch.tanh(torch.tensor(2.0))
    torch.testing.assert_close(capped, (top - torch.log(top.exp() + 2))[None])
