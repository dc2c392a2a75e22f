import datetime
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning.pytorch.plugins.precision import HalfPrecision, MixedPrecision
from torch import nn

from nla.core.metrics import FractionOfVarianceExplained, WeightedMean

D = 16
BATCH_SIZES = (3, 7, 1, 5)
# Per-sample MSE and cosine are float32 (relative error ~1e-7); Var is near 0.8 here.
ATOL = 1e-6


def make_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn(sum(BATCH_SIZES), D, generator=generator) + 0.5
    pred = target + 0.8 * torch.randn(sum(BATCH_SIZES), D, generator=generator)
    return pred, target


def reference(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The definitions of NLA_METHOD.md section 4, in numpy float64."""

    def normalise(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True) * math.sqrt(v.shape[-1])

    p, t = normalise(pred.double().numpy()), normalise(target.double().numpy())
    mse = np.square(p - t).mean(axis=-1).mean()
    mu = t.mean(axis=0)
    variance = (np.square(t - mu).sum(axis=-1) / D).mean()
    mean_prediction = normalise(mu[None, :])
    meannorm = np.square(mean_prediction - t).mean(axis=-1).mean()
    cos = ((p * t).sum(axis=-1) / D).mean()
    return {
        "fve": 1 - mse / variance,
        "mse": mse,
        "cosine": cos,
        "variance": variance,
        "target_variance": variance,
        "meannorm_variance": meannorm,
        "fve_meannorm": 1 - mse / meannorm,
        "count": len(p),
    }


def assert_matches(values: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    assert set(values) == set(expected)
    for name, value in expected.items():
        assert values[name].item() == pytest.approx(value, abs=ATOL), name


def test_uneven_batches_match_the_float64_reference():
    pred, target = make_data()
    metric = FractionOfVarianceExplained(D)
    for p, t in zip(pred.split(BATCH_SIZES), target.split(BATCH_SIZES)):
        metric.update(p, t)
    expected = reference(pred, target)
    assert metric.compute().item() == pytest.approx(expected["fve"], abs=ATOL)
    assert_matches(metric.compute_all(), expected)
    # The weaker baseline must not be mistaken for the real one.
    assert expected["fve_meannorm"] > expected["fve"]


@pytest.mark.parametrize("plugin", [HalfPrecision("bf16-true"), MixedPrecision("bf16-mixed", "cpu")],
                         ids=["bf16-true", "bf16-mixed"])
def test_lightning_precision_plugins_leave_the_states_exact(plugin):
    # bf16-true casts the whole LightningModule (metric states included) and runs steps with bfloat16
    # as the default dtype; bf16-mixed runs them under autocast.
    holder = nn.Module()
    holder.fve, holder.loss = FractionOfVarianceExplained(D), WeightedMean()
    holder = plugin.convert_module(holder)
    assert holder.fve.sum_normalized.dtype == holder.loss.mean_value.dtype == torch.float64
    pred, target = make_data()
    losses = torch.linspace(1.3, 2.9, len(BATCH_SIZES))
    weights = torch.tensor([17.0, 3.0, 41.0, 9.0])
    with plugin.forward_context():
        for p, t, loss, weight in zip(pred.split(BATCH_SIZES), target.split(BATCH_SIZES), losses, weights):
            holder.fve.update(p, t)
            holder.loss.update(loss, weight)
        values, mean = holder.fve.compute_all(), holder.loss.compute()
    assert_matches(values, reference(pred, target))
    assert mean.item() == pytest.approx(float((losses.double() * weights).sum() / weights.sum()), abs=1e-12)


def test_hand_computed_fve():
    metric = FractionOfVarianceExplained(2)
    target = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    metric.update(target * 2, target)
    assert metric.compute().item() == pytest.approx(1.0, abs=ATOL)
    metric.reset()
    # Each prediction orthogonal to its target: MSE 2; Var = 1 - ||mu||^2 / d = 0.5; FVE = 1 - 4.
    metric.update(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), target)
    values = metric.compute_all()
    assert values["mse"].item() == pytest.approx(2.0, abs=ATOL)
    assert values["cosine"].item() == pytest.approx(0.0, abs=ATOL)
    # The target statistics are float64 throughout.
    assert values["variance"].item() == pytest.approx(0.5, abs=1e-12)
    assert values["fve"].item() == pytest.approx(-3.0, abs=ATOL)
    # meannorm = 2 (1 - ||mu|| / sqrt d) = 2 - sqrt2.
    assert values["meannorm_variance"].item() == pytest.approx(2 - math.sqrt(2), abs=1e-12)


def test_fixed_variance_replaces_the_accumulated_one():
    pred, target = make_data(1)
    metric = FractionOfVarianceExplained(D, variance=0.25)
    for p, t in zip(pred.split(BATCH_SIZES), target.split(BATCH_SIZES)):
        metric.update(p, t)
    expected = reference(pred, target)
    assert metric.compute().item() == pytest.approx(1 - expected["mse"] / 0.25, abs=ATOL)
    values = metric.compute_all()
    assert values["variance"].item() == 0.25
    assert values["target_variance"].item() == pytest.approx(expected["variance"], abs=ATOL)


def test_forward_returns_the_batch_value_and_keeps_accumulating():
    pred, target = make_data(2)
    metric = FractionOfVarianceExplained(D)
    first = metric(pred[:8], target[:8])
    metric(pred[8:], target[8:])
    assert first.item() == pytest.approx(reference(pred[:8], target[:8])["fve"], abs=ATOL)
    assert metric.compute().item() == pytest.approx(reference(pred, target)["fve"], abs=ATOL)


def test_leading_dims_are_flattened():
    pred, target = make_data(3)
    flat, nested = FractionOfVarianceExplained(D), FractionOfVarianceExplained(D)
    flat.update(pred, target)
    nested.update(pred.reshape(2, 8, D), target.reshape(2, 8, D))
    assert nested.compute().item() == pytest.approx(flat.compute().item(), abs=1e-12)


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match=r"pred, target: expected matching shapes \[\.\.\., 4\]"):
        FractionOfVarianceExplained(4).update(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"pred, target"):
        FractionOfVarianceExplained(4).update(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"^d: "):
        FractionOfVarianceExplained(0)
    with pytest.raises(ValueError, match=r"^variance: "):
        FractionOfVarianceExplained(4, variance=0.0)


def distributed_worker(rank: int, store_path: str, shards: list, out_dir: str) -> None:
    store = dist.FileStore(store_path, 2)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    try:
        metric = FractionOfVarianceExplained(D)
        for pred, target in shards[rank]:
            metric.update(pred, target)
        result = {
            "fve": metric.compute(),
            "all": metric.compute_all(),
            "local_count": metric.count.clone(),
        }
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_the_reference_over_the_union(tmp_path):
    pred, target = make_data(4)
    batches = list(zip(pred.split(BATCH_SIZES), target.split(BATCH_SIZES)))
    # Rank 0 sees 3 + 7 samples, rank 1 sees 1 + 5: uneven in batches and in totals.
    shards = [batches[:2], batches[2:]]
    mp.spawn(
        distributed_worker,
        args=(str(tmp_path / "store"), shards, str(tmp_path)),
        nprocs=2,
        join=True,
    )
    expected = reference(pred, target)
    for rank, local_count in ((0, 10), (1, 6)):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["fve"].item() == pytest.approx(expected["fve"], abs=ATOL)
        assert_matches(result["all"], expected)
        # Syncing for compute must leave each rank's own sums in place for further accumulation.
        assert result["local_count"].item() == local_count
