"""The quickstart's held-out comparison and its printed report."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nla.core.maths import orthogonal_to
from nla.evaluation.bootstrap import Interval, RowVariance, difference_interval, document_resamples, fve_interval
from nla.evaluation.round_trip import mean_predictor_mse, row_mse, shuffled_mse


@dataclass
class Row:
    """One line of the comparison table."""

    name: str
    fve: Interval
    valid_rate: float | None = None
    """Share of held-out rows whose greedy answer parsed (None: no AV involved)."""
    valid_fve: float | None = None
    """FVE over the rows whose answer parsed only: a diagnostic that separates how well explanations
    carry the vector from how often the AV fails to finish one (the headline counts those as orthogonal)."""


@dataclass
class Comparison:
    rows: list[Row]
    differences: list[Row]
    count: int
    documents: int
    variance: float
    split: str = "test"
    """The held-out half the rows come from."""


def heldout_rows(datamodule, count: int, split: str = "test") -> tuple[torch.Tensor, list[int]]:
    """The vectors ``[count, d]`` (float32) and cache indices of the first ``count`` rows of a held-out
    half (``test`` or ``validation``), in evaluation order."""
    vectors, indices = [], []
    for batch in datamodule.dataloader(split):
        keep = min(len(batch["vector"]), count - len(indices))
        vectors.append(batch["vector"][:keep])
        indices += batch["index"][:keep].tolist()
        if len(indices) >= count:
            break
    return torch.cat(vectors).float(), indices


def _pair_round_trip(name: str, directory: str, datamodule, vectors, max_new_tokens: int, micro: int):
    from functools import partial

    from rich.progress import track

    from nla.models.pair_loading import load_pair

    pair = load_pair(Path(directory) / "av", Path(directory) / "ar", dtype=datamodule.target_args.dtype)
    progress = partial(track, description=f"{name}: greedy AV -> AR on {len(vectors)} held-out rows")
    result = pair.round_trip(vectors, max_new_tokens=max_new_tokens, batch_size=datamodule.eval_batch_size,
                             reconstruct_batch_size=micro, progress=progress)
    del pair
    gc.collect()
    return result


def _frozen_read(sft_export: str, grpo_export: str, trip, vectors: torch.Tensor, dtype: str, micro: int) -> np.ndarray:
    """Per-row MSE of the GRPO AV's explanations read by the SFT stage's AR, which never trained on
    them: a gain that only the co-adapted AR can read does not show here. Rows without an answer
    stay orthogonal, as in the round trip."""
    from nla.models.pair_loading import load_reader

    reader = load_reader(Path(grpo_export) / "av", Path(sft_export) / "ar", dtype=dtype)
    predictions = orthogonal_to(vectors)
    kept = np.flatnonzero(trip.valid)
    if len(kept):
        predictions[kept] = reader.reconstruct([trip.explanations[i] for i in kept], batch_size=micro).cpu().float()
    del reader
    gc.collect()
    return row_mse(predictions, vectors)


FROZEN = "after GRPO, SFT's AR"
"""The row of the GRPO AV's explanations read by the frozen SFT reconstructor."""


def comparison_rows(datamodule, sft_export: str, grpo_export: str, max_new_tokens: int, micro: int,
                    eval_rows: int, resamples: int, seed: int, split: str = "test") -> Comparison:
    """Mean predictor, shuffled control, SFT pair, GRPO pair and the GRPO AV read by the SFT AR, on
    the same held-out rows."""
    vectors, indices = heldout_rows(datamodule, eval_rows, split)
    documents = np.array([datamodule.cache.record(i)["doc_id"] for i in indices])
    # Each bootstrap draw divides by the variance of the rows it drew.
    variance = RowVariance(vectors)
    draws = document_resamples(documents, resamples, seed)

    sft = _pair_round_trip("SFT pair", sft_export, datamodule, vectors, max_new_tokens, micro)
    grpo = _pair_round_trip("GRPO pair", grpo_export, datamodule, vectors, max_new_tokens, micro)
    mse = {
        "mean predictor": mean_predictor_mse(vectors, datamodule.cache.stats("ar_sft")["mean"]),
        "shuffled (GRPO pair)": shuffled_mse(grpo.predictions, vectors, seed),
        "after SFT": row_mse(sft.predictions, vectors),
        "after GRPO": row_mse(grpo.predictions, vectors),
        FROZEN: _frozen_read(sft_export, grpo_export, grpo, vectors, datamodule.target_args.dtype, micro),
    }
    pairs = {"shuffled (GRPO pair)": grpo, "after SFT": sft, "after GRPO": grpo, FROZEN: grpo}
    rows = []
    for name, values in mse.items():
        trip = pairs.get(name)
        kept = None if trip is None else np.array(trip.valid)
        valid_fve = None if kept is None or not kept.any() else float(1 - values[kept].mean() / variance())
        rows.append(Row(name, fve_interval(values, variance, draws), None if trip is None else trip.valid_rate,
                        valid_fve))
    differences = [
        Row("SFT - shuffled", difference_interval(mse["after SFT"], mse["shuffled (GRPO pair)"], variance, draws)),
        Row("GRPO - SFT", difference_interval(mse["after GRPO"], mse["after SFT"], variance, draws)),
        Row("GRPO (SFT's AR) - SFT", difference_interval(mse[FROZEN], mse["after SFT"], variance, draws)),
    ]
    return Comparison(rows, differences, len(vectors), len(set(documents.tolist())), variance(), split)


