"""Explanations as markdown tables for TensorBoard's text tab: one renderer for both modules.

SFT samples greedy explanations of fixed held-out rows (``heldout_sample_table``), so successive tables
show how one activation's explanation changes over training, beside the teacher's summary the AV was
trained towards and the CJK rate (high when the AV sees the literal marker instead of the vector).
GRPO shows the first answers of a rollout with their rewards (``rollout_sample_table``). Each row
starts with the tail of the text the activation was read from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nla.models.pair import Pair
from nla.models.verbalizer import cjk_rate

CONTEXT_TAIL_CHARS = 200
"""Characters of left context shown: enough to read the last sentence before the position."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def markdown_table(contexts: list[str], columns: dict[str, list[str]]) -> str:
    """A table whose first column is the tail of each context and whose other columns are ``columns``
    (header -> one cell per row), cells escaped for markdown."""
    lines = ["| " + " | ".join(["context (tail)", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for row, context in enumerate(contexts):
        tail = ("…" if len(context) > CONTEXT_TAIL_CHARS else "") + context[-CONTEXT_TAIL_CHARS:]
        cells = [_cell(tail), *(_cell(values[row]) for values in columns.values())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class SampleRows:
    """Fixed held-out rows to sample from."""

    vectors: Tensor
    """[n, d] the rows' activations."""
    teacher: list[str]
    """The teacher's summary of each row (what SFT trains the AV towards)."""
    contexts: list[str]
    """Document text up to and including each row's token."""


def sample_rows(datamodule, count: int) -> SampleRows:
    """The first ``count`` rows of the validation half (fewer when it is smaller)."""
    dataset = datamodule.dataset("validation")
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    return SampleRows(torch.stack([item["vector"] for item in items]), [item["explanation"] for item in items],
                      [datamodule.cache.record(item["index"])["context"] for item in items])


def heldout_sample_table(pair: Pair, rows: SampleRows, max_new_tokens: int) -> tuple[str, float]:
    """Greedy explanations of ``rows`` as a table, and the CJK rate over all of them."""
    answers = pair.explain(rows.vectors, max_new_tokens=max_new_tokens, batch_size=len(rows.vectors))
    # An unparsable answer is shown raw: what the AV wrote instead is the useful part.
    shown = [text if text is not None else "*(no explanation tags)* " + answer
             for text, answer in zip(answers.explanations, answers.answers)]
    table = markdown_table(rows.contexts, {"teacher summary": rows.teacher, "AV explanation": shown,
                                           "CJK rate": [f"{cjk_rate([answer]):.3f}" for answer in answers.answers]})
    return table, cjk_rate(answers.answers)


def rollout_sample_table(answers: list[str], rewards: list[float], contexts: list[str], rows: int = 4) -> str:
    """The first ``rows`` answers of a rollout with their rewards."""
    count = min(rows, len(answers))
    return markdown_table(contexts[:count], {"answer": answers[:count],
                                             "reward": [f"{reward:.3f}" for reward in rewards[:count]]})
