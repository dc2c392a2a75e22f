"""The precision policy on a Trainer built in Python (the CLI judges ``trainer.precision`` as written,
tests/reliability/test_config_mistakes.py): float16 compute is refused at every stage, bf16 weights
only in a fit without the compensating optimizer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lightning.pytorch.trainer.states import TrainerFn

from nla.core.errors import ConfigError
from nla.modules.precision import check_trainer


def trainer(precision: str, fn: TrainerFn = TrainerFn.FITTING):
    # What a GPU Trainer reports: on CPU Lightning would already have turned 16-mixed into bf16-mixed.
    return SimpleNamespace(precision=precision, state=SimpleNamespace(fn=fn))


@pytest.mark.parametrize("fn", [TrainerFn.FITTING, TrainerFn.VALIDATING])
@pytest.mark.parametrize("precision", ["16-mixed", "16-true"])
def test_float16_is_refused_at_every_stage(precision, fn):
    with pytest.raises(ConfigError, match=f"^trainer.precision: is {precision}: float16 overflows"):
        check_trainer(trainer(precision, fn), "adamw_bf16_stochastic")


def test_bf16_weights_are_refused_only_in_a_fit_without_the_compensating_optimizer():
    with pytest.raises(ConfigError, match="^trainer.precision: is bf16-true: it casts the trained weights"):
        check_trainer(trainer("bf16-true"), "adamw")
    check_trainer(trainer("bf16-true"), "adamw_bf16_stochastic")
    check_trainer(trainer("bf16-true", TrainerFn.VALIDATING), "adamw")
    check_trainer(trainer("bf16-mixed"), "adamw")
