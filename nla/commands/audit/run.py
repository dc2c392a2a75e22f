"""``nla audit``: explain the chosen positions of every text of a dataset with a pair, into a table.

Cheap first (``nla.commands.audit.plan``: sidecars, the target's tokenizer and config, the data, the
positions, the output directory, the cost), then the target (its first K+1 blocks) and the pair load
once and the shards are written (``nla.commands.audit.worker``). FVE per row is
``1 - mse / variance`` with the held-out rawvar the pair's sidecars record (``--variance`` replaces
it): a row's share of the variance a mean predictor leaves, on the scale of the pair's held-out FVE.
"""

from __future__ import annotations

import os

from transformers.utils import logging as hf_logging

from nla.commands.audit.manifest import begin
from nla.commands.audit.plan import Budget, estimate, prepare
from nla.commands.audit.worker import my_shards, run_shards, start_processes, stop_processes
from nla.core.errors import ConfigError
from nla.data.audit_data import Columns
from nla.data.audit_positions import PositionRule
from nla.data.audit_table import read_table
from nla.models.pair_loading import load_pair, pair_directories
from nla.models.target import load_target


def audit(
    out: str,
    data: str,
    pair: str | None = None,
    av: str | None = None,
    ar: str | None = None,
    base: str | None = None,
    layer: int | None = None,
    target: str | None = None,
    text_column: str = "text",
    messages_column: str | None = None,
    id_column: str | None = None,
    group_column: str | None = None,
    every: int = 1,
    roles: list[str] | None = None,
    pattern: str | None = None,
    max_per_text: int | None = None,
    max_tokens: int | None = None,
    truncate: bool = False,
    max_new_tokens: int = 150,
    batch_size: int = 16,
    texts_per_shard: int = 64,
    context_chars: int = 200,
    variance: float | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    dtype: str = "auto",
) -> None:
    """Explain chosen token positions of every text of a dataset with an NLA pair: the greedy
    explanation, the AR's reconstruction, FVE and cosine of each, into OUT/shards/*.parquet (resumable,
    data-parallel under torchrun). Prints the cost before starting.

    Args:
        out: The audit directory (created; a rerun with the same settings resumes it).
        data: A .jsonl, .parquet or .csv file, or a directory written by Dataset.save_to_disk.
        pair: An export directory holding ``av/`` and ``ar/``, instead of ``av`` and ``ar``.
        av: Directory of the verbalizer (an ``nla`` export or a released ``-av`` checkpoint).
        ar: Directory of the reconstructor that pairs with it.
        base: The base model a released pair's adapters (or truncated AR) go on, when the path their
            files name is not on this machine; also the default target.
        layer: The layer to explain, for a pair that serves several.
        target: The model whose activations are read; default the AV sidecar's ``base_model``.
        text_column: The column of plain texts.
        messages_column: The column of chat transcripts (lists of {role, content}), rendered with the
            target's chat template; replaces ``text_column``.
        id_column: A column of unique ids for the table's ``text_id``; default the row index.
        group_column: A column copied to the table's ``group`` (``nla audit query`` counts per group).
        every: Explain every EVERY-th of the tokens the other rules keep.
        roles: Only tokens of messages with these roles (e.g. ``'[assistant]'``); needs messages_column.
        pattern: Only tokens whose decoded text matches this regular expression.
        max_per_text: At most this many positions per text, evenly spread.
        max_tokens: Tokens read per text; default the target's context (max_position_embeddings).
        truncate: Read only the first ``max_tokens`` tokens of longer texts (default: refuse them).
        max_new_tokens: Cap on each explanation's length in tokens.
        batch_size: Positions explained and read back together.
        texts_per_shard: Texts per shard, the unit written, resumed and given to one process.
        context_chars: Characters of text ending with the token kept in the ``context`` column.
        variance: The FVE denominator; default the held-out variance the pair's sidecars record.
        rate: Explanations per second for the estimate before any model loads; default: measured on
            the first batch.
        dry_run: Print the estimate and stop, loading no model.
        overwrite: Delete an earlier audit in ``out`` (of any settings) and start again.
        dtype: The pair's weights' dtype (auto: the checkpoints').
    """
    av, ar = pair_directories(av, ar, pair)
    if rate is not None and not rate > 0:
        raise ConfigError("rate", f"is {rate}; give explanations per second, a positive number")
    plan = prepare(out, av, ar, base, layer, target, data,
                   Columns(text_column, messages_column, id_column, group_column),
                   PositionRule(every, tuple(roles) if roles is not None else None, pattern, max_per_text),
                   max_tokens, truncate, Budget(max_new_tokens, batch_size, texts_per_shard, context_chars),
                   variance, overwrite, dtype)
    left, done = estimate(plan)
    # A finished audit has nothing to load: every process sees the same count and stops here.
    finished = plan.resume and left.positions == 0
    processes = None if dry_run or finished else start_processes()
    world, talk = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")) == 0
    if talk:
        print(f"nla audit: {left.describe(max_new_tokens)}", flush=True)

    def report(measured: float, how: str = "measured on the first batch") -> None:
        if talk:
            per = f" per process, {world} processes" if world > 1 else ""
            seconds = left.positions / (measured * world)
            took = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:,.1f} min"
            print(f"nla audit: about {took} at {measured:.2f} explanations/s{per} ({how})", flush=True)

    if rate is not None:
        report(rate, "--rate")
    if dry_run:
        return
    if finished:
        if talk:
            print(f"nla audit: {read_table(plan.out).num_rows} rows in {plan.out}; the audit is complete",
                  flush=True)
        return
    bars = hf_logging.is_progress_bar_enabled()
    # Two models load per process; their bars would bury the audit's own.
    hf_logging.disable_progress_bar()
    try:
        model = load_target(plan.target, plan.d_model, processes.device, keep_layers=plan.layer + 1,
                            base=plan.base_model)
        loaded = load_pair(av, ar, dtype, base=base, layer=layer).to(processes.device)
        if processes.rank == 0:
            begin(plan.out, plan.settings, overwrite,
                  {"texts": len(plan.texts), "positions": sum(map(len, plan.positions))})
        # Every process reads the shards left to do only after an overwrite has removed the old ones.
        processes.barrier()
        run_shards(plan, loaded, model, my_shards(plan, done, processes), processes,
                   report if rate is None else lambda measured: None)
        processes.barrier()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        stop_processes(processes)
    if talk:
        print(f"nla audit: {read_table(plan.out).num_rows} rows in {plan.out}", flush=True)
