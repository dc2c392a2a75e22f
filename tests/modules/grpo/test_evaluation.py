"""GRPO's held-out figures: the frozen reconstructor's reading of the round trip's explanations."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from nla.core.maths import fve, fve_variance, normalized_mse, orthogonal_to
from nla.modules.grpo.evaluation import frozen_fve
from tests.fixtures.pairs import warm_pair


def test_the_frozen_reading_scores_the_same_explanations_with_another_ar(warm_model_dir):
    pair = warm_pair(warm_model_dir)
    vectors = torch.randn(6, pair.d_model, generator=torch.Generator().manual_seed(1))
    trip = pair.round_trip(vectors, max_new_tokens=12, batch_size=6)
    # Row 0 as a round trip records an answer that did not parse: no text, an orthogonal prediction.
    predictions = trip.predictions.clone()
    predictions[0] = orthogonal_to(vectors[:1])[0]
    trip = dataclasses.replace(trip, predictions=predictions, explanations=[None, *trip.explanations[1:]])
    assert trip.valid == [False] + [True] * 5
    variance = float(fve_variance(vectors))
    own_mse = normalized_mse(trip.predictions, vectors)
    # Read by the AR that wrote the trip's predictions: the trip's own figure.
    own = frozen_fve(pair, trip, variance, micro_batch_size=4)
    assert own["fve"] == pytest.approx(float(fve(own_mse.mean(), variance)), abs=1e-6)
    # An AR whose head is negated predicts -p on the valid rows: MSE 4 - m there (2(1 - cos) of the
    # opposite vector); rows without an answer stay orthogonal (MSE 2) either way.
    other = copy.deepcopy(pair.reconstructor)
    with torch.no_grad():
        other.head.weight.neg_()
    frozen = frozen_fve(dataclasses.replace(pair, reconstructor=other), trip, variance, micro_batch_size=4)
    valid = torch.tensor(trip.valid)
    expected = torch.where(valid, 4 - own_mse, own_mse)
    assert frozen["fve"] == pytest.approx(float(fve(expected.mean(), variance)), abs=1e-5)
    assert frozen["fve"] != pytest.approx(own["fve"], abs=1e-3)
