"""GRPO against SFT over seeds and corpora: the quickstart's pipeline once per (corpus, seed), each run
in its own process, and one table of the paired differences.

    python tools/bench/grpo_robustness.py --corpora austen bible --seeds 0 1 2
    python tools/bench/grpo_robustness.py --corpora austen bible --seeds 0 --reuse_sft --split validation \
        --label kl0.05 --grpo_overrides=--model.init_args.kl_coef=0.05

A run is ``python -m nla quickstart`` with ``corpus.path`` and a cache directory per corpus and
``training_seed`` (the SFT data order, GRPO's rollouts), and prints, per run: GRPO - SFT on the
held-out rows with its paired 95% interval over documents, both pairs' valid-answer rates and
valid-only FVE, and the wall time. ``--reuse_sft`` trains GRPO alone, from the SFT export an earlier
run of the same (corpus, seed) saved here: the way to compare GRPO settings, on ``--split
validation`` so that the test half stays unseen by the choice; ``--evaluate_kept`` then reads the
test half with the exports a ``--keep_grpo`` run of that label kept, without training again (the
runs are deterministic, so this is the pair a rerun would train). Every run's result is appended to
``--results`` (JSON lines) and its SFT export kept under ``--keep``; the table is built from all
results of the chosen label, so an interrupted sweep is resumed by running it again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SFT_EXPORT = Path("runs/quickstart/sft/export")
GRPO_EXPORT = Path("runs/quickstart/grpo/export")
GRPO_BEST = Path("runs/quickstart/grpo/best")
GRPO_LOGS = Path("runs/quickstart/grpo/version_0")


def corpus_overrides(corpus: str) -> list[str]:
    """The quickstart's data section on another named corpus, each corpus with its own cache."""
    suffix = "" if corpus == "austen" else f"-{corpus}"
    return [f"--data.init_args.source.corpus.path={corpus}",
            f"--data.init_args.source.cache.directory=cache/quickstart-smollm2-L10{suffix}"]


def child(args: argparse.Namespace) -> None:
    """One run in this process: the quickstart, its comparison written to ``args.json``."""
    from nla.commands.quickstart import quickstart

    started = time.perf_counter()
    comparison = quickstart(overrides=corpus_overrides(args.corpus), grpo_overrides=args.grpo_overrides,
                            training_seed=args.seed, examples=[], reuse_sft=args.reuse_sft,
                            skip_training=args.evaluate_kept, eval_split=args.split, eval_rows=args.eval_rows,
                            grpo_pair=args.grpo_pair)
    rows = {row.name: row for row in comparison.rows}
    difference = {row.name: row for row in comparison.differences}["GRPO - SFT"].fve
    result = {
        "label": args.label, "corpus": args.corpus, "seed": args.seed, "split": args.split, "grpo_pair": args.grpo_pair,
        "reuse_sft": args.reuse_sft, "evaluated_kept": args.evaluate_kept, "grpo_overrides": args.grpo_overrides,
        "rows": comparison.count,
        "documents": comparison.documents, "minutes": (time.perf_counter() - started) / 60,
        "grpo_minus_sft": [difference.value, difference.low, difference.high],
        **{f"{key}_{name}": getattr(rows[title], field) for key, title in (("sft", "after SFT"), ("grpo", "after GRPO"))
           for name, field in (("valid", "valid_rate"), ("valid_fve", "valid_fve"))},
        **{key: [rows[title].fve.value, rows[title].fve.low, rows[title].fve.high]
           for key, title in (("sft", "after SFT"), ("grpo", "after GRPO"), ("shuffled", "shuffled (GRPO pair)"))},
    }
    Path(args.json).write_text(json.dumps(result))


def keep_grpo_run(kept: Path, label: str) -> None:
    """The run's final GRPO export in ``kept/grpo-LABEL``, its best-on-validation export in
    ``kept/grpo-LABEL-best`` and its curves (TensorBoard events and config, not the checkpoints) in
    ``kept/grpo-LABEL-logs``: the next run replaces all three here, and the curves (valid rate,
    lengths, KL per step) are what says why a run lost."""
    for source, target, ignore in ((GRPO_EXPORT, kept / f"grpo-{label}", None),
                                   (GRPO_BEST, kept / f"grpo-{label}-best", None),
                                   (GRPO_LOGS, kept / f"grpo-{label}-logs", shutil.ignore_patterns("checkpoints"))):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=ignore)


