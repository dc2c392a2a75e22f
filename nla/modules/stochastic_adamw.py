"""AdamW for bf16 trained weights: float32 moments and math, bf16 weights written back with stochastic rounding.

Round-to-nearest drops every AdamW update below half a bf16 step: at LR 1e-5 that is most updates
of the linear weights and all of those of the norm weights (1.0, whose bf16 neighbours are 2**-8
and 2**-7 away). Stochastic rounding rounds up with probability equal to the fraction of the step
the value has covered, so each stored weight equals the float32 result in expectation and small
updates add up over steps instead of vanishing. (Kahan summation with a bf16 compensation buffer,
the other usual remedy, stalls here: near 1.0 the buffer's own steps exceed 1e-5.)

The random bits come from a generator keyed by (step, parameter position), not the process rank:
data-parallel replicas round alike and stay identical, and a resumed run rounds as the
uninterrupted one would.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.distributed.tensor import DTensor


def stochastic_round_to_bf16(values: Tensor, generator: torch.Generator) -> Tensor:
    """``values`` (float32) rounded to bfloat16, up or down with probabilities that make the result
    unbiased: add 16 random low bits to the float32 bit pattern, then cut them off."""
    bits = values.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, values.shape, dtype=torch.int32, device=values.device, generator=generator)
    # Sign and magnitude are separate fields, so adding to the bits moves the magnitude for either sign.
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


def _local(tensor: Tensor) -> Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class StochasticRoundingAdamW(torch.optim.Optimizer):
    """``torch.optim.AdamW`` (no amsgrad) whose moments are float32 whatever the weights' dtype;
    bfloat16 weights are updated in float32 and written back with ``stochastic_round_to_bf16``,
    float32 weights exactly as torch's AdamW would."""

    MOMENTS = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, seed: int = 0) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.seed = seed

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts floating state to each parameter's dtype on load: bf16 moments would round.
        moments = {index: {key: entry[key] for key in self.MOMENTS if key in entry}
                   for index, entry in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        indices = [index for group in state_dict["param_groups"] for index in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for index, p in zip(indices, params):
            for key, value in moments.get(index, {}).items():
                self.state[p][key] = value.to(device=p.device, dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        position = 0
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                position += 1
                if p.grad is None:
                    continue
                if p.dtype not in (torch.float32, torch.bfloat16):
                    raise ValueError(f"StochasticRoundingAdamW updates float32 or bfloat16 weights, got {p.dtype}")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                self._update(p, state, group, beta1, beta2, position)
        return loss

    def _update(self, p: Tensor, state: dict, group: dict, beta1: float, beta2: float, position: int) -> None:
        step, lr = state["step"], group["lr"]
        grad = p.grad.float()
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
        weights = p if p.dtype == torch.float32 else p.float()
        weights.mul_(1 - lr * group["weight_decay"])
        weights.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
        if p.dtype == torch.bfloat16:
            key = np.random.SeedSequence([self.seed, step, position]).generate_state(1)[0]
            generator = torch.Generator(device=_local(p).device).manual_seed(int(key))
            _local(p).copy_(stochastic_round_to_bf16(_local(weights), generator))
