"""The reference AV of the GRPO KL penalty: the policy as it was when RL started (the SFT AV).

A reference only has to answer ``logprobs(rollout, micro)``: the log-probs it gives the rollout's
sampled tokens, with the vectors injected as in every other pass. ``FrozenCopy`` holds a full frozen
copy of the starting AV; a LoRA variant can answer the same call by switching the shared base to a
frozen copy of the starting adapter, with no change to the rollout code.
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch
from torch import Tensor

from nla.errors import ConfigError
from nla.modules.rollout import Rollout, policy_logprobs
from nla.modules.verbalizer import Verbalizer

DEVICES = ("same", "cpu")


class Reference(Protocol):
    def logprobs(self, rollout: Rollout, micro: int) -> Tensor:
        """``[N, L]`` log-probs of ``rollout.completion_ids`` under the reference, no gradients."""


class FrozenCopy:
    """A deep copy of ``verbalizer`` taken now, frozen (no gradients, eval mode, its own injector).

    ``device="cpu"`` keeps it in host memory between rollouts: it moves to the rollout's device for
    the scoring pass only, so accelerator memory holds two AVs only while no gradients or activations
    of the update exist. ``"same"`` keeps it beside the policy.

    It is deliberately not an ``nn.Module`` attribute of the LightningModule: Lightning would then
    move it, save it in every checkpoint and hand it to the optimizers' parameter listing; the
    starting AV is rebuilt from its source on resume instead.
    """

    def __init__(self, verbalizer: Verbalizer, device: str = "same") -> None:
        if device not in DEVICES:
            raise ConfigError("model.reference_device", f"must be one of {', '.join(DEVICES)}, got {device!r}")
        verbalizer.injector.unload()
        # Copying the Verbalizer as a whole copies its injector hooked onto the copied embeddings.
        self.verbalizer = copy.deepcopy(verbalizer).requires_grad_(False).eval()
        self.offload = device == "cpu"
        if self.offload:
            self.verbalizer.to("cpu")

    @property
    def device(self) -> torch.device:
        return next(self.verbalizer.parameters()).device

    def logprobs(self, rollout: Rollout, micro: int) -> Tensor:
        target = rollout.input_ids.device
        if self.device != target:
            self.verbalizer.to(target)
        chosen, _ = policy_logprobs(self.verbalizer, rollout, micro)
        if self.offload and target.type != "cpu":
            self.verbalizer.to("cpu")
        return chosen
