import math

import numpy as np
import pytest
import torch

from nla.core.maths import (
    cosine,
    fve,
    fve_from_sums,
    fve_variance,
    meannorm_from_sums,
    meannorm_variance,
    normalized,
    normalized_mse,
    rawvar_from_sums,
    rescale,
    target_sums,
)

SQRT2 = math.sqrt(2.0)


def test_rescale_sets_the_norm():
    out = rescale(torch.tensor([[3.0, 4.0], [0.0, -2.0]]), 10.0)
    torch.testing.assert_close(out, torch.tensor([[6.0, 8.0], [0.0, -10.0]]))


def test_rescale_keeps_a_zero_vector_zero():
    out = rescale(torch.zeros(2, 3), 5.0)
    assert torch.equal(out, torch.zeros(2, 3))


def test_rescale_keeps_dtype_and_survives_float16_overflow():
    # ||v||^2 = 2 * 6e4^2 = 7.2e9 overflows float16 (max 65504); the norm must be taken in float32.
    v = torch.tensor([6.0e4, 6.0e4], dtype=torch.float16)
    out = rescale(v, SQRT2)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0], dtype=torch.float16))


def test_rescale_accepts_a_per_row_norm():
    out = rescale(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0], [3.0]]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 0.0], [0.0, 3.0]]))


def test_normalized_has_norm_sqrt_d():
    out = normalized(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))


def test_normalized_mse_by_hand():
    pred = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    target = torch.tensor([[5.0, 0.0], [0.0, 3.0], [-2.0, 0.0], [1.0, 1.0]])
    # identical direction, orthogonal, opposite, 45 degrees: 2(1 - cos) = 0, 2, 4, 2 - sqrt(2).
    expected = torch.tensor([0.0, 2.0, 4.0, 2.0 - SQRT2])
    torch.testing.assert_close(normalized_mse(pred, target), expected)


def test_normalized_mse_is_float32_per_sample_and_keeps_leading_shape():
    pred = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.bfloat16)
    target = torch.tensor([[[0.0, 2.0]], [[0.0, 4.0]]], dtype=torch.bfloat16)
    out = normalized_mse(pred, target)
    assert out.dtype == torch.float32
    assert out.shape == (2, 1)
    torch.testing.assert_close(out, torch.tensor([[2.0], [0.0]]))


def test_normalized_mse_has_gradients():
    pred = torch.tensor([[1.0, 1.0]], requires_grad=True)
    normalized_mse(pred, torch.tensor([[1.0, 0.0]])).sum().backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_cosine_by_hand():
    pred = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    target = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(cosine(pred, target), torch.tensor([1.0, 0.0, -1.0, 1.0 / SQRT2]))


def test_mse_is_two_one_minus_cosine():
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    torch.testing.assert_close(normalized_mse(pred, target), 2 * (1 - cosine(pred, target)))


def test_fve_by_hand():
    assert fve(0.5, 2.0) == 0.75
    assert fve(2.0, 2.0) == 0.0
    torch.testing.assert_close(fve(torch.tensor([0.0, 3.0]), torch.tensor(1.5)), torch.tensor([1.0, -1.0]))


def test_variances_of_two_orthogonal_targets():
    # v_hat = (sqrt2, 0), (0, sqrt2); mu = (1/sqrt2, 1/sqrt2), ||mu||^2 = 1.
    targets = torch.tensor([[1.0, 0.0], [0.0, 7.0]])
    # rawvar = 1 - ||mu||^2 / d = 1 - 1/2.
    assert fve_variance(targets).item() == pytest.approx(0.5, abs=1e-12)
    # meannorm = 2 (1 - ||mu|| / sqrt d) = 2 - sqrt2.
    assert meannorm_variance(targets).item() == pytest.approx(2.0 - SQRT2, abs=1e-12)


def test_variances_of_identical_directions_are_zero():
    targets = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0]])
    assert fve_variance(targets).item() == pytest.approx(0.0, abs=1e-12)
    assert meannorm_variance(targets).item() == pytest.approx(0.0, abs=1e-12)


def test_variances_when_the_mean_is_zero():
    targets = torch.tensor([[1.0, 0.0], [-3.0, 0.0]])
    assert fve_variance(targets).item() == pytest.approx(1.0, abs=1e-12)
    # The limit of 2 (1 - ||mu|| / sqrt d) as mu -> 0.
    assert meannorm_variance(targets).item() == pytest.approx(2.0, abs=1e-12)


def test_target_sums_by_hand():
    sum_normalized, sum_sq_norm, count = target_sums(torch.tensor([[[1.0, 0.0]], [[0.0, -4.0]]]))
    assert sum_normalized.dtype == torch.float64
    torch.testing.assert_close(sum_normalized, torch.tensor([SQRT2, -SQRT2], dtype=torch.float64))
    assert sum_sq_norm.item() == pytest.approx(4.0, abs=1e-12)
    assert count == 2


def test_rawvar_matches_its_definition_in_float64():
    generator = torch.Generator().manual_seed(1)
    targets = torch.randn(40, 8, generator=generator) + 0.7
    v = targets.double().numpy()
    v_hat = v / np.linalg.norm(v, axis=-1, keepdims=True) * math.sqrt(8)
    mu = v_hat.mean(axis=0)
    expected = (np.square(v_hat - mu).sum(axis=-1) / 8).mean()
    assert fve_variance(targets).item() == pytest.approx(expected, abs=1e-12)


def test_meannorm_is_the_mse_of_predicting_the_normalised_mean():
    generator = torch.Generator().manual_seed(2)
    targets = torch.randn(30, 6, generator=generator) + 0.5
    mean_prediction = normalized(normalized(targets).mean(dim=0)).expand_as(targets)
    expected = normalized_mse(mean_prediction, targets).mean()
    assert meannorm_variance(targets).item() == pytest.approx(expected.item(), abs=1e-6)


def test_meannorm_is_never_below_rawvar():
    generator = torch.Generator().manual_seed(3)
    for shift in (0.0, 0.5, 2.0):
        targets = torch.randn(50, 4, generator=generator) + shift
        assert meannorm_variance(targets) >= fve_variance(targets)


def test_sums_add_across_uneven_batches():
    generator = torch.Generator().manual_seed(4)
    pred, target = torch.randn(11, 5, generator=generator), torch.randn(11, 5, generator=generator) + 0.3
    parts = [target_sums(chunk) for chunk in target.split([4, 1, 6])]
    sums = tuple(sum(part[i] for part in parts) for i in range(3))
    torch.testing.assert_close(rawvar_from_sums(*sums), fve_variance(target))
    torch.testing.assert_close(meannorm_from_sums(*sums), meannorm_variance(target))
    mse = normalized_mse(pred, target).double()
    expected = 1 - mse.mean() / fve_variance(target)
    torch.testing.assert_close(fve_from_sums(mse.sum(), *sums), expected)


def test_fve_of_a_perfect_and_a_normalised_mean_prediction():
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sums = target_sums(targets)
    assert fve_from_sums(torch.tensor(0.0, dtype=torch.float64), *sums).item() == 1.0
    # Predicting normalise(mu) = (1, 1) for both: each MSE is 2 - sqrt2 > Var = 0.5, so FVE < 0.
    mse = normalized_mse(torch.ones(2, 2), targets).double().sum()
    assert fve_from_sums(mse, *sums).item() == pytest.approx(1 - (2 - SQRT2) / 0.5, abs=1e-6)
