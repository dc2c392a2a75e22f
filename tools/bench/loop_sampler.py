"""Greedy answers of an exported AV on held-out rows, finished rows dropped from the batch or kept.

    python tools/bench/loop_sampler.py --fit_config runs/quickstart/grpo/version_0/config.yaml \
        --av runs/quickstart/sft/export/av [--rows 64] [--batch 16] [--max_new_tokens 96] [--repeats 2]

The quickstart's held-out evaluation and its GRPO rollouts decode batches of 16 rows with the ``loop``
engine; one answer that runs to the cap used to keep all 16 rows decoding. This times both ways on
the same rows (alternating, so a busy host slows both alike), checks that they write the same tokens,
and counts the row-steps each computes (rows in the batch summed over decode steps), the figure a
CPU's time follows and a busy host cannot change.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from unittest import mock

import torch
from heldout_fve import datamodule_from  # this script's directory is on the path when run

from nla.models.pair_loading import load_verbalizer
from nla.models import adapters, sampling
from nla.models.verbalizer import Verbalizer
from nla.commands.quickstart_report import heldout_rows


def decode(verbalizer: Verbalizer, prompt: list[int], batches: list, max_new_tokens: int) -> tuple[list, float, int]:
    """Tokens, seconds and row-steps of greedy answers to every batch of vectors."""
    row_steps = []
    handle = adapters.decoder_layers(verbalizer.model)[0].register_forward_pre_hook(
        lambda module, args, kwargs: row_steps.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True)
    tokens, started = [], time.perf_counter()
    try:
        with torch.no_grad():
            for vectors in batches:
                tokens += verbalizer.sample(vectors, [prompt] * len(vectors), max_new_tokens=max_new_tokens,
                                            greedy=True, sampler="loop").tokens
    finally:
        handle.remove()
    # The first forward of each batch is its prefill, not a decode step.
    return tokens, time.perf_counter() - started, sum(row_steps) - sum(len(vectors) for vectors in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit_config", required=True, help="a run's saved config (its data section is read)")
    parser.add_argument("--av", required=True, help="an exported AV directory")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    datamodule = datamodule_from(args.fit_config)
    datamodule.eval_batch_size = args.batch
    datamodule.prepare_data()
    datamodule.setup("validate")
    batches = heldout_rows(datamodule, args.rows, args.split)[0].split(args.batch)
    verbalizer, prompts = load_verbalizer(args.av, dtype="float32")

    figures = {"dropped": [], "kept": []}
    answers, work = {}, {}
    for _ in range(args.repeats):
        for name in figures:
            keep_all = mock.patch.object(sampling, "_compactable", lambda cache: False)
            with keep_all if name == "kept" else contextlib.nullcontext():
                answers[name], seconds, work[name] = decode(verbalizer, prompts.av_prompt_ids, batches,
                                                            args.max_new_tokens)
            figures[name].append(seconds)
    lengths = sorted(len(tokens) for tokens in answers["dropped"])
    print(f"{len(lengths)} rows in batches of {args.batch}, cap {args.max_new_tokens}: answer lengths "
          f"median {lengths[len(lengths) // 2]}, max {lengths[-1]}, "
          f"{sum(length == args.max_new_tokens for length in lengths)} at the cap; same tokens both ways: "
          f"{answers['dropped'] == answers['kept']}")
    print("| finished rows | decode row-steps | seconds per pass (best of repeats) |")
    print("|---|---|---|")
    for name, seconds in figures.items():
        print(f"| {name} | {work[name]} | {min(seconds):.1f} |")
    print(f"kept / dropped: row-steps {work['kept'] / work['dropped']:.2f}x, "
          f"seconds {min(figures['kept']) / min(figures['dropped']):.2f}x")


if __name__ == "__main__":
    main()
