"""Writing activation vectors over the marker's input embedding.

An ``Injector`` hooks the OUTPUT of the model's input-embedding module, so for Gemma the value it
writes replaces a row that already carries the sqrt(d) embedding scale, and the vector is not scaled
again. The slot is found in the ids of each call with ``find_marker_slots``, never before the batch
is padded, so left or right padding and any batching upstream cannot misplace it; the collate step
finds it on the padded batch it builds and hands it over (``slots``), which spares the forward the
search's host synchronisation.

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
    ``rescale(vectors[i], scale)`` over row i's marker slot. Attached for its whole life; it only acts
    while vectors are loaded."""

    def __init__(self, embeddings: nn.Module, marker: Marker, scale: float) -> None:
        if not scale > 0:
            raise ValueError(f"injection_scale must be positive, got {scale}")
        self.marker, self.scale = marker, float(scale)
        self.stats = InjectionStats()
        self._vectors: Tensor | None = None
        self._once = False
        self._cu_seqlens: Tensor | None = None
        self._slots: Tensor | None = None
        self._handle = embeddings.register_forward_hook(self._hook)

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
        self.stats = InjectionStats(rows=vectors.shape[0])

    def unload(self) -> None:
        """Stop injecting; the stats of the last load stay readable."""
        self._vectors = None

    def remove(self) -> None:
        """Detach the hook from the embedding module for good."""
        self.unload()
        self._handle.remove()

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
        values = rescale(self._vectors.to(output.device), self.scale).to(output.dtype)
        # Out of place: the embedding output may be needed by autograd for the weight gradient.
        injected = output.index_put((rows, slots.to(output.device)), values)
        self.stats.injected_rows += int(rows.numel())
        self.stats.injected_calls += 1
        if self._once:
            self._vectors = None
        return injected
