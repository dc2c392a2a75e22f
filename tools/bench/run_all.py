"""Every benchmark in one run, written to one results file that docs/benchmarks.md quotes.

    python tools/bench/run_all.py [--only cache packing ...] [--skip quickstart] [--out docs/results/latest.md]

Runs each script of tools/bench (and the quickstart, whose FVE table is a benchmark too) as its own
process, in the order below, and writes their printed tables into one markdown file headed by the
machine (CPU, cores, GPU, torch), the date and the git commit. A failing benchmark is recorded with
its exit status and the tail of its output, and the others still run. The file is replaced
atomically at the end, so an interrupted run leaves the previous results in place.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = Path(__file__).resolve().parent

BENCHMARKS: dict[str, tuple[list[str], str]] = {
    "residual": ([str(BENCH / "residual_extraction.py")], "early-exit residual reader against a full forward"),
    "cache": ([str(BENCH / "cache_throughput.py")], "activation cache throughput"),
    "cache_check": ([str(BENCH / "cache_check.py")], "cost of validating a cache: value range against checksums"),
    "ar_prompt": ([str(BENCH / "ar_prompt.py")], "the untrained AR under two prompt shapes (quickstart cache)"),
    "packing": ([str(BENCH / "packing.py"), "--config", "configs/quickstart/sft.yaml"], "padding waste of SFT batches"),
    "grpo_step": ([str(BENCH / "grpo_step.py"), "--max-new-tokens", "64", "--steps", "2"],
                  "GRPO step breakdown and sampling vs HF generate"),
    "scale": ([str(BENCH / "scale.py")], "peak memory and step time of SFT and GRPO per scale setting"),
    "quickstart": (["-m", "nla", "quickstart"], "the quickstart: held-out FVE table and stage times"),
    "grpo_robustness": ([str(BENCH / "grpo_robustness.py")],
                        "GRPO against SFT, 3 seeds x 2 corpora (about 2.5 hours on 2 cores)"),
}


def machine() -> list[str]:
    import torch

    lines = [f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}, torch {torch.__version__}"]
    if torch.cuda.is_available():
        lines.append(f"- GPU: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}")
    else:
        lines.append("- GPU: none")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if commit.returncode == 0:
        lines.append(f"- commit: {commit.stdout.strip()}")
    return lines


def run(name: str, argv: list[str]) -> tuple[str, int, float]:
    print(f"== {name}: python {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    process = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = process.stdout if process.returncode == 0 else (process.stdout + process.stderr)[-4000:]
    print(output, flush=True)
    return output, process.returncode, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[], help="leave these out")
    parser.add_argument("--out", default="docs/results/latest.md", help="the results file (markdown)")
    args = parser.parse_args()
    chosen = [name for name in (args.only or BENCHMARKS) if name not in args.skip]
    sections = ["# Benchmark results", "", "Written by `python tools/bench/run_all.py`.", "", *machine(), ""]
    for name in chosen:
        argv, title = BENCHMARKS[name]
        output, status, seconds = run(name, argv)
        state = "" if status == 0 else f" — FAILED with exit status {status}"
        sections += [f"## {name}: {title}{state}", "", f"`python {' '.join(argv)}` ({seconds:.0f} s)", "",
                     "```", output.rstrip(), "```", ""]
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, delete=False, suffix=".tmp") as stream:
        stream.write("\n".join(sections))
    os.replace(stream.name, out)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