def run(corpus: str, seed: int, args: argparse.Namespace) -> dict:
    """One run in a fresh process (so no memory or global state carries over between runs)."""
    kept = Path(args.keep) / f"{corpus}-seed{seed}"
    needed = {SFT_EXPORT: kept / "sft"} if args.reuse_sft or args.evaluate_kept else {}
    suffix = "-best" if args.grpo_pair == "best" else ""
    if args.evaluate_kept:
        needed[GRPO_BEST if suffix else GRPO_EXPORT] = kept / f"grpo-{args.label}{suffix}"
    for export, source in needed.items():
        if not source.is_dir():
            raise SystemExit(f"no export of {corpus}, seed {seed} in {source}: run it first (--keep_grpo for GRPO)")
        shutil.rmtree(export, ignore_errors=True)
        shutil.copytree(source, export)
    name = f"{args.label}{suffix}.{corpus}.{seed}"
    target = Path(args.results).with_suffix(f".{name}.json")
    command = [sys.executable, __file__, "--child", "--corpus", corpus, "--seed", str(seed), "--json", str(target),
               "--label", args.label, "--split", args.split, "--eval_rows", str(args.eval_rows),
               "--grpo_pair", args.grpo_pair,
               *(["--reuse_sft"] if args.reuse_sft else []), *(["--evaluate_kept"] if args.evaluate_kept else []),
               *(f"--grpo_overrides={value}" for value in args.grpo_overrides)]
    log = Path(args.results).with_suffix(f".{name}.log")
    with open(log, "w") as stream:
        done = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{corpus}, seed {seed}: the run failed (exit {done.returncode}); see {log}")
    if not (args.reuse_sft or args.evaluate_kept):
        shutil.rmtree(kept / "sft", ignore_errors=True)
        shutil.copytree(SFT_EXPORT, kept / "sft")
    if args.keep_grpo and not args.evaluate_kept:
        keep_grpo_run(kept, args.label)
    result = json.loads(target.read_text())
    with open(args.results, "a") as stream:
        stream.write(json.dumps(result) + "\n")
    return result


def interval(values: list[float]) -> str:
    return f"{values[0]:+.3f} [{values[1]:+.3f}, {values[2]:+.3f}]"


def table(results: list[dict]) -> str:
    lines = ["| corpus | seed | split (rows / documents) | after SFT | after GRPO | GRPO - SFT | valid SFT -> GRPO "
             "| valid-only FVE SFT -> GRPO | minutes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        verdict = "beyond noise" if r["grpo_minus_sft"][1] > 0 or r["grpo_minus_sft"][2] < 0 else "within noise"
        lines.append(
            f"| {r['corpus']} | {r['seed']} | {r['split']} ({r['rows']} / {r['documents']}) | {interval(r['sft'])} "
            f"| {interval(r['grpo'])} | {interval(r['grpo_minus_sft'])}, {verdict} "
            f"| {r['sft_valid']:.0%} -> {r['grpo_valid']:.0%} | {r['sft_valid_fve']:+.3f} -> {r['grpo_valid_fve']:+.3f} "
            f"| {r['minutes']:.1f}{' (evaluation only)' if r.get('evaluated_kept') else ''} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpora", nargs="+", default=["austen", "bible"], help="named corpora (nla.data.corpora)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--label", default="shipped", help="name of this setting in the results")
    parser.add_argument("--grpo_overrides", action="append", default=[],
                        help="a dotted override of the GRPO config (repeatable), e.g. --grpo_overrides=--model.init_args.kl_coef=0.05")
    parser.add_argument("--reuse_sft", action="store_true", help="train GRPO only, from the kept SFT export")
    parser.add_argument("--evaluate_kept", action="store_true",
                        help="no training: evaluate the SFT and GRPO exports kept by a --keep_grpo run of --label")
    parser.add_argument("--split", default="test", choices=["test", "validation"])
    parser.add_argument("--grpo_pair", default="final", choices=["final", "best"],
                        help="the GRPO export compared: the last step's or the best on the validation half")
    parser.add_argument("--eval_rows", type=int, default=192)
    parser.add_argument("--results", default="runs/robustness/results.jsonl")
    parser.add_argument("--keep", default="runs/robustness", help="where each run's SFT export is kept")
    parser.add_argument("--keep_grpo", action="store_true",
                        help="also keep each run's final and best GRPO exports and its curves")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    for corpus in args.corpora:
        for seed in args.seeds:
            result = run(corpus, seed, args)
            print(f"{corpus}, seed {seed}: GRPO - SFT {interval(result['grpo_minus_sft'])} "
                  f"({result['minutes']:.1f} min)", flush=True)
    results = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
    chosen = [r for r in results if r["label"] == args.label and r["split"] == args.split
              and r.get("grpo_pair", "final") == args.grpo_pair and r["corpus"] in args.corpora and r["seed"] in args.seeds]
    print(f"\n{args.label}: GRPO ({args.grpo_pair} pair) against SFT on the held-out {args.split} half\n")
    print(table(chosen))


if __name__ == "__main__":
    main()