def valid_rate_warning(comparison: Comparison) -> str | None:
    """A line when GRPO lowered the valid-answer rate: each unfinished answer then scores as an
    orthogonal guess, which can outweigh more informative finished ones (the valid-only column
    shows which of the two forces won)."""
    rates = {row.name: row for row in comparison.rows}
    sft, grpo = rates.get("after SFT"), rates.get("after GRPO")
    if sft is None or grpo is None or sft.valid_rate is None or grpo.valid_rate is None:
        return None
    if grpo.valid_rate >= sft.valid_rate:
        return None
    return (f"GRPO lowered the valid-answer rate ({sft.valid_rate:.0%} -> {grpo.valid_rate:.0%}); every unfinished "
            f"answer counts as orthogonal, so compare the valid-only FVE ({_signed(sft.valid_fve)} -> "
            f"{_signed(grpo.valid_fve)}) to see which force won")


def no_gain_note(comparison: Comparison) -> str | None:
    """A line when GRPO did not beat SFT beyond noise: at the quickstart's size one run says little
    about the next, so the reader is sent to the runs over seeds and corpora that the shipped setting
    was chosen on."""
    gain = next((row.fve for row in comparison.differences if row.name == "GRPO - SFT"), None)
    if gain is None or gain.low > 0:
        return None
    return ("GRPO did not beat SFT beyond noise in this run; at this size that varies with the seed and the corpus "
            "(docs/benchmarks.md, 'GRPO across seeds and corpora': the config before the KL term and the greedy "
            "answer left the loss gained in all six seed x corpus runs; today's has not been run over seeds yet). "
            "Run other seeds (--training_seed N) before reading one run.")


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def print_report(comparison: Comparison, seconds: dict[str, float], examples: list[str], paths: dict[str, str]) -> None:
    width = max(len(row.name) for row in [*comparison.rows, *comparison.differences])
    if examples:
        print("\nExample explanations (final pair, last three tokens of each text):\n")
    for table in examples:
        print(table + "\n")
    half = ("test half, which no training choice saw" if comparison.split == "test"
            else f"{comparison.split} half, which training evaluated on")
    print(f"Held-out FVE: greedy AV -> AR on {comparison.count} rows from {comparison.documents} documents of the "
          f"held-out {half}\n(baseline variance {comparison.variance:.4f}; 95% "
          f"intervals resample documents; an answer that does not finish counts as an orthogonal prediction, MSE 2)\n")
    print(f"  {'predictor':<{width}}  {'FVE [95% interval]':<26}  valid answers  FVE on valid answers only")
    for row in comparison.rows:
        valid = "-" if row.valid_rate is None else f"{row.valid_rate:.0%}"
        valid_fve = "-" if row.valid_fve is None else f"{row.valid_fve:+.3f}"
        print(f"  {row.name:<{width}}  {str(row.fve):<26}  {valid:<13}  {valid_fve}")
    print("\n  paired differences")
    for row in comparison.differences:
        verdict = "beyond noise" if row.fve.low > 0 or row.fve.high < 0 else "within noise"
        print(f"  {row.name:<{width}}  {str(row.fve):<26}  {verdict}")
    warning = valid_rate_warning(comparison)
    if warning:
        print(f"\n  warning: {warning}")
    note = no_gain_note(comparison)
    if note:
        print(f"\n  note: {note}")
    print("\nWall time per stage")
    for stage, value in seconds.items():
        print(f"  {stage:<28} {_minutes(value)}")
    print()
    for name, value in paths.items():
        print(f"{name}: {value}")
