"""Greedy AV samples on fixed held-out rows, as a markdown table for TensorBoard's text tab.

The same rows are sampled every time, so successive tables show how one activation's explanation
changes over training. Each row shows the tail of the text the activation was read from, the teacher's
summary the AV was trained towards, the AV's own explanation and its CJK rate (high when the AV sees
the literal marker instead of the vector).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nla.data.datasets import Collator
from nla.padding import pad_token_id
from nla.modules.verbalizer import Verbalizer, cjk_rate

CONTEXT_TAIL_CHARS = 200
"""Characters of left context shown: enough to read the last sentence before the position."""


@dataclass
class SampleRows:
    """Fixed held-out rows to sample from."""

    batch: dict
    """The rows as one ``heldout`` batch (``av_prompt_ids``/``av_prompt_mask`` left-padded, ``vector``)."""
    contexts: list[str]
    """Document text up to and including each row's token."""


def sample_rows(datamodule, count: int) -> SampleRows:
    """The first ``count`` held-out rows (fewer when the split is smaller)."""
    dataset = datamodule.dataset("validation")
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    batch = Collator("heldout", pad_token_id(datamodule.tokenizer))(items)
    contexts = [datamodule.cache.record(item["index"])["context"] for item in items]
    return SampleRows(batch, contexts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


@torch.no_grad()
def sample_table(verbalizer: Verbalizer, rows: SampleRows, max_new_tokens: int) -> tuple[str, float]:
    """Sample greedily for ``rows`` and return (markdown table, CJK rate over all samples). The AV is
    put in eval mode for the call and its previous mode restored."""
    device = next(verbalizer.parameters()).device
    batch = rows.batch
    was_training = verbalizer.training
    verbalizer.eval()
    try:
        samples = verbalizer.sample(
            batch["vector"].to(device),
            batch["av_prompt_ids"].to(device),
            batch["av_prompt_mask"].to(device),
            max_new_tokens=max_new_tokens,
            greedy=True,
        )
    finally:
        verbalizer.train(was_training)
    lines = ["| context (tail) | teacher summary | AV explanation | CJK rate |", "|---|---|---|---|"]
    for context, teacher, parsed, text in zip(rows.contexts, batch["explanation"], samples.parsed, samples.texts):
        tail = ("…" if len(context) > CONTEXT_TAIL_CHARS else "") + context[-CONTEXT_TAIL_CHARS:]
        # An unparsable answer is shown raw: what the AV wrote instead is the useful part.
        shown = _cell(parsed) if parsed is not None else "*(no explanation tags)* " + _cell(text)
        lines.append(f"| {_cell(tail)} | {_cell(teacher)} | {shown} | {cjk_rate([text]):.3f} |")
    return "\n".join(lines), cjk_rate(samples.texts)
