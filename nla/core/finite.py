"""Finiteness of tensors and weights, for the training guard (``nla.modules.nonfinite``) and the exports."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from nla.core.errors import NLAError


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The process's own shard of an FSDP2 DTensor; plain tensors as they are."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every floating tensor is finite (one device sync for all of them)."""
    flags = [torch.isfinite(_local(t)).all() for t in tensors if t.is_floating_point() or t.is_complex()]
    return bool(torch.stack([flag.to(flags[0].device) for flag in flags]).all()) if flags else True


def nonfinite_names(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity."""
    return [name for name, tensor in named if isinstance(tensor, torch.Tensor) and not all_finite([tensor])]


def check_weights_finite(models: dict[str, nn.Module | None], destination: str) -> None:
    """Refuse to write ``models`` (name -> module) to ``destination`` when a weight is NaN or inf, before
    anything is written."""
    for name, model in models.items():
        if model is None:
            continue
        bad = nonfinite_names(model.state_dict().items())
        if bad:
            raise NLAError(f"export: the {name}'s weights hold NaN or inf ({len(bad)} tensors, first {bad[0]}); "
                           f"nothing was written to {destination}; export a good checkpoint with `nla export`")
