import math

import pytest
import torch

from nla.modules.grpo.loss import (
    aggregate,
    batch_advantages,
    clipped_surrogate,
    fraction_zero_spread,
    group_advantages,
    kl_penalty,
    overlong_penalty,
    penalized_rewards,
    policy_loss,
    trim_at_end_of_turn,
    uniform_group_advantages,
)
from nla.modules.grpo.settings import RolloutArgs

LN2 = math.log(2.0)


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 4.0, 2.0]])
    # Group 1: mean 2, population std sqrt(2/3), so +-1 / sqrt(2/3) = +-sqrt(3/2) = +-1.2247449.
    # Group 2: mean 2, deviations -2, 2, 0, population std sqrt(8/3), so +-sqrt(3/2) again.
    expected = torch.tensor([[-1.2247449, 0.0, 1.2247449], [-1.2247449, 1.2247449, 0.0]])
    torch.testing.assert_close(group_advantages(rewards, eps=0.0), expected)


def test_group_advantages_of_a_group_without_spread_are_zero():
    rewards = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    assert torch.equal(group_advantages(rewards), torch.zeros(1, 4))


def test_group_advantages_eps_enters_the_denominator():
    rewards = torch.tensor([[0.0, 1.0]])
    # mean 0.5, population std 0.5.
    torch.testing.assert_close(group_advantages(rewards, eps=0.5), torch.tensor([[-0.5, 0.5]]))


