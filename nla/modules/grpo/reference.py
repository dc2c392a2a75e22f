"""The reference AV of the GRPO KL penalty: the policy as it was when RL started (the SFT AV).

A reference only has to answer ``logprobs(rollout, micro)``: the log-probs it gives the rollout's
sampled tokens, with the vectors injected as in every other pass. ``FrozenCopy`` holds a full frozen
copy of the starting AV; a LoRA variant can answer the same call by switching the shared base to a
frozen copy of the starting adapter, with no change to the rollout code (``AdapterReference``), and
``FrozenModel`` holds a separately loaded AV (the SFT export in 8 or 4 bits). With ``kl_coef: 0`` the
module builds no reference at all (``collect`` then runs no reference pass).
"""

from __future__ import annotations

import copy
from typing import Protocol

import torch
from torch import Tensor, nn

from nla.core.errors import ConfigError
from nla.models import lora
from nla.models.loading import QUANTIZATIONS
from nla.modules.precision import dtype_name
from nla.modules.grpo.rollout import Rollout, policy_logprobs
from nla.models.verbalizer import Verbalizer

DEVICES = ("same", "cpu")


class Reference(Protocol):
    def logprobs(self, rollout: Rollout, micro: int) -> Tensor:
        """``[N, L]`` log-probs of ``rollout.completion_ids`` under the reference, no gradients."""


class FrozenCopy:
    """A deep copy of ``verbalizer`` taken now, frozen (no gradients, eval mode, its own injector),
    its parameters stored in ``dtype`` (the policy's compute dtype; None: as they are), and its
    floating buffers too with ``buffers`` (see ``nla.modules.precision.frozen_storage``). Each tensor
    is cast while it is copied, so the full-precision copy never exists.

    ``device="cpu"`` keeps it in host memory between rollouts: it moves to the rollout's device for
    the scoring pass only, so accelerator memory holds two AVs only while no gradients or activations
    of the update exist. ``"same"`` keeps it beside the policy.

    It is deliberately not an ``nn.Module`` attribute of the LightningModule: Lightning would then
    move it, save it in every checkpoint and hand it to the optimizers' parameter listing; the
    starting AV is rebuilt from its source on resume instead.
    """

    shardable = True
    """Its verbalizer is a full copy of its own, which ``nla.modules.fsdp`` shards like the policy's."""

    def __init__(self, verbalizer: Verbalizer, device: str = "same", dtype: torch.dtype | None = None,
                 buffers: bool = False) -> None:
        if device not in DEVICES:
            raise ConfigError("model.reference_device", f"must be one of {', '.join(DEVICES)}, got {device!r}")
        verbalizer.injector.unload()
        # deepcopy takes these stand-ins for the originals (tied weights stay tied: one entry per tensor).
        memo = {id(p): nn.Parameter(_stored(p, dtype), requires_grad=False) for p in verbalizer.parameters()}
        if buffers:
            memo.update({id(b): _stored(b, dtype) for b in verbalizer.buffers() if b.is_floating_point()})
        # Copying the Verbalizer as a whole copies its injector hooked onto the copied embeddings.
        self.verbalizer = copy.deepcopy(verbalizer, memo).requires_grad_(False).eval()
        self.offload = device == "cpu"
        if self.offload:
            self.verbalizer.to("cpu")
        self.sharded = False
        """Set by ``nla.modules.fsdp`` once FSDP2 owns the placement (host memory via its CPU offload)."""

    @property
    def device(self) -> torch.device:
        return next(self.verbalizer.parameters()).device

    def logprobs(self, rollout: Rollout, micro: int) -> Tensor:
        target = rollout.input_ids.device
        if self.device != target and not self.sharded:
            self.verbalizer.to(target)
        chosen, _ = policy_logprobs(self.verbalizer, rollout, micro)
        if self.offload and target.type != "cpu" and not self.sharded:
            self.verbalizer.to("cpu")
        return chosen


def _stored(tensor: Tensor, dtype: torch.dtype | None) -> Tensor:
    return tensor.detach().to(dtype=dtype or tensor.dtype, copy=True)


class AdapterReference:
    """The starting AV as a frozen copy of its LoRA adapter (named ``reference``) on the policy's own
    base weights: the scoring pass switches every LoRA layer to it and back, so no second base model
    exists. The copy is a parameter of the policy module, frozen, and restored with it on resume."""

    NAME = "reference"

    def __init__(self, verbalizer: Verbalizer) -> None:
        if not lora.has_lora(verbalizer.model):
            raise ValueError("AdapterReference needs an AV with a LoRA adapter")
        lora.add_frozen_copy(verbalizer.model, self.NAME)
        self.verbalizer = verbalizer

    def logprobs(self, rollout: Rollout, micro: int) -> Tensor:
        with lora.using(self.verbalizer.model, self.NAME):
            chosen, _ = policy_logprobs(self.verbalizer, rollout, micro)
        return chosen


class FrozenModel:
    """An AV loaded on its own for the reference (e.g. quantized), used where it was loaded: 8-bit
    models cannot move between devices."""

    def __init__(self, verbalizer: Verbalizer) -> None:
        self.verbalizer = verbalizer.requires_grad_(False).eval()

    def logprobs(self, rollout: Rollout, micro: int) -> Tensor:
        chosen, _ = policy_logprobs(self.verbalizer, rollout, micro)
        return chosen


def build_reference(verbalizer: Verbalizer, sft_export: str | None, quantization: str, device: str,
                    dtype: torch.dtype, buffers: bool = False) -> Reference:
    """The GRPO reference for ``verbalizer`` (the policy as RL starts), stored in ``dtype`` (the
    policy's compute dtype): the SFT export's AV loaded again in ``quantization`` (computing in
    ``dtype``) when that is not ``none``; else a frozen adapter copy when the AV trains with LoRA;
    else a full frozen copy on ``device`` (``buffers``: cast its buffers too, as ``FrozenCopy``)."""
    if quantization not in QUANTIZATIONS:
        raise ConfigError("model.reference_quantization", f"must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    if quantization != "none":
        if sft_export is None:
            raise ConfigError("model.reference_quantization", "loads the reference from model.sft_export; set it")
        from nla.models.pair_loading import load_verbalizer

        reference, _ = load_verbalizer(f"{sft_export}/av", dtype=dtype_name(dtype), quantization=quantization)
        return FrozenModel(reference)
    if lora.has_lora(verbalizer.model):
        return AdapterReference(verbalizer)
    return FrozenCopy(verbalizer, device, dtype, buffers)
