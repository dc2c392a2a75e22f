"""The quickstart's printed table: which half it reads, the warning when GRPO lost valid answers, and
the note when GRPO did not beat SFT beyond noise."""

from __future__ import annotations

import numpy as np
import torch

from nla.evaluation.bootstrap import Interval
from nla.evaluation.round_trip import row_mse
from nla.commands.quickstart_report import (Comparison, Row, _frozen_read, no_gain_note, print_report,
                                            valid_rate_warning)
from nla.models.pair_loading import load_pair
from tests.fixtures.pairs import build_pair, export


def comparison(sft_valid: float, grpo_valid: float, split: str = "test",
               gain: Interval = Interval(-0.194, -0.463, 0.085)) -> Comparison:
    fve = Interval(0.1, -0.1, 0.3)
    rows = [Row("mean predictor", fve), Row("after SFT", fve, sft_valid, 0.428), Row("after GRPO", fve, grpo_valid, 0.509)]
    return Comparison(rows, [Row("GRPO - SFT", gain)], 192, 24, 1.0, split)


def test_a_lower_valid_rate_after_grpo_is_named_with_both_valid_only_figures():
    warning = valid_rate_warning(comparison(0.83, 0.77))
    assert "83% -> 77%" in warning and "+0.428 -> +0.509" in warning


def test_no_warning_when_grpo_kept_or_raised_the_valid_rate():
    assert valid_rate_warning(comparison(0.83, 0.83)) is None
    assert valid_rate_warning(comparison(0.83, 0.95)) is None


def test_the_table_names_its_half_and_prints_the_warning(capsys):
    print_report(comparison(0.83, 0.77, "validation"), {"total": 61.0}, [], {"GRPO pair": "x"})
    out = capsys.readouterr().out
    assert "held-out validation half, which training evaluated on" in out
    assert "warning: GRPO lowered the valid-answer rate (83% -> 77%)" in out
    assert "Example explanations" not in out and "GRPO - SFT" in out and "within noise" in out
    assert "note: GRPO did not beat SFT beyond noise" in out


def test_a_gain_within_noise_or_a_loss_points_to_the_runs_over_seeds():
    for gain in (Interval(-0.016, -0.262, 0.243), Interval(-0.463, -0.733, -0.199)):
        note = no_gain_note(comparison(0.83, 0.83, gain=gain))
        assert "did not beat SFT beyond noise" in note and "'GRPO across seeds and corpora'" in note
        assert "--training_seed N" in note


def test_no_note_when_grpo_gained_beyond_noise(capsys):
    gained = comparison(0.92, 0.92, gain=Interval(0.208, 0.089, 0.342))
    assert no_gain_note(gained) is None
    print_report(gained, {"total": 61.0}, [], {"GRPO pair": "x"})
    out = capsys.readouterr().out
    assert "beyond noise" in out and "note:" not in out and "warning:" not in out


def test_the_frozen_read_of_a_pairs_own_explanations_is_its_round_trip(warm_model_dir, tmp_path):
    # With the same pair as "SFT" and "GRPO", the frozen AR is the co-trained one: the same MSE per row.
    written = export(tmp_path / "pair", build_pair(warm_model_dir))
    pair = load_pair(written["av"], written["ar"], dtype="float32")
    vectors = torch.randn(6, pair.d_model, generator=torch.Generator().manual_seed(0))
    trip = pair.round_trip(vectors, max_new_tokens=12, batch_size=6)
    assert any(trip.valid)
    frozen = _frozen_read(tmp_path / "pair", tmp_path / "pair", trip, vectors, "float32", micro=2)
    np.testing.assert_allclose(frozen, row_mse(trip.predictions, vectors), rtol=0, atol=1e-6)
