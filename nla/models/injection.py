"""Writing activation vectors into the AV at the marker's slot.

An ``Injector`` hooks the OUTPUT of the model's input-embedding module, so for Gemma the value it
writes replaces a row that already carries the sqrt(d) embedding scale, and the vector is not scaled
again. The slot is found in the ids of each call with ``find_marker_slots``, never before the batch
is padded, so left or right padding and any batching upstream cannot misplace it; the collate step
finds it on the padded batch it builds and hands it over (``slots``), which spares the forward the
search's host synchronisation.

Where and how the vector goes in is an ``InjectionSite`` (the sidecar's ``extraction.injection_*``):
by default it replaces the marker's embedding at the fixed norm ``injection_scale`` (the reference
release); released AVs of other trainers add it, rescaled to the norm of the residual there, to the
output of decoder block N at the slot (activation-oracle style). A site after block N adds a second
hook on that block; the embedding hook still finds the slot, since the block sees no ids.

Two modes, picked per ``load``:

- every call (training): each embedding call must hold one slot per row and gets the vectors. The
  vectors stay loaded after the forward returns, so when activation checkpointing recomputes the
  forward during backward the recomputed embeddings carry the same vectors.
- once (sampling): the first call is the prefill and must hold the slots; after it the injector
  disarms, so the decode steps (one new token per row, no marker) pass through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nla.core.marker import Marker, find_marker_slots
from nla.core.maths import rescale
from nla.models.packing import find_packed_marker_slots
from nla.models.residual import block_output

INJECTION_MODES = ("replace", "add")
INJECTION_NORMS = ("fixed", "matched")


@dataclass(frozen=True)
class InjectionSite:
    """Where the vector enters the AV and at which norm; the default is the reference release's rule."""

    mode: str = "replace"
    """``replace``: the (rescaled) vector replaces the residual at the marker's slot; ``add``: it is
    added to it."""
    layer: int | None = None
    """None: at the output of the input-embedding module (the marker's embedding row); N: at the
    output of decoder block N (0-based)."""
    norm: str = "fixed"
    """``fixed``: the vector is rescaled to ``injection_scale``; ``matched``: to the norm of the
    residual at the slot it goes to (before the write)."""

    def __post_init__(self) -> None:
        if self.mode not in INJECTION_MODES or self.norm not in INJECTION_NORMS:
            raise ValueError(f"unknown injection site {self!r}; modes {INJECTION_MODES}, norms {INJECTION_NORMS}")

    def describe(self) -> str:
        """``replaces the embedding output`` / ``is added after block 1``, with its norm: for messages."""
        where = "the embedding output" if self.layer is None else f"the output of block {self.layer}"
        norm = "at injection_scale" if self.norm == "fixed" else "at the norm of the residual there"
        return f"{'replaces' if self.mode == 'replace' else 'is added to'} {where}, {norm}"


@dataclass
class InjectionStats:
    """Counters since the last ``load``, for logging the fraction of rows that received a vector."""

    rows: int = 0
    """Rows loaded: the batch size of the loaded vectors."""
    injected_rows: int = 0
    """Rows written over, summed over calls (a recompute under checkpointing counts again)."""
    injected_calls: int = 0
    """Embedding calls that received the vectors."""
    passed_calls: int = 0
    """Embedding calls left untouched: decode steps after a once-mode prefill, or nothing loaded."""

    @property
    def injected_fraction(self) -> float:
        """Fraction of loaded rows that received a vector at least once (0.0 when nothing is loaded)."""
        return min(self.injected_rows, self.rows) / self.rows if self.rows else 0.0


