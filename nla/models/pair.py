"""``Pair``: an AV and an AR that explain and read one layer of one target model, as one object.

Everything that runs a pair goes through it: the training modules (their held-out round trip, their
sample tables, their exports), ``nla explain``, ``nla evaluate``, ``nla steer`` and the quickstart's
report. ``explain`` writes explanations of vectors, ``reconstruct`` reads texts back into vectors,
``round_trip`` does both and scores an answer that did not finish as orthogonal (normalised MSE 2), as
the training rewards do. All three are batched, run without gradients and leave the models' train/eval
mode as they found it.

A pair loaded from disk (``nla.models.pair_loading.load_pair``) also carries both sidecars; a pair a
training module builds around its own models carries none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nla.core.maths import orthogonal_to
from nla.core.padding import pad, pad_token_id
from nla.core.prompts import Prompts
from nla.models import adapters
from nla.models.reconstructor import Reconstructor
from nla.models.sidecar import Sidecar
from nla.models.verbalizer import Verbalizer


@dataclass
class Explanations:
    """What the AV wrote for each of n vectors."""

    answers: list[str]
    """The whole decoded answer of each row."""
    explanations: list[str | None]
    """The text between the explanation tags (None: the tags are missing or cut off)."""
    finished: list[bool]
    """The answer reached its end-of-turn token before the cap."""

    @property
    def valid(self) -> list[bool]:
        """A finished answer with its explanation: what the AR is given and a round trip scores."""
        return [text is not None and done for text, done in zip(self.explanations, self.finished)]

    @property
    def shown(self) -> list[str]:
        """What to show a reader: the explanation, or the whole answer when it has none."""
        return [text if text is not None else answer.strip() for text, answer in zip(self.explanations, self.answers)]

    def __len__(self) -> int:
        return len(self.answers)


@dataclass
class RoundTrip:
    """Greedy AV -> AR results of one pair on a fixed list of vectors."""

    predictions: Tensor
    """[n, d] float32 AR reconstructions; rows without a valid answer hold a vector orthogonal to
    their target (normalised MSE 2), as in the training rewards."""
    targets: Tensor
    """[n, d] float32 the vectors explained, on the same device as ``predictions``."""
    explanations: list[str | None]
    """The explanation of each row that was valid (finished, tags present), else None."""

    @property
    def valid(self) -> list[bool]:
        return [text is not None for text in self.explanations]

    @property
    def valid_rate(self) -> float:
        return sum(self.valid) / max(len(self.explanations), 1)


@dataclass
class Pair:
    """An AV and an AR trained together on layer ``layer`` of ``base_model`` (either side may be
    absent in a half-trained SFT run), with the prompts both read."""

    verbalizer: Verbalizer | None
    reconstructor: Reconstructor | None
    prompts: Prompts
    layer: int
    """K: the vectors are the target's residual after block K."""
    base_model: str | None = None
    """The target model, as the sidecars record it (``nla.models.base_model``)."""
    base_fingerprint: str | None = None
    """The target's weights (``nla.models.fingerprint``): of the cache a pair trains on, or as its
    sidecars record it; None when unknown."""
    sidecars: dict[str, Sidecar] = field(default_factory=dict)
    """``{"av": ..., "ar": ...}`` of a pair loaded from disk; empty for one built in training."""

    @property
    def d_model(self) -> int:
        if self.reconstructor is not None:
            return self.reconstructor.d_model
        return adapters.hidden_size(self.verbalizer.model.config)

    @property
    def device(self) -> torch.device:
        module = self.verbalizer if self.verbalizer is not None else self.reconstructor
        return next(module.parameters()).device

    @property
    def heldout_variance(self) -> float | None:
        """The held-out rawvar a sidecar records (the AR's first), for FVE; None when none does."""
        for role in ("ar", "av"):
            value = self.sidecars[role].training.get("heldout_variance") if role in self.sidecars else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return float(value)
        return None

    def to(self, device: torch.device | str) -> Pair:
        for module in (self.verbalizer, self.reconstructor):
            if module is not None:
                module.to(device)
        return self

    def eval(self) -> Pair:
        for module in (self.verbalizer, self.reconstructor):
            if module is not None:
                module.eval()
        return self

    @torch.no_grad()
    def explain(self, vectors: Tensor, *, max_new_tokens: int = 150, temperature: float = 0.0,
                seed: int | None = None, batch_size: int = 16,
                progress: Callable[[Iterable], Iterable] | None = None) -> Explanations:
        """The AV's answers for ``vectors`` [n, d], ``batch_size`` rows at a time: greedy at
        temperature 0, else sampled with the seed ``seed + first row of the batch`` (None: drawn from
        the global generator)."""
        verbalizer = self.verbalizer
        if verbalizer is None:
            raise ValueError("this pair has no verbalizer to explain with")
        was_training = verbalizer.training
        verbalizer.eval()
        answers, explanations, finished = [], [], []
        device = self.device
        starts = range(0, len(vectors), batch_size)
        try:
            for start in progress(starts) if progress is not None else starts:
                batch = vectors[start:start + batch_size].to(device).float()
                samples = verbalizer.sample(
                    batch, [self.prompts.av_prompt_ids] * len(batch), max_new_tokens=max_new_tokens,
                    temperature=temperature or 1.0, greedy=temperature == 0,
                    seed=None if seed is None else seed + start)
                answers += samples.texts
                explanations += samples.parsed
                finished += [not cut for cut in samples.truncated]
        finally:
            verbalizer.train(was_training)
        return Explanations(answers, explanations, finished)

    @torch.no_grad()
    def reconstruct(self, texts: list[str], *, batch_size: int = 16) -> Tensor:
        """The AR's predictions ``[n, d]`` (float32) for ``texts``, right-padded ``batch_size`` at a time."""
        reconstructor = self.reconstructor
        if reconstructor is None:
            raise ValueError("this pair has no reconstructor to read with")
        was_training = reconstructor.training
        reconstructor.eval()
        device = reconstructor.head.weight.device
        pad_id = pad_token_id(self.prompts.tokenizer)
        outputs = []
        try:
            for start in range(0, len(texts), batch_size):
                ids, mask = pad([self.prompts.ar_ids(text) for text in texts[start:start + batch_size]], pad_id, "right")
                ids, mask = ids.to(device), mask.to(device)
                outputs.append(reconstructor(ids, mask, mask.sum(dim=1) - 1))
        finally:
            reconstructor.train(was_training)
        return torch.cat(outputs) if outputs else torch.zeros(0, reconstructor.d_model, device=device)

    def round_trip(self, vectors: Tensor, *, max_new_tokens: int = 150, batch_size: int = 16,
                   reconstruct_batch_size: int | None = None,
                   progress: Callable[[Iterable], Iterable] | None = None) -> RoundTrip:
        """Greedy AV -> AR on every row of ``vectors`` [n, d]: the AV writes ``batch_size`` rows at a
        time, and the AR reads each batch's valid explanations ``reconstruct_batch_size`` at a time
        (default ``batch_size``); a row without a valid answer is predicted orthogonal to its target."""
        device = self.device
        predictions, targets, kept_texts = [], [], []
        starts = range(0, len(vectors), batch_size)
        for start in progress(starts) if progress is not None else starts:
            batch = vectors[start:start + batch_size].to(device).float()
            answers = self.explain(batch, max_new_tokens=max_new_tokens, batch_size=len(batch))
            texts = [text if ok else None for text, ok in zip(answers.explanations, answers.valid)]
            kept = [i for i, text in enumerate(texts) if text is not None]
            rows = orthogonal_to(batch)
            if kept:
                rows[kept] = self.reconstruct([texts[i] for i in kept],
                                              batch_size=reconstruct_batch_size or batch_size).to(rows.dtype)
            predictions.append(rows)
            targets.append(batch)
            kept_texts += texts
        if not predictions:
            empty = torch.zeros(0, self.d_model, device=device)
            return RoundTrip(empty, empty, [])
        return RoundTrip(torch.cat(predictions), torch.cat(targets), kept_texts)
