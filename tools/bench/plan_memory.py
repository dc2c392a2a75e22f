"""``nla plan``'s memory estimate against the measured peak of short real runs on this machine.

    python tools/bench/plan_memory.py [--sft configs/quickstart/sft.yaml] [--grpo configs/quickstart/grpo.yaml]
                                      [--sft-steps 2] [--sft-export DIR] [--out DIR] [--overrides KEY=VALUE ...]

Runs a few SFT steps of the SFT config (its export going to a scratch directory), then two GRPO steps
of the GRPO config from that export (AdamW allocates its moments at the first step, so the second
is the steady-state peak), each as its own process (``nla fit``), and reads each process's
peak resident memory (``ru_maxrss`` of the finished child) -- on a CPU the plan's "memory per
device" is host memory. ``nla plan`` is run on the same configs and overrides, and the table
prints both and the relative error. The caches the configs name are built by the SFT run when
missing (that run then takes longer; its peak is still the training peak, which is larger). Only
memory is meaningful on a shared machine; times are not reported.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def peak_rss_gib(command: list[str]) -> tuple[float, int, str]:
    """Peak RSS of ``command`` (GiB), its exit status and the tail of its output, in a fresh process so
    that ``RUSAGE_CHILDREN`` holds this command alone."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(r.returncode); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
             "print((r.stdout + r.stderr)[-3000:])")
    result = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, cwd=ROOT)
    lines = result.stdout.split("\n", 2)
    return int(lines[1]) / 1024**2, int(lines[0]), lines[2] if len(lines) > 2 else result.stderr


def planned_gib(config: str) -> float:
    """The plan's total per device for a config file."""
    result = subprocess.run([sys.executable, "-m", "nla", "plan", "--config", config], capture_output=True,
                            text=True, cwd=ROOT)
    match = re.search(r"^\s+total\s+([\d.]+) GiB", result.stdout, re.M)
    if not match:
        raise SystemExit(f"nla plan failed on {config}: {result.stdout[-500:]} {result.stderr[-500:]}")
    return float(match.group(1))


def with_overrides(config: str, overrides: list[str], out: Path, name: str) -> str:
    """A copy of ``config`` with dotted ``KEY=VALUE`` overrides applied (for ``nla plan``, which reads files)."""
    import yaml

    data = yaml.safe_load(Path(config).read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    path = out / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft", default="configs/quickstart/sft.yaml")
    parser.add_argument("--grpo", default="configs/quickstart/grpo.yaml", help="'' to measure SFT only")
    parser.add_argument("--sft-steps", type=int, default=2, help="optimizer steps (one micro-batch each: "
                        "accumulation does not change the peak, the gradient buffers are the same)")
    parser.add_argument("--sft-export", default=None, help="measure GRPO only, from this existing SFT export")
    parser.add_argument("--out", default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--overrides", nargs="*", default=[], help="dotted KEY=VALUE applied to both configs")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="nla-plan-memory-"))
    out.mkdir(parents=True, exist_ok=True)
    export = Path(args.sft_export) if args.sft_export else out / "sft-export"
    common = [f"trainer.default_root_dir={out}", "trainer.logger=false", "trainer.enable_checkpointing=false",
              "trainer.callbacks=null", "trainer.enable_progress_bar=false", *args.overrides]
    sft_overrides = [*common, f"trainer.max_steps={args.sft_steps}", "trainer.accumulate_grad_batches=1",
                     "trainer.limit_val_batches=0",
                     "model.init_args.sample_every_n_steps=0", f"model.init_args.export_dir={export}"]
    # Two steps: AdamW allocates its moments at the first step, after that step's activations are gone.
    grpo_overrides = [*common, "trainer.max_steps=2", f"model.init_args.sft_export={export}",
                      "model.init_args.export_dir=null", "model.init_args.final_export_dir=null",
                      "model.init_args.eval_every_n_steps=1000", "model.init_args.samples_every_n_steps=1000"]
    print("| stage | config | nla plan (GiB) | measured peak RSS (GiB) | plan error |")
    print("|---|---|---|---|---|", flush=True)
    stages = ([] if args.sft_export else [("SFT", args.sft, sft_overrides)]) + (
        [("GRPO", args.grpo, grpo_overrides)] if args.grpo else [])
    for stage, config, overrides in stages:
        path = with_overrides(config, overrides, out, f"{stage.lower()}.yaml")
        measured, status, tail = peak_rss_gib([sys.executable, "-m", "nla", "fit", "--config", path])
        if status != 0:
            raise SystemExit(f"{stage} run failed ({status}):\n{tail}")
        planned = planned_gib(path)
        print(f"| {stage} | `{config}` | {planned:.2f} | {measured:.2f} | {(planned - measured) / measured:+.0%} |",
              flush=True)


if __name__ == "__main__":
    main()