class Injector:
    """A forward hook on ``embeddings`` (the model's input-embedding module) that writes
    ``rescale(vectors[i], scale)`` over row i's marker slot, or, for another ``site``, the vector
    rescaled as the site says, written or added at the slot in the output of ``block``. Attached for its
    whole life; it only acts while vectors are loaded."""

    def __init__(self, embeddings: nn.Module, marker: Marker, scale: float | None,
                 site: InjectionSite = InjectionSite(), block: nn.Module | None = None) -> None:
        if site.norm == "fixed" and not (scale is not None and scale > 0):
            raise ValueError(f"injection_scale must be positive, got {scale}")
        if (block is None) != (site.layer is None):
            raise ValueError(f"a site after a block needs that block, and only it: {site!r}")
        self.marker, self.site = marker, site
        self.scale = None if scale is None else float(scale)
        self.stats = InjectionStats()
        self._vectors: Tensor | None = None
        self._once = False
        self._cu_seqlens: Tensor | None = None
        self._slots: Tensor | None = None
        # (rows, slots) the embedding call found, for the block that writes after it.
        self._found: tuple[Tensor, Tensor] | None = None
        self._handles = [embeddings.register_forward_hook(self._hook)]
        if block is not None:
            self._handles.append(block.register_forward_hook(self._block_hook))

    def load(self, vectors: Tensor, once: bool, cu_seqlens: Tensor | None = None, slots: Tensor | None = None) -> None:
        """Inject ``vectors`` [B, d] from the next embedding call on; ``once`` disarms after the first
        call that injects. The vectors are data: they are detached, no gradient reaches them.
        ``cu_seqlens`` [B + 1] announces packed calls: one row [1, N] holding the B sequences
        ``cu_seqlens[i]:cu_seqlens[i+1]``, each with its own slot. ``slots`` [B] are the slot positions
        when the caller found them already (the collate step does, on the host): the calls then skip
        the search and its synchronisation (positions in the packed row for packed calls)."""
        if vectors.dim() != 2:
            raise ValueError(f"vectors must be [batch, d], got shape {tuple(vectors.shape)}")
        if cu_seqlens is not None and cu_seqlens.numel() != vectors.shape[0] + 1:
            raise ValueError(f"{vectors.shape[0]} vectors loaded for {cu_seqlens.numel() - 1} packed sequences")
        if slots is not None and slots.shape != (vectors.shape[0],):
            raise ValueError(f"{tuple(slots.shape)} slots given for {vectors.shape[0]} vectors")
        self._vectors, self._once, self._cu_seqlens, self._slots = vectors.detach(), once, cu_seqlens, slots
        self._found = None
        self.stats = InjectionStats(rows=vectors.shape[0])

    def unload(self) -> None:
        """Stop injecting; the stats of the last load stay readable."""
        self._vectors = self._found = None

    def remove(self) -> None:
        """Detach the hooks from the model for good."""
        self.unload()
        for handle in self._handles:
            handle.remove()

    @property
    def loaded(self) -> bool:
        return self._vectors is not None

    def _hook(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        if self._vectors is None:
            self.stats.passed_calls += 1
            return None
        input_ids = args[0] if args else None
        if input_ids is None:
            raise ValueError("the embedding module was called without input ids; the marker slot cannot be found")
        if self._cu_seqlens is None and input_ids.shape[0] != self._vectors.shape[0]:
            raise ValueError(f"{self._vectors.shape[0]} vectors loaded for a batch of {input_ids.shape[0]} rows")
        if output.shape[-1] != self._vectors.shape[-1]:
            raise ValueError(f"vectors have d={self._vectors.shape[-1]} but the embeddings have d={output.shape[-1]}")
        if self._slots is not None:
            slots = self._slots
        elif self._cu_seqlens is None:
            slots = find_marker_slots(input_ids, self.marker)
        else:
            slots = find_packed_marker_slots(input_ids, self.marker, self._cu_seqlens)
        if self._cu_seqlens is None:
            rows = torch.arange(input_ids.shape[0], device=output.device)
        else:
            rows = torch.zeros_like(slots, device=output.device)
        if self.site.layer is not None:
            # The block writes; under checkpointing its recompute reads these slots again.
            self._found = rows, slots.to(output.device)
            return None
        return self._write(output, rows, slots.to(output.device))

    def _block_hook(self, module: nn.Module, args: tuple, output):
        if self._vectors is None or self._found is None:
            return None
        injected = self._write(block_output(output), *self._found)
        return (injected, *output[1:]) if isinstance(output, (tuple, list)) else injected

    def _write(self, hidden: Tensor, rows: Tensor, slots: Tensor) -> Tensor:
        """``hidden`` with the site's value at ``(rows, slots)``."""
        vectors = self._vectors.to(hidden.device)
        if self.site.norm == "fixed":
            values = rescale(vectors, self.scale)
        else:
            values = rescale(vectors.float(), hidden[rows, slots].float().norm(dim=-1, keepdim=True))
        if self.site.mode == "add":
            values = hidden[rows, slots].float() + values.float()
        # Out of place: the output may be needed by autograd for the weight gradient.
        injected = hidden.index_put((rows, slots), values.to(hidden.dtype))
        self.stats.injected_rows += int(rows.numel())
        self.stats.injected_calls += 1
        if self._once:
            self._vectors = self._found = None
        return injected
