"""One GRPO rollout on a tiny llama taught to answer in explanation tags: rewards, advantages,
log-probs, KL, exact gradient accumulation and the AR's pre-update scoring."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from lightning.pytorch.plugins.precision import HalfPrecision

from nla.core.maths import normalized_mse, rescale
from nla.core.prompts import partial_explanation
from nla.models.pair import Pair
from nla.modules.grpo.loss import AGGREGATION_MODES
from nla.modules.grpo.reference import FrozenCopy
from nla.modules.grpo.rollout import av_loss, ar_loss, collect, policy_logprobs, token_logprobs
from nla.modules.grpo.settings import RolloutArgs
from tests.fixtures.pairs import WARM_SCALE, rl_batch, warm_pair


@pytest.fixture
def pair(warm_model_dir) -> Pair:
    return warm_pair(warm_model_dir)


def rollout_of(pair, seed=3, **options):
    args = RolloutArgs(**{"samples_per_prompt": 4, "micro_batch_size": 5, "max_new_tokens": 12, **options})
    reference = FrozenCopy(pair.verbalizer)
    rollout = collect(pair, reference, rl_batch(pair.prompts), args, seed)
    assert rollout.valid.any() and not rollout.valid.all(), "the warm model should mix valid and invalid answers"
    return rollout, args


@pytest.mark.parametrize("reward, failed", [("neg_mse", -2.0), ("neg_log_mse", -math.log(2.0))])
def test_invalid_answers_score_as_orthogonal_and_stay_in_the_batch(pair, reward, failed):
    rollout, _ = rollout_of(pair, reward=reward)
    rewards, valid = rollout.rewards.reshape(-1), rollout.valid
    assert rollout.rewards.shape == (3, 4) and len(rollout.texts) == 12
    assert torch.all(rewards[~valid] == failed)
    assert bool(rollout.truncated[~valid].any()) and not bool(rollout.truncated[valid].any())
    # Invalid answers keep their tokens in the loss mask, and carry advantages like any other answer.
    assert torch.all(rollout.mask[~valid].sum(dim=1) > 0)
    assert rollout.advantages[~valid].abs().sum() > 0
    expected = -rollout.mse[valid] if reward == "neg_mse" else -rollout.mse[valid].log()
    torch.testing.assert_close(rewards[valid], expected)


@pytest.mark.parametrize("advantage", ["group", "batch"])
def test_advantages_have_zero_mean_per_group(pair, advantage):
    rollout, _ = rollout_of(pair, advantage=advantage)
    means = rollout.advantages.view(3, 4).mean(dim=1)
    # Zero up to float32 rounding: the rewards' rounding error, summed over G, divided by the spread.
    spread = rollout.rewards.std(dim=1, correction=0).min() if advantage == "group" else rollout.rewards.std(correction=0)
    bound = 4 * torch.finfo(torch.float32).eps * float(rollout.rewards.abs().max() / spread)
    assert float(means.abs().max()) <= bound
    assert rollout.advantages.abs().max() > 0.1


def test_old_logprobs_are_the_policy_before_the_update_and_nothing_is_clipped(pair):
    verbalizer = pair.verbalizer
    rollout, args = rollout_of(pair)
    again, _ = policy_logprobs(verbalizer, rollout, micro=12)
    assert torch.equal(again[rollout.mask], rollout.old_logprobs[rollout.mask])
    assert rollout.old_logprobs[rollout.mask].max() < 0
    stats = av_loss(verbalizer, rollout, args, lambda loss: loss.backward())
    assert stats["clip_ratio"] == 0.0
    # Trimmed masks end at the end-of-turn token of every answer that was not truncated.
    lengths = rollout.mask.sum(dim=1)
    assert lengths.max() <= args.max_new_tokens
    for row in (~rollout.truncated).nonzero().squeeze(1).tolist():
        assert rollout.completion_ids[row, lengths[row] - 1].item() in verbalizer.stop_ids
    assert torch.all(rollout.entropy[rollout.mask] >= 0)


def test_kl_to_an_identical_reference_is_zero(pair):
    verbalizer = pair.verbalizer
    for estimator in ("k1", "k2", "k3"):
        rollout, args = rollout_of(pair, kl_estimator=estimator)
        assert torch.equal(rollout.ref_logprobs[rollout.mask], rollout.old_logprobs[rollout.mask])
        stats = av_loss(verbalizer, rollout, args, lambda loss: loss.backward())
        assert stats["kl"] == 0.0
        verbalizer.model.zero_grad()


def grads(module):
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("greedy", [False, True], ids=["sampled", "greedy"])
@pytest.mark.parametrize("mode", AGGREGATION_MODES)
def test_micro_batch_one_gives_the_full_batch_gradients(pair, mode, greedy):
    verbalizer, reconstructor = pair.verbalizer, pair.reconstructor
    rollout, args = rollout_of(pair, loss_aggregation=mode, kl_estimator="k3", greedy_answer=greedy)
    # Move the policy off the reference and the old policy so the KL and the ratio are not trivial.
    with torch.no_grad():
        for p in verbalizer.model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    results = []
    for micro in (1, len(rollout.start)):
        args = replace(args, micro_batch_size=micro)
        verbalizer.model.zero_grad()
        reconstructor.zero_grad()
        stats = av_loss(verbalizer, rollout, args, lambda loss: loss.backward())
        ar = ar_loss(pair, rollout, micro, lambda loss: loss.backward())
        results.append((stats, ar, grads(verbalizer.model), grads(reconstructor)))
    (stats1, ar1, av1, rec1), (stats_n, ar_n, av_n, rec_n) = results
    assert stats1["kl"] > 0 and av1 and rec1 and av1.keys() == av_n.keys()
    assert stats1["loss"] == pytest.approx(stats_n["loss"], rel=1e-5, abs=1e-7)
    assert ar1 == pytest.approx(ar_n, rel=1e-5)
    for name in av_n:
        torch.testing.assert_close(av1[name], av_n[name], rtol=1e-5, atol=1e-7)
    for name in rec_n:
        torch.testing.assert_close(rec1[name], rec_n[name], rtol=1e-5, atol=1e-7)


def test_rewards_use_the_reconstructor_before_its_update(pair):
    before = copy.deepcopy(pair)
    rollout, _ = rollout_of(pair)
    kept = rollout.valid.nonzero().squeeze(1).tolist()
    texts = [rollout.explanations[i] for i in kept]
    expected = normalized_mse(before.reconstruct(texts, batch_size=4), rollout.vectors[kept])
    torch.testing.assert_close(rollout.mse[kept], expected)
    optimizer = torch.optim.AdamW(pair.reconstructor.parameters(), lr=1e-2)
    loss = ar_loss(pair, rollout, 4, lambda loss: loss.backward())
    optimizer.step()
    after = normalized_mse(pair.reconstruct(texts, batch_size=4), rollout.vectors[kept])
    assert loss == pytest.approx(float(expected.mean()), rel=1e-5)
    assert not torch.allclose(after, expected)
    assert float(after.mean()) < float(expected.mean())


def test_rewards_and_advantages_stay_float32_under_bf16_true(pair):
    # Lightning's bf16-true casts the modules and makes bfloat16 the default dtype inside each step.
    plugin = HalfPrecision("bf16-true")
    plugin.convert_module(pair.verbalizer)
    plugin.convert_module(pair.reconstructor)
    with plugin.forward_context():
        rollout, _ = rollout_of(pair)
        kept = rollout.valid.nonzero().squeeze(1).tolist()
        predicted = pair.reconstruct([rollout.explanations[i] for i in kept], batch_size=4)
    assert torch.get_default_dtype() == torch.float32
    for name in ("mse", "rewards", "advantages"):
        assert getattr(rollout, name).dtype == torch.float32, name
    torch.testing.assert_close(rollout.mse[kept], normalized_mse(predicted, rollout.vectors[kept]), rtol=0, atol=0)


def test_token_logprobs_match_a_log_softmax_of_a_plain_forward(pair):
    """The rollout's log-probs against a hand-made pass: the marker's embedding row replaced by the
    rescaled vector, a plain HF forward on those embeddings, log-softmax, each completion token read
    at the position before it."""
    verbalizer, prompts = pair.verbalizer, pair.prompts
    rollout, _ = rollout_of(pair)
    width = rollout.completion_ids.shape[1]
    chosen, _ = token_logprobs(verbalizer, rollout.input_ids, rollout.attention_mask, rollout.vectors,
                               rollout.start, width)
    verbalizer.injector.unload()
    model = verbalizer.model
    with torch.no_grad():
        embeddings = model.get_input_embeddings()(rollout.input_ids)
        slot = prompts.av_prompt_ids.index(prompts.marker.token_id)
        embeddings[:, slot] = rescale(rollout.vectors, WARM_SCALE)
        logits = model(inputs_embeds=embeddings, attention_mask=rollout.attention_mask).logits
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    for row in range(len(rollout.start)):
        for j in range(int(rollout.mask[row].sum())):
            position = int(rollout.start[row]) + j
            token = int(rollout.input_ids[row, position])
            assert token == int(rollout.completion_ids[row, j])
            expected = float(log_probs[row, position - 1, token])
            assert float(chosen[row, j]) == pytest.approx(expected, abs=1e-5), (row, j)


def test_unfinished_answers_can_be_scored_on_what_they_wrote(pair):
    orthogonal, _ = rollout_of(pair)
    scored, args = rollout_of(pair, unfinished="scored", unfinished_penalty=0.25)
    assert scored.texts == orthogonal.texts, "the reward rule changes no sample"
    cut = scored.truncated & torch.tensor([partial_explanation(text) is not None for text in scored.texts])
    assert cut.any()
    rewards = scored.rewards.reshape(-1)
    torch.testing.assert_close(rewards[cut], -scored.mse[cut] - 0.25)
    assert torch.isfinite(scored.mse[cut]).all()
    torch.testing.assert_close(rewards[scored.valid], orthogonal.rewards.reshape(-1)[orthogonal.valid])
    assert torch.all(rewards[~scored.valid & ~cut] == -2.0)
    assert scored.explanations == orthogonal.explanations, "the AR still trains on finished answers only"


def test_the_overlong_penalty_lowers_answers_near_the_cap(pair):
    plain, args = rollout_of(pair)
    penalised, _ = rollout_of(pair, overlong_buffer=6, overlong_penalty=1.0)
    lengths = plain.mask.sum(dim=1)
    expected = plain.rewards.reshape(-1) - (lengths - 6).clamp(0, 6) / 6
    torch.testing.assert_close(penalised.rewards.reshape(-1), expected)


def test_a_greedy_answer_leads_each_group(pair):
    plain, _ = rollout_of(pair)
    mixed, _ = rollout_of(pair, greedy_answer=True)
    verbalizer, prompts = pair.verbalizer, pair.prompts
    batch = rl_batch(prompts)
    greedy = verbalizer.sample(batch["vector"], batch["input_ids"], batch["attention_mask"], max_new_tokens=12,
                               greedy=True)
    assert [mixed.texts[i] for i in (0, 4, 8)] == greedy.texts
    sampled = [i for i in range(12) if i % 4]
    assert [mixed.texts[i] for i in sampled] == [plain.texts[i] for i in sampled]


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_only_answers_drawn_from_the_policy_enter_the_av_loss(pair, greedy):
    """The greedy answer was not drawn from the policy: its reward is a member of its group's baseline,
    but its tokens enter neither the surrogate nor the KL term, nor the clip and KL figures."""
    verbalizer = pair.verbalizer
    rollout, args = rollout_of(pair, greedy_answer=greedy, kl_estimator="k3")
    # Move the policy off the old policy and the reference so the ratio and the KL are not trivial.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in verbalizer.model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 1e-3)
    first = [0, 4, 8]
    moved = replace(rollout, advantages=rollout.advantages.clone(), old_logprobs=rollout.old_logprobs.clone(),
                    ref_logprobs=rollout.ref_logprobs.clone())
    moved.advantages[first] += 3.0
    moved.old_logprobs[first] -= 0.5
    moved.ref_logprobs[first] += 0.5
    results = []
    for each in (rollout, moved):
        verbalizer.model.zero_grad()
        stats = av_loss(verbalizer, each, args, lambda loss: loss.backward())
        results.append((stats, grads(verbalizer.model)))
    (stats, before), (stats_moved, after) = results
    assert stats["kl"] > 0 and stats["clip_ratio"] < 1
    unchanged = stats == stats_moved and all(torch.equal(before[name], after[name]) for name in before)
    assert unchanged == greedy


def test_without_a_kl_term_no_reference_is_needed(pair):
    """``kl_coef: 0``: the rollout runs without a reference, and the AV's loss and gradients are those
    of the same rollout scored against one at weight 0; the KL figure, which would need it, is left out."""
    verbalizer = pair.verbalizer
    args = RolloutArgs(samples_per_prompt=4, micro_batch_size=5, max_new_tokens=12, kl_coef=0.0)
    alone = collect(pair, None, rl_batch(pair.prompts), args, 3)
    referenced = collect(pair, FrozenCopy(verbalizer), rl_batch(pair.prompts), args, 3)
    assert alone.ref_logprobs is None and alone.texts == referenced.texts
    results = []
    for each in (alone, referenced):
        verbalizer.model.zero_grad()
        stats = av_loss(verbalizer, each, args, lambda loss: loss.backward())
        results.append((stats, grads(verbalizer.model)))
    (stats, without), (stats_with, with_reference) = results
    assert "kl" not in stats and "kl" in stats_with
    assert stats["loss"] == stats_with["loss"] and stats["clip_ratio"] == stats_with["clip_ratio"]
    assert without.keys() == with_reference.keys()
    for name in without:
        assert torch.equal(without[name], with_reference[name]), name
