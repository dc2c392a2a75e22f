"""AdamW with stochastic rounding for bf16 weights, against torch's AdamW on float32 masters."""

from __future__ import annotations

import copy

import pytest
import torch

from nla.modules import optim
from nla.modules.stochastic_adamw import stochastic_round_to_bf16

LR = 1e-5


def gradients(shapes, steps: int, drift: float) -> list[list[torch.Tensor]]:
    """Per step, one gradient per weight: seeded noise plus ``drift`` x a fixed sign per entry."""
    generator = torch.Generator().manual_seed(1)
    signs = [torch.randn(shape, generator=generator).sign() for shape in shapes]
    return [[torch.randn(shape, generator=generator) + drift * sign for shape, sign in zip(shapes, signs)]
            for _ in range(steps)]


def run(kind: str, dtype: torch.dtype, start: list[torch.Tensor], grads, optimizer_state: dict | None = None):
    """The optimizer ``kind`` at LR 1e-5 over ``grads`` on copies of ``start`` stored in ``dtype``."""
    params = [torch.nn.Parameter(tensor.to(dtype, copy=True)) for tensor in start]
    optimizer = optim.adamw([{"name": "verbalizer", "params": params, "lr": LR}], (0.9, 0.95), 0.0, kind)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    for step in grads:
        for p, grad in zip(params, step):
            p.grad = grad.to(dtype)
        optimizer.step()
    return params, optimizer


def bf16_start(norm_shape=(64,)) -> list[torch.Tensor]:
    """A linear weight (~0.02) and a norm weight (1.0), exactly representable in bf16."""
    linear = torch.randn(64, 64, generator=torch.Generator().manual_seed(0)) * 0.02
    return [linear.bfloat16().float(), torch.ones(norm_shape)]


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
    values = torch.full((200_000,), 1.0 + 1e-3)  # between the bf16 neighbours 1.0 and 1.0078125
    rounded = stochastic_round_to_bf16(values, torch.Generator().manual_seed(0)).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0078125}
    # Unbiased: the mean is 1 + 1e-3 to within a few standard errors (0.0078 * sqrt(p(1-p) / n) ~ 6e-6).
    assert float(rounded.double().mean()) == pytest.approx(1.0 + 1e-3, abs=3e-5)
    exact = torch.tensor([1.0, -0.5, 2.0**-20, 0.0])
    assert torch.equal(stochastic_round_to_bf16(exact, torch.Generator().manual_seed(0)).float(), exact)
    negative = stochastic_round_to_bf16(-values[:1000], torch.Generator().manual_seed(1)).float()
    assert set(negative.unique().tolist()) == {-1.0, -1.0078125}


def test_on_float32_weights_it_is_torch_adamw():
    start = bf16_start()
    grads = gradients([t.shape for t in start], 5, 0.0)
    ours, _ = run("adamw_bf16_stochastic", torch.float32, start, grads)
    theirs, _ = run("adamw", torch.float32, start, grads)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_plain_adamw_on_bf16_weights_loses_small_updates():
    start = bf16_start()
    (linear, norm), _ = run("adamw", torch.bfloat16, start, gradients([t.shape for t in start], 1, 0.0))
    assert (linear.float() != start[0]).float().mean() < 0.5
    assert torch.equal(norm.float(), start[1]), "a step of 1e-5 cannot move a bf16 1.0"


def test_bf16_weights_move_as_float32_masters_do_on_average():
    start = bf16_start(norm_shape=(64, 64))
    grads = gradients([t.shape for t in start], 300, drift=3.0)
    masters, _ = run("adamw", torch.float32, start, grads)
    rounded, optimizer = run("adamw_bf16_stochastic", torch.bfloat16, start, grads)
    plain, _ = run("adamw", torch.bfloat16, start, grads)
    assert all(p.dtype == torch.bfloat16 and optimizer.state[p]["exp_avg"].dtype == torch.float32 for p in rounded)
    for ours, master, begin in zip(rounded, masters, start):
        moved = (master.detach() - begin).double()
        assert float(moved.abs().mean()) > 2e-3  # ~300 steps of ~1e-5
        # Unbiased: the bf16 weights moved as far as the masters, on average over the tensor.
        ours = ours.detach().double()
        assert abs(float((ours - master.detach().double()).mean())) < 0.05 * float(moved.abs().mean())
        assert float(((ours - begin) * moved.sign()).mean()) > 0.9 * float(moved.abs().mean())
    # Round to nearest keeps every norm weight at exactly 1.0: the masters' movement is lost.
    assert torch.equal(plain[1].float(), start[1])


def test_a_resumed_run_rounds_as_the_uninterrupted_one():
    start = bf16_start()
    grads = gradients([t.shape for t in start], 4, drift=3.0)
    whole, _ = run("adamw_bf16_stochastic", torch.bfloat16, start, grads)
    half, optimizer = run("adamw_bf16_stochastic", torch.bfloat16, start, grads[:2])
    resumed, again = run("adamw_bf16_stochastic", torch.bfloat16, [p.detach().float() for p in half], grads[2:],
                         copy.deepcopy(optimizer.state_dict()))
    assert all(again.state[p][key].dtype == torch.float32 for p in resumed for key in ("exp_avg", "exp_avg_sq"))
    for a, b in zip(resumed, whole):
        assert torch.equal(a, b)
