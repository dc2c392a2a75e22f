"""The rows ``nla evaluate`` scores: the held-out split of an activation cache, or texts and positions
read through the target model. Either way each row knows its vector, its document, its position in
the target's tokens, the text read so far and the whole text (for the causal splice's next token)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nla.data.activation_cache import ActivationCache
from nla.data.splits import HELDOUT_PARTS, evaluation_order
from nla.core.errors import ConfigError
from nla.models.fingerprint import check_same_base
from nla.models.target import choose_positions, residuals, tokenize


@dataclass
class HeldoutRows:
    vectors: Tensor
    """[n, d] float32 activations (raw, never normalised)."""
    documents: np.ndarray
    """The document each row comes from: the unit the bootstrap resamples."""
    positions: list[int]
    """Index of the explained token in the target's tokens of its document."""
    token_ids: list[int]
    """The explained token's id."""
    contexts: list[str]
    """The text read through the explained token (what the judge sees)."""
    texts: list[str]
    """The whole text of each row's document."""
    mean: Tensor | None
    """A training split's mean normalised vector (the mean predictor and the splice's ablation), or
    None when the data has no training split (texts)."""
    source: dict
    """Where the rows come from, for the report."""
    layer: int
    """K: the vectors are the residual after this block."""

    def __len__(self) -> int:
        return len(self.positions)


def cache_rows(directory: str, split: str, count: int, layer: int, d: int,
               base: tuple[str | None, str | None] = (None, None)) -> HeldoutRows:
    """The first ``count`` rows of ``split``: a cache split, or a half of the held-out split
    (``validation``, ``test``) in the order training and the quickstart read it
    (``nla.data.splits.evaluation_order``), so the same ``count`` means the same rows. ``base`` is the
    (name, fingerprint) of the pair's base model: a cache of another model's vectors is refused."""
    cache = ActivationCache(directory, expect_d=d, expect_layer=layer, field="cache")
    recorded = cache.meta.get("model", {})
    check_same_base("cache", (f"the cache {directory}", recorded.get("name_or_path"), recorded.get("fingerprint")),
                    ("the pair", *base), "score the pair on a cache of its own base model")
    if split in ("heldout", *HELDOUT_PARTS):
        indices = cache.split_indices("heldout")
        order = evaluation_order(np.array([cache.record(int(i))["doc_id"] for i in indices]), split)
        indices = indices[order][:count]
    else:
        indices = cache.split_indices(split)[:count]
    if len(indices) < 2:
        raise ConfigError("split", f"'{split}' of {directory} has {len(indices)} rows; an evaluation needs at least 2")
    records = [cache.record(int(i)) for i in indices]
    stats = cache.stats("ar_sft")
    mean = stats["mean"].float() if stats.get("count") else None
    return HeldoutRows(
        vectors=cache.vectors(indices).float(),
        documents=np.array([r["doc_id"] for r in records]),
        positions=[r["position"] for r in records],
        token_ids=[r["token_id"] for r in records],
        contexts=[r["context"] for r in records],
        texts=[r["text"] for r in records],
        mean=mean,
        source={"kind": "cache", "cache": str(directory), "split": split, "order": "first rows, nla.data.splits.evaluation_order",
                "mean_predictor": "the ar_sft split's mean normalised vector" if mean is not None else None},
        layer=layer,
    )


def text_rows(model, tokenizer, layer: int, texts: list[str], positions: list[int] | None) -> HeldoutRows:
    """Rows at ``positions`` (default: ``nla.models.target.choose_positions``) of every text, each
    text its own document, activations read from ``model``."""
    if not texts or not all(text.strip() for text in texts):
        raise ConfigError("texts", "needs at least one non-empty text")
    vectors, documents, chosen, token_ids, contexts, whole = [], [], [], [], [], []
    for number, text in enumerate(texts):
        tokenized = tokenize(tokenizer, text)
        here = choose_positions(len(tokenized.ids), tokenized.special, positions)
        vectors.append(residuals(model, layer, tokenized.ids, here).cpu())
        documents += [f"text-{number}"] * len(here)
        chosen += here
        token_ids += [tokenized.ids[p] for p in here]
        contexts += [tokenized.context(p) for p in here]
        whole += [text] * len(here)
    if len(chosen) < 2:
        raise ConfigError("positions", "select a single row; an evaluation needs at least 2")
    return HeldoutRows(torch.cat(vectors), np.array(documents), chosen, token_ids, contexts, whole, None,
                       {"kind": "texts", "texts": len(texts), "positions": positions or "default",
                        "mean_predictor": None}, layer)


def splice_inputs(rows: HeldoutRows, tokenizer) -> tuple[list[int], list[list[int]]]:
    """Rows the splice can score and their token ids: those whose text, tokenized again, holds the
    explained token at its position and a next token after it."""
    kept, ids = [], []
    tokenized: dict[str, list[int]] = {}
    for row, (text, position) in enumerate(zip(rows.texts, rows.positions)):
        if text not in tokenized:
            tokenized[text] = tokenize(tokenizer, text).ids
        tokens = tokenized[text]
        if position + 1 < len(tokens) and tokens[position] == rows.token_ids[row]:
            kept.append(row)
            ids.append(tokens[: position + 2])
    return kept, ids
