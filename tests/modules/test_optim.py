"""Optimizer choice: torch AdamW, bitsandbytes' 8-bit AdamW (CPU here), and the paged one's CUDA check."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from nla.core.errors import ConfigError
from nla.modules import optim
from nla.modules.settings import TrainingArgs
from nla.models.loading import ModelArgs, load_causal_lm

pytest.importorskip("bitsandbytes")


@pytest.fixture
def model(tiny_model_dir):
    torch.manual_seed(0)
    return load_causal_lm(ModelArgs(str(tiny_model_dir("llama")), dtype="float32")).train()


def lm_loss(model, ids):
    return model(input_ids=ids, labels=ids, use_cache=False).loss


def steps(model, optimizer, ids, n):
    losses = []
    for _ in range(n):
        optimizer.zero_grad()
        loss = lm_loss(model, ids)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def batch():
    return torch.randint(3, 200, (4, 16), generator=torch.Generator().manual_seed(1))


def test_adamw8bit_changes_the_parameters_and_lowers_the_loss(model):
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = optim.adamw([optim.param_group("verbalizer", model, 1e-2)], (0.9, 0.95), 0.0, "adamw8bit")
    assert type(optimizer).__name__ == "AdamW8bit"
    losses = steps(model, optimizer, batch(), 8)
    assert losses[-1] < 0.8 * losses[0], losses
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) == len(before)
    # The embedding (vocab x 32 >= 4096 elements) really keeps its moments in 8 bits.
    embedding = model.get_input_embeddings().weight
    assert optimizer.state[embedding]["state1"].dtype == torch.uint8


def test_adamw8bit_state_survives_a_checkpoint_round_trip(model):
    ids = batch()
    optimizer = optim.adamw([optim.param_group("verbalizer", model, 1e-2)], (0.9, 0.95), 0.0, "adamw8bit")
    steps(model, optimizer, ids, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = copy.deepcopy(model)
    resumed.load_state_dict(saved["model"])
    again = optim.adamw([optim.param_group("verbalizer", resumed, 1e-2)], (0.9, 0.95), 0.0, "adamw8bit")
    again.load_state_dict(saved["optimizer"])
    # Two more steps from the restored state land exactly where the uninterrupted optimizer does.
    steps(model, optimizer, ids, 2)
    steps(resumed, again, ids, 2)
    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name


def test_group_learning_rates_are_kept(model):
    groups = [optim.param_group("verbalizer", model.model.layers[0], 1e-3),
              optim.param_group("reconstructor", model.model.layers[1], 5e-3)]
    optimizer = optim.adamw(groups, (0.9, 0.95), 0.0, "adamw8bit")
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [("verbalizer", 1e-3), ("reconstructor", 5e-3)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_paged_adamw8bit_needs_cuda(model):
    with pytest.raises(ConfigError, match="model.training.optimizer: paged_adamw8bit .* needs a CUDA device"):
        optim.adamw([optim.param_group("verbalizer", model, 1e-3)], (0.9, 0.95), 0.0, "paged_adamw8bit")


def test_unknown_optimizer_names_the_field():
    with pytest.raises(ConfigError, match="^model.training.optimizer: must be one of adamw, adamw8bit, paged_adamw8bit"):
        TrainingArgs(optimizer="sgd")
