"""Torch datasets over the activation cache, their collate functions, and a resumable sampler and loader.

Every item is a cache vector (read from the memory map when asked for, float32 ``[d]``) plus token ids;
padding happens in the collate function, so slots and last tokens are found on the padded batch and
never precomputed. Padding sides:

- AV SFT (``av``): right padding. Labels are -100 on the prompt and on padding; ``attention_mask`` marks
  real tokens.
- AR (``ar``): right padding, with ``last_index``, the position of each row's last real token, where the
  AR reads its prediction (also ``attention_mask.sum(1) - 1``).
- RL (``rl``): left padding, so every prompt ends at the last column and generation continues there.
- held-out (``heldout``): the ``av`` and the ``ar`` batch of the same rows, nested under those keys
  as in a training step's batch, beside the rows' ``index``, ``vector`` and ``explanation`` text.

What a forward would otherwise find on the device, at the price of a host synchronisation, is found
here on the host: ``marker_slots`` (the AV's marker position per row, given a marker) and ``layout``
(``nla.models.packing.pack_layout``: where each row goes in a padding-free packed row).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from nla.data.activation_cache import ActivationCache
from nla.core.marker import Marker, find_marker_slots
from nla.core.maths import derangement
from nla.models.packing import pack_layout
from nla.core.prompts import Prompts
from nla.core.padding import pad

IGNORE = -100
"""Label of tokens that carry no loss."""

KINDS = ("av", "ar", "rl", "heldout")

# For each padded kind, every padded field: (padding side, name of its attention mask or None, name of
# its last-real-token index or None, whether its mask gives the batch's packing layout).
LAYOUTS: dict[str, dict[str, tuple[str, str | None, str | None, bool]]] = {
    "av": {"input_ids": ("right", "attention_mask", None, True), "labels": ("right", None, None, False)},
    "ar": {"input_ids": ("right", "attention_mask", "last_index", True)},
    "rl": {"input_ids": ("left", "attention_mask", None, False)},
}
HELDOUT_PARTS = ("av", "ar")
"""The batches a held-out batch nests, one per model."""


class CacheRows(Dataset):
    """Rows of one split: cache indices, the explanation of each (None for RL), and the vector each
    row is paired with. ``shuffled_seed`` pairs every text with another row's vector (a derangement,
    so no row keeps its own), the shuffled-activation control; the texts keep their order."""

    def __init__(
        self,
        kind: str,
        cache: ActivationCache,
        prompts: Prompts,
        indices: np.ndarray,
        explanations: Sequence[str] | None = None,
        shuffled_seed: int | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown dataset kind {kind!r}; use one of {KINDS}")
        if kind != "rl" and (explanations is None or len(explanations) != len(indices)):
            raise ValueError(f"a {kind} dataset needs one explanation per row")
        self.kind, self.cache, self.prompts = kind, cache, prompts
        self.indices = np.asarray(indices, dtype=np.int64)
        self.explanations = list(explanations) if explanations is not None else None
        self.vector_indices = self.indices
        if shuffled_seed is not None and len(self.indices) > 1:
            self.vector_indices = self.indices[derangement(len(self.indices), shuffled_seed).numpy()]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, row: int) -> dict:
        item = {"index": int(self.indices[row]), "vector": self.cache.vectors([self.vector_indices[row]])[0]}
        prompts = self.prompts
        if self.kind == "rl":
            return {**item, "input_ids": prompts.av_prompt_ids}
        explanation = self.explanations[row]
        if self.kind == "ar":
            return {**item, "input_ids": prompts.ar_ids(explanation)}
        input_ids, labels = prompts.av_example(explanation)
        if self.kind == "av":
            return {**item, "input_ids": input_ids, "labels": labels}
        return {**item, "explanation": explanation, "av": {"input_ids": input_ids, "labels": labels},
                "ar": {"input_ids": prompts.ar_ids(explanation)}}


class Collator:
    """Stacks the items of one dataset kind into a batch (see the module docstring for the layout).
    ``marker``: the AV's marker, whose slots are then found here; None leaves them to the forward."""

    def __init__(self, kind: str, pad_id: int, marker: Marker | None = None) -> None:
        self.kind, self.pad_id, self.marker = kind, pad_id, marker

    def __call__(self, items: list[dict]) -> dict:
        batch = {
            "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
            "vector": torch.stack([item["vector"] for item in items]),
        }
        if self.kind != "heldout":
            return {**batch, **self._padded(self.kind, items)}
        return {**batch, "explanation": [item["explanation"] for item in items],
                **{part: self._padded(part, [item[part] for item in items]) for part in HELDOUT_PARTS}}

    def _padded(self, kind: str, items: list[dict]) -> dict:
        """The padded fields of ``kind`` (``LAYOUTS``) with their masks, last indices, layout and slots."""
        batch = {}
        for key, (side, mask_key, last_key, layout) in LAYOUTS[kind].items():
            value = IGNORE if key == "labels" else self.pad_id
            batch[key], mask = pad([item[key] for item in items], value, side)
            if mask_key is not None:
                batch[mask_key] = mask
            if last_key is not None:
                batch[last_key] = mask.sum(dim=1) - 1
            if layout:
                batch["layout"] = pack_layout(mask)
            if self.marker is not None and kind == "av" and key == "input_ids":
                batch["marker_slots"] = find_marker_slots(batch[key], self.marker)
        return batch


class EpochSampler(DistributedSampler):
    """A permutation fixed by (seed, epoch), cut into this rank's share, that can resume mid-epoch.

    Being a ``DistributedSampler``, Lightning keeps it as it is under data parallelism instead of
    wrapping it; the rank and world size come from the trainer. ``resume_at(epoch, skip)`` makes the
    next pass over that epoch start ``skip`` samples in; later passes start at the beginning.
    """

    def __init__(self, dataset: Dataset, seed: int, shuffle: bool = True, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self._resume = (epoch, skip)

    def __iter__(self):
        indices = list(super().__iter__())
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == self.epoch:
            indices = indices[resume[1] :]
        return iter(indices)


class ResumableLoader(DataLoader):
    """A DataLoader whose position in its ``EpochSampler`` Lightning saves in checkpoints.

    Lightning stores ``state_dict()`` of every training loader that has one and, when it restarts
    mid-epoch, hands it back to ``load_state_dict`` before iterating. ``progress`` returns the batches
    the training loop has finished in the current epoch; a loader shorter than the epoch (cycled by
    ``CombinedLoader``) resumes at that count modulo its length, where its cycle was.
    """

    def __init__(self, *args, progress: Callable[[], int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict:
        # Lightning swaps in its own sampler for debugging runs (overfit_batches): no position to keep.
        if not isinstance(self.sampler, EpochSampler):
            return {}
        return {"epoch": self.sampler.epoch, "batches": int(self.progress())}

    def load_state_dict(self, state: dict) -> None:
        if state and isinstance(self.sampler, EpochSampler):
            self.sampler.resume_at(int(state["epoch"]), (int(state["batches"]) % len(self)) * self.batch_size)
