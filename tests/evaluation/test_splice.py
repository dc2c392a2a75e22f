"""The causal splice: loss recovered on hand-computed values, and on a tiny target where the original
vector recovers 100% and the mean vector 0%."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nla.evaluation.bootstrap import document_resamples
from nla.core.maths import orthogonal_to
from nla.evaluation.splice import kl_recovered, loss_recovered, splice_directions, splice_scores, summary
from nla.models.loading import ModelArgs, load_causal_lm, load_tokenizer
from nla.models.target import residuals

LAYER = 1
TEXTS = ["The sailor counts the waves before the storm arrives at night.",
         "Rivers bend around old stones, and the miller listens to the wheel turning slowly all day."]


def test_loss_recovered_on_hand_computed_values():
    clean, ablate = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    assert loss_recovered(clean, ablate, clean) == 1.0
    assert loss_recovered(clean, ablate, ablate) == 0.0
    assert loss_recovered(clean, ablate, np.array([2.0, 3.0])) == 0.5
    assert loss_recovered(clean, ablate, np.array([4.0, 5.0])) == -0.5  # worse than the ablation
    assert np.isnan(loss_recovered(clean, clean, ablate))


def test_kl_recovered_on_hand_computed_values():
    ablate = np.array([0.4, 0.8])
    assert kl_recovered(ablate, np.zeros(2)) == 1.0
    assert kl_recovered(ablate, ablate) == 0.0
    assert kl_recovered(ablate, np.array([0.1, 0.2])) == pytest.approx(0.75)
    assert kl_recovered(ablate, np.array([0.9, 0.9])) == pytest.approx(-0.5)
    assert np.isnan(kl_recovered(np.zeros(2), ablate))


def test_rows_without_an_answer_are_spliced_as_the_ablation_never_as_the_stand_in():
    # The round trip predicts a row without an answer as a vector orthogonal to it: a basis vector at
    # the full norm, which must never be patched into the model, in the nla splice or the control.
    targets = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    valid = np.array([True, False, True, True, False, True])
    predictions = targets + 0.1
    predictions[~torch.as_tensor(valid)] = orthogonal_to(targets[~torch.as_tensor(valid)])
    mean = torch.full((8,), 0.5)
    directions = splice_directions(predictions, valid, mean, seed=3)
    for row in np.flatnonzero(~valid):
        assert torch.equal(directions["nla"][row], mean) and torch.equal(directions["shuffled"][row], mean)
    stand_ins = predictions[~torch.as_tensor(valid)]
    for row in np.flatnonzero(valid):
        assert torch.equal(directions["nla"][row], predictions[row])
        # Another valid row's reconstruction: never its own, never a stand-in.
        source = [j for j in np.flatnonzero(valid) if torch.equal(directions["shuffled"][row], predictions[j])]
        assert len(source) == 1 and source[0] != row
        assert not any(torch.equal(directions["shuffled"][row], s) for s in stand_ins)
    # One valid row has no other to take: the control falls back to the ablation.
    lone = splice_directions(predictions, np.array([True] + [False] * 5), mean, seed=0)
    assert torch.equal(lone["shuffled"][0], mean)


def test_summary_pairs_nla_against_shuffled_and_reads_valid_rows_alone():
    # Rows 0-3, documents a a b b. CE: clean 1, ablation 3; nla recovers rows 0-2 fully and row 3 not
    # at all; shuffled recovers half everywhere. KL: ablation 1, nla 0 on rows 0-2 and 1 on row 3.
    ce = {"clean": np.ones(4), "mean": np.full(4, 3.0), "nla": np.array([1.0, 1.0, 1.0, 3.0]),
          "shuffled": np.full(4, 2.0)}
    kl = {"clean": np.zeros(4), "mean": np.ones(4), "nla": np.array([0.0, 0.0, 0.0, 1.0]),
          "shuffled": np.full(4, 0.5)}
    scores = {name: {"ce": ce[name], "kl": kl[name]} for name in ce}
    draws = [np.array([0, 1, 0, 1]), np.array([2, 3, 2, 3])]
    valid = np.array([True, True, True, False])
    report = summary(scores, draws, valid)
    result = report["variants"]
    assert result["nla"]["loss_recovered"].value == pytest.approx(0.75)
    assert result["nla"]["kl_recovered"].value == pytest.approx(0.75)
    assert result["shuffled"]["kl_recovered"].value == pytest.approx(0.5)
    difference = report["differences"]["nla - shuffled"]["loss_recovered"]
    # Draw a a: 1 - 0.5; draw b b: 0.5 - 0.5; paired on the same rows.
    assert difference.value == pytest.approx(0.25)
    assert (difference.low, difference.high) == pytest.approx((0.0125, 0.4875))
    only = report["valid_only"]
    assert only["loss_recovered"].value == pytest.approx(1.0) and only["kl_recovered"].value == pytest.approx(1.0)
    assert only["loss_recovered"].low == pytest.approx(1.0)


@pytest.fixture(scope="module")
def rows(tiny_model_dir):
    source = str(tiny_model_dir("llama"))
    model = load_causal_lm(ModelArgs(source, dtype="float32")).eval()
    tokenizer = load_tokenizer(ModelArgs(source))
    ids, positions, vectors = [], [], []
    for text in TEXTS:
        tokens = tokenizer(text)["input_ids"]
        for position in (4, 7, len(tokens) - 2):
            ids.append(tokens)
            positions.append(position)
            vectors.append(residuals(model, LAYER, tokens, [position])[0])
    return model, ids, positions, torch.stack(vectors)


def test_the_original_vector_recovers_all_and_the_mean_none(rows):
    model, ids, positions, vectors = rows
    mean = torch.randn(32, generator=torch.Generator().manual_seed(0))
    shuffled = vectors.flip(0)
    scores = splice_scores(model, LAYER, ids, positions, {"nla": vectors, "mean": mean, "shuffled": shuffled})
    assert np.all(scores["clean"]["kl"] == 0.0)
    # The ratio needs an ablation that changes the loss (a random model's may lower it: the sign of
    # the gap does not matter to the two exact end points).
    assert abs(scores["mean"]["ce"].mean() - scores["clean"]["ce"].mean()) > 0.01
    np.testing.assert_allclose(scores["nla"]["ce"], scores["clean"]["ce"], rtol=0, atol=1e-5)
    recovered = loss_recovered(scores["clean"]["ce"], scores["mean"]["ce"], scores["nla"]["ce"])
    assert recovered == pytest.approx(1.0, abs=1e-5)
    # The mean vector as "reconstruction" is the ablation itself: 0 (up to float noise, since rows of
    # one batch may round differently).
    as_mean = splice_scores(model, LAYER, ids, positions, {"nla": mean.expand_as(vectors), "mean": mean,
                                                            "shuffled": shuffled})
    assert loss_recovered(as_mean["clean"]["ce"], as_mean["mean"]["ce"], as_mean["nla"]["ce"]) == pytest.approx(
        0.0, abs=1e-5)
    report = summary(scores, document_resamples(np.array([0, 0, 0, 1, 1, 1]), 100, 0))["variants"]
    assert report["nla"]["loss_recovered"].value == pytest.approx(1.0, abs=1e-5)
    assert report["clean"]["kl"].value == 0.0 and report["shuffled"]["kl"].value > 0


def test_ce_is_the_next_tokens(rows):
    model, ids, positions, vectors = rows
    scores = splice_scores(model, LAYER, ids[:1], positions[:1], {"nla": vectors[:1], "mean": vectors[0],
                                                                   "shuffled": vectors[:1]})
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids[0][: positions[0] + 1]])).logits[0, -1]
    expected = -torch.log_softmax(logits.double(), dim=-1)[ids[0][positions[0] + 1]]
    assert scores["clean"]["ce"][0] == pytest.approx(float(expected), abs=1e-5)
