"""The audit's work: one shard of whole texts at a time, read through the target, explained and read
back by the pair, scored, and written atomically.

Shards are fixed by the settings alone: shard g holds texts ``g x texts_per_shard`` onwards, in
dataset order, and is named by g (``part-{rank}-{g}``). Under ``torchrun`` process r takes shards
g = r, r + world, ... (gloo: the processes only meet at two barriers). A shard's positions go through
``Pair.round_trip`` in batches of ``batch_size`` in the same order whatever the number of processes,
and greedy decoding has no randomness, so a resumed or data-parallel run computes every row with
the same batches, hence the same bits, as one uninterrupted process (given the same kernels: the
same device and thread count). A shard is written whole or not at all; a rerun skips the shards
whose texts a complete shard holds, and a kill loses at most the shard in flight.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nla.commands.audit.plan import AuditPlan
from nla.core.maths import ORTHOGONAL_MSE, cosine, normalized_mse
from nla.data.audit_table import write_shard
from nla.models.pair import Pair
from nla.models.target import residuals

BARRIER_TIMEOUT = timedelta(hours=24)
"""How long a process waits at the last barrier for the slowest one to finish its shards."""


@dataclass(frozen=True)
class Processes:
    """This process's place in a data-parallel run (one process: rank 0 of 1)."""

    rank: int
    """This process."""
    world: int
    """Processes in the run."""
    device: torch.device
    """Where this process runs its models."""
    joined: bool = False
    """This process set up the process group (and so takes it down)."""

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def start_processes() -> Processes:
    """Join the ``torchrun`` group when there is one (gloo, which runs on CPU and beside GPUs alike)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    joined = world > 1 and not dist.is_initialized()
    if joined:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return Processes(int(os.environ.get("RANK", "0")), world, device, joined)


def stop_processes(processes: Processes) -> None:
    if processes.joined:
        dist.destroy_process_group()


def my_shards(plan: AuditPlan, done: set[int], processes: Processes) -> list[int]:
    """The shards this process writes: its share, less those a complete shard already holds (a shard
    is written whole, so one text of it there means all of it is)."""
    shards = []
    for number, texts in enumerate(plan.groups()):
        if number % processes.world != processes.rank:
            continue
        if any(plan.positions[i] for i in texts) and not any(i in done for i in texts):
            shards.append(number)
    return shards


def shard_rows(plan: AuditPlan, pair: Pair, target, texts: range,
               progress: Callable[[Iterable], Iterable] | None = None) -> list[dict]:
    """The table's rows of one shard's texts."""
    vectors, where = [], []
    for index in texts:
        if not plan.positions[index]:
            continue
        tokens = plan.tokens(index)
        vectors.append(residuals(target, plan.layer, tokens.ids, plan.positions[index]))
        where += [(index, tokens, position) for position in plan.positions[index]]
    trip = pair.round_trip(torch.cat(vectors), max_new_tokens=plan.budget.max_new_tokens,
                           batch_size=plan.budget.batch_size, progress=progress)
    mse = normalized_mse(trip.predictions, trip.targets).tolist()
    cos = cosine(trip.predictions, trip.targets).tolist()
    rows = []
    for (index, tokens, position), explanation, row_mse, row_cos in zip(where, trip.explanations, mse, cos):
        text, valid = plan.texts[index], explanation is not None
        # A row without an answer scores as its orthogonal stand-in; write the exact figures.
        row_mse, row_cos = (row_mse, row_cos) if valid else (ORTHOGONAL_MSE, 0.0)
        rows.append({
            "text_index": index, "text_id": text.text_id, "group": text.group, "role": tokens.roles[position],
            "position": position, "token": tokens.tokens[position],
            "context": tokens.context(position, plan.budget.context_chars), "explanation": explanation,
            "mse": row_mse, "fve": 1 - row_mse / plan.variance, "cosine": row_cos, "valid": valid,
        })
    return rows


class Meter:
    """The progress bar (rank 0 only) and the first batch's rate, reported once."""

    def __init__(self, total: int, processes: Processes, report: Callable[[float], None]) -> None:
        self.batch_size = 0
        self.rate: float | None = None
        self.report = report
        self.bar = Progress(TextColumn("nla audit"), BarColumn(), MofNCompleteColumn(), TextColumn("positions"),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            console=Console(file=sys.stderr), disable=processes.rank != 0)
        self.task = self.bar.add_task("audit", total=total)

    def batches(self, rows: int, batch_size: int) -> Callable[[Iterable], Iterable]:
        """A ``progress`` for ``Pair.round_trip`` over ``rows`` positions: times and counts each batch."""
        def timed(starts: Iterable) -> Iterable:
            for start in starts:
                began = time.perf_counter()
                yield start
                # Resumed when the round trip asks for the next batch: this one is done.
                size = min(batch_size, rows - start)
                if self.rate is None:
                    self.rate = size / max(time.perf_counter() - began, 1e-9)
                    self.report(self.rate)
                self.bar.advance(self.task, size)
        return timed


def run_shards(plan: AuditPlan, pair: Pair, target, shards: list[int], processes: Processes,
               report: Callable[[float], None]) -> int:
    """Write this process's shards; the number of rows written."""
    groups = plan.groups()
    total = sum(len(plan.positions[i]) for number in shards for i in groups[number])
    meter = Meter(total, processes, report)
    written = 0
    with meter.bar:
        for number in shards:
            rows_in_shard = sum(len(plan.positions[i]) for i in groups[number])
            rows = shard_rows(plan, pair, target, groups[number], meter.batches(rows_in_shard, plan.budget.batch_size))
            write_shard(plan.out, processes.rank, number, rows)
            written += len(rows)
    return written