def test_batch_advantages_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    # Group means 2 and 5. Batch of six: mean 3.5, squared deviations 6.25 + 2.25 + 0.25 + 3 * 2.25
    # = 15.5, population variance 15.5 / 6 = 31/12, std 1.6072751, 1/std = 0.6221710.
    expected = torch.tensor([[-0.6221710, 0.0, 0.6221710], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(batch_advantages(rewards, eps=0.0), expected)


def surrogate_inputs():
    # Ratios 0.5, 1.0, 1.5 and a padding token whose log-ratio (200) would overflow exp to inf.
    logprobs = torch.tensor([[math.log(0.5), 0.0, math.log(1.5), 100.0]] * 2, requires_grad=True)
    old = torch.tensor([[0.0, 0.0, 0.0, -100.0]] * 2)
    mask = torch.tensor([[True, True, True, False]] * 2)
    return logprobs, old, mask


def test_clipped_surrogate_by_hand_for_both_advantage_signs():
    logprobs, old, mask = surrogate_inputs()
    loss, clipped = clipped_surrogate(logprobs, old, torch.tensor([1.0, -1.0]), mask, epsilon=0.2)
    # A = +1: min(r, clip(r)) = 0.5, 1.0, 1.2 (1.5 clipped to 1.2). A = -1: min(-r, -clip(r))
    # = -0.8 (0.5 clipped up to 0.8), -1.0, -1.5. The loss is the negative.
    torch.testing.assert_close(
        loss, torch.tensor([[-0.5, -1.0, -1.2, 0.0], [0.8, 1.0, 1.5, 0.0]]), rtol=0, atol=1e-6
    )
    assert clipped.tolist() == [[False, False, True, False], [True, False, False, False]]
    loss.sum().backward()
    # d(-A r)/d logp = -A r where the clip is inactive, 0 where it is active or masked; no NaN.
    torch.testing.assert_close(
        logprobs.grad, torch.tensor([[-0.5, -1.0, 0.0, 0.0], [0.0, 1.0, 1.5, 0.0]]), rtol=0, atol=1e-6
    )


def test_clipped_surrogate_accepts_per_token_advantages():
    logprobs, old, mask = surrogate_inputs()
    per_sequence, _ = clipped_surrogate(logprobs, old, torch.tensor([1.0, -1.0]), mask)
    per_token, _ = clipped_surrogate(logprobs, old, torch.tensor([[1.0] * 4, [-1.0] * 4]), mask)
    torch.testing.assert_close(per_token, per_sequence)


def test_kl_penalty_by_hand():
    logprobs = torch.tensor([[0.0, LN2, 50.0]])
    ref = torch.tensor([[LN2, 0.0, -50.0]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1", mask), torch.tensor([[-LN2, LN2, 0.0]]))
    # k3 with x = ref - logp: exp(x) - x - 1 = 2 - ln2 - 1 and 0.5 + ln2 - 1.
    torch.testing.assert_close(
        kl_penalty(logprobs, ref, "k3", mask), torch.tensor([[0.3068528, 0.1931472, 0.0]])
    )
    # k2: (logp - ref)^2 / 2 = ln2^2 / 2 both ways; the default estimator.
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k2", mask), torch.tensor([[LN2**2 / 2, LN2**2 / 2, 0.0]]))
    torch.testing.assert_close(kl_penalty(logprobs[:, :2], ref[:, :2]), torch.tensor([[LN2**2 / 2, LN2**2 / 2]]))


def test_kl_penalty_rejects_an_unknown_estimator():
    with pytest.raises(ValueError, match=r"estimator: expected one of k1, k2, k3, got 'k4'"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


VOCAB_LOGITS = torch.tensor([1.5, -0.5, 0.3, 2.0, -1.0, 0.0])
REF_LOGITS = torch.tensor([0.0, 1.0, -0.7, 0.4, 0.9, -0.2])


def exact_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) summed over the whole vocabulary."""
    log_p, log_q = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    return (log_p.exp() * (log_p - log_q)).sum()


@pytest.mark.parametrize("estimator, expected", [
    ("k1", lambda pi, ref: torch.zeros(())),  # zero expected gradient: noise only
    ("k2", lambda pi, ref: exact_kl(pi, ref)),  # the gradient of KL(policy || reference)
    ("k3", lambda pi, ref: exact_kl(ref, pi)),  # the gradient of the reverse KL(reference || policy)
])
def test_expected_gradient_of_each_kl_estimator_over_the_whole_vocabulary(estimator, expected):
    # The expected gradient of a per-token loss on the policy's own samples is the sum over tokens of
    # pi(x) * grad loss(x), with pi(x) held fixed (the samples do not move with the parameters).
    theta = VOCAB_LOGITS.clone().requires_grad_(True)
    log_pi, log_ref = torch.log_softmax(theta, -1), torch.log_softmax(REF_LOGITS, -1)
    loss = (log_pi.exp().detach() * kl_penalty(log_pi[None], log_ref[None], estimator)[0]).sum()
    (estimated,) = torch.autograd.grad(loss, theta)
    pi = VOCAB_LOGITS.clone().requires_grad_(True)
    target = expected(pi, REF_LOGITS)
    exact = torch.autograd.grad(target, pi)[0] if target.requires_grad else torch.zeros_like(pi)
    torch.testing.assert_close(estimated, exact, rtol=1e-5, atol=1e-6)


def kl_after_updates(estimator: str, steps: int = 40, samples: int = 256) -> list[float]:
    """Exact KL(policy || reference) over a 6-token vocabulary along SGD updates whose loss is the GRPO
    loss with zero advantages: the KL penalty alone, on tokens sampled from the policy each step."""
    theta = VOCAB_LOGITS.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([theta], lr=0.5)
    log_ref = torch.log_softmax(REF_LOGITS, -1)
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(samples, 1, dtype=torch.bool)
    kls = [float(exact_kl(theta.detach(), REF_LOGITS))]
    for _ in range(steps):
        log_pi = torch.log_softmax(theta, -1)
        tokens = torch.multinomial(log_pi.detach().exp(), samples, replacement=True, generator=generator)[:, None]
        logprobs = log_pi[tokens]
        surrogate, _ = clipped_surrogate(logprobs, logprobs.detach(), torch.zeros(samples), mask)
        loss = aggregate(surrogate + kl_penalty(logprobs, log_ref[tokens], estimator, mask), mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        kls.append(float(exact_kl(theta.detach(), REF_LOGITS)))
    return kls


def test_the_default_kl_penalty_pulls_the_policy_to_the_reference():
    kls = kl_after_updates(RolloutArgs().kl_estimator)
    assert kls[-1] < 0.1 * kls[0], kls
    assert all(later < earlier for earlier, later in zip(kls[::10], kls[10::10])), kls
    # k1 as a loss only adds noise: the same updates leave the KL near where it started.
    drift = kl_after_updates("k1")
    assert drift[-1] > 0.7 * drift[0], drift


def aggregate_inputs():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, float("nan"), 99.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    return per_token, mask


def test_aggregate_by_hand():
    per_token, mask = aggregate_inputs()
    # 40 over 6 tokens; (2.5 + 15) / 2; 40 / (2 sequences * 5).
    assert aggregate(per_token, mask, "token_mean").item() == pytest.approx(40.0 / 6.0)
    assert aggregate(per_token, mask, "sequence_mean").item() == pytest.approx(8.75)
    assert aggregate(per_token, mask, "sum_norm", max_len=5).item() == pytest.approx(4.0)


def test_aggregate_rejects_bad_arguments():
    per_token, mask = aggregate_inputs()
    with pytest.raises(ValueError, match=r"mode: expected one of token_mean, sequence_mean, sum_norm"):
        aggregate(per_token, mask, "mean")
    with pytest.raises(ValueError, match=r"max_len"):
        aggregate(per_token, mask, "sum_norm")


def test_trim_at_end_of_turn_by_hand():
    token_ids = torch.tensor(
        [
            [5, 7, 2, 9, 2, 0],  # end id in the middle: keep through index 2
            [5, 6, 7, 8, 0, 0],  # no end id: mask unchanged
            [3, 0, 0, 0, 0, 0],  # end id first: one token
            [2, 5, 6, 3, 4, 0],  # end id outside the mask (prompt) is ignored; stop at the 3
        ]
    )
    mask = torch.tensor(
        [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0]]
    )
    kept, lengths = trim_at_end_of_turn(token_ids, mask, {2, 3})
    assert kept.dtype == torch.bool
    assert kept.int().tolist() == [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0],
    ]
    assert lengths.tolist() == [3, 4, 1, 3]


def test_trim_without_end_ids_keeps_the_mask():
    mask = torch.tensor([[1, 1, 0]])
    kept, lengths = trim_at_end_of_turn(torch.tensor([[2, 2, 2]]), mask, [])
    assert kept.int().tolist() == [[1, 1, 0]] and lengths.tolist() == [2]


def test_penalized_rewards_by_hand():
    mse = torch.tensor([0.5, 2.0, 1.0, float("nan")])
    valid = torch.tensor([True, True, False, False])
    torch.testing.assert_close(penalized_rewards(mse, valid), torch.tensor([-0.5, -2.0, -2.0, -2.0]))
    torch.testing.assert_close(
        penalized_rewards(mse, valid, "neg_log_mse"), torch.tensor([LN2, -LN2, -LN2, -LN2])
    )


def test_neg_log_mse_of_a_perfect_reconstruction_is_finite():
    reward = penalized_rewards(torch.tensor([0.0]), torch.tensor([True]), "neg_log_mse")
    # -log(float32 eps) = -log(2^-23) = 23 ln 2.
    torch.testing.assert_close(reward, torch.tensor([23 * LN2]))


def test_penalized_rewards_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match=r"kind: expected one of neg_mse, neg_log_mse, got 'mse'"):
        penalized_rewards(torch.zeros(1), torch.ones(1, dtype=torch.bool), "mse")


def test_fraction_zero_spread_by_hand():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [3.0, 3.0, 4.0]])
    assert fraction_zero_spread(rewards).item() == 0.5


def test_overlong_penalty_rises_linearly_over_the_buffer_before_the_cap():
    lengths = torch.tensor([5, 6, 7, 8, 10])
    torch.testing.assert_close(overlong_penalty(lengths, cap=10, buffer=4, weight=1.0),
                               torch.tensor([0.0, 0.0, 0.25, 0.5, 1.0]))
    torch.testing.assert_close(overlong_penalty(lengths, cap=10, buffer=4, weight=0.5),
                               torch.tensor([0.0, 0.0, 0.125, 0.25, 0.5]))
    assert torch.equal(overlong_penalty(lengths, cap=10, buffer=0, weight=1.0), torch.zeros(5))
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, cap=10, buffer=11, weight=1.0)


def test_uniform_groups_are_scored_against_the_batch():
    rewards = torch.tensor([[-2.0, -2.0], [-0.5, -1.0]])
    per_group = group_advantages(rewards)
    assert torch.equal(per_group[0], torch.zeros(2)), "a failed group has no signal within itself"
    advantages = uniform_group_advantages(rewards, per_group)
    # Batch mean -1.375, population std sqrt(0.421875) = 0.649519: the failed group is pushed down.
    torch.testing.assert_close(advantages[0], torch.full((2,), -0.625 / 0.6495191))
    assert torch.equal(advantages[1], per_group[1]), "groups with a spread keep their own advantages"


@pytest.mark.parametrize("kl_coef", [0.0, 0.01, 1.0])
def test_policy_loss_is_the_clipped_surrogate_plus_kl_coef_times_the_kl_by_hand(kl_coef):
    """Two answers, one with its last token masked off. Advantages +1 and -0.5; the old policy equals the
    policy except at answer 0's second token, whose ratio e^0.5 = 1.65 exceeds 1 + 0.2 with a positive
    advantage (clipped); log-ratios to the reference r = 0.1, 0.2, - / 0.3, 0, 0 (k2: r^2 / 2)."""
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, -3.0]], requires_grad=True)
    old = logprobs.detach() - torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    reference = logprobs.detach() - torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    advantages = torch.tensor([1.0, -0.5])
    loss, clipped = policy_loss(logprobs, old, reference, advantages, mask, clip_epsilon=0.2, kl_coef=kl_coef,
                                kl_estimator="k2")
    # Surrogate per token: -1 (ratio 1), -1.2 (clipped at 1.2) / +0.5 three times; KL: 0.005, 0.02 / 0.045, 0, 0.
    surrogate, kl = -1.0 - 1.2 + 3 * 0.5, 0.005 + 0.02 + 0.045
    assert float(loss) == pytest.approx((surrogate + kl_coef * kl) / 5)
    assert clipped.tolist() == [[False, True, False], [False, False, False]]
    loss.backward()
    # d/dlogp: (-A x ratio, 0 where clipped) + kl_coef x r, over the 5 tokens; nothing off the mask.
    expected = torch.tensor([[-1.0 + kl_coef * 0.1, kl_coef * 0.2, 0.0],
                             [0.5 + kl_coef * 0.3, 0.5, 0.5]]) / 5
    torch.testing.assert_close(logprobs.grad, expected)
    by_sequence, _ = policy_loss(logprobs, old, reference, advantages, mask, clip_epsilon=0.2, kl_coef=kl_coef,
                                 kl_estimator="k2", mode="sequence_mean")
    assert float(by_sequence) == pytest.approx(((-2.2 + kl_coef * 0.025) / 2 + (1.5 + kl_coef * 0.045) / 3) / 2)


def test_policy_loss_without_a_reference_is_the_surrogate_alone():
    """No reference (``kl_coef: 0``, none built): the loss and gradient of the surrogate by hand, as in
    the test above; a KL weight without reference log-probs is a caller's mistake."""
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.2, -3.0]], requires_grad=True)
    old = logprobs.detach() - torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    advantages = torch.tensor([1.0, -0.5])
    loss, clipped = policy_loss(logprobs, old, None, advantages, mask, clip_epsilon=0.2, kl_coef=0.0)
    assert float(loss) == pytest.approx((-1.0 - 1.2 + 3 * 0.5) / 5)
    assert clipped.tolist() == [[False, True, False], [False, False, False]]
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1.0, 0.0, 0.0], [0.5, 0.5, 0.5]]) / 5)
    with pytest.raises(ValueError, match="needs the reference's log-probs"):
        policy_loss(logprobs, old, None, advantages, mask, clip_epsilon=0.2, kl_coef=0.01)
