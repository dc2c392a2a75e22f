"""Scalar curves of TensorBoard runs as a self-contained SVG line chart, plus a markdown table.

    python tools/bench/plot_curves.py RUN [RUN ...] [--tags val/fve] [--labels sft grpo]
        [--title "Held-out FVE"] --out docs/figures/NAME.svg

Each RUN is an event file or a directory searched recursively for event files; all the files of one
RUN form one curve per tag (a resumed run that logged a step again keeps the later value). The SVG is
built as plain text, so docs need no plotting library and the figure diffs cleanly in git.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nla.evaluation.svg import Series, render_svg


def event_files(run: Path) -> list[Path]:
    if run.is_file():
        return [run]
    files = sorted(run.rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"{run}: no TensorBoard event files (events.out.tfevents.*) here or below")
    return files


def read_series(runs: list[Path], tags: list[str], labels: list[str] | None = None) -> list[Series]:
    """One series per (run, tag); ``labels`` name the runs (default: the paths as given)."""
    labels = labels or [str(run) for run in runs]
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    series = []
    for run, label in zip(runs, labels):
        # step -> (wall time, value): when files overlap on a step, the later write wins.
        found: dict[str, dict[int, tuple[float, float]]] = {tag: {} for tag in tags}
        available: set[str] = set()
        for path in event_files(Path(run)):
            # size_guidance 0 keeps every point; the default samples long runs down to 1000.
            accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
            accumulator.Reload()
            available.update(accumulator.Tags()["scalars"])
            for tag in tags:
                if tag in accumulator.Tags()["scalars"]:
                    for event in accumulator.Scalars(tag):
                        if event.step not in found[tag] or event.wall_time >= found[tag][event.step][0]:
                            found[tag][event.step] = (event.wall_time, event.value)
        for tag in tags:
            if not found[tag]:
                raise ValueError(f"{run}: no scalar tag {tag!r}; it has {', '.join(sorted(available)) or 'none'}")
            name = label if len(tags) == 1 else f"{label} {tag}"
            series.append(Series(name, [(step, value) for step, (_, value) in sorted(found[tag].items())]))
    return series


def markdown_table(series: list[Series]) -> str:
    """One row per step that any series logged, one column per series (blank where it has no value)."""
    steps = sorted({step for item in series for step, _ in item.points})
    columns = [dict(item.points) for item in series]
    lines = ["| step | " + " | ".join(item.label for item in series) + " |",
             "|---:|" + "---:|" * len(series)]
    for step in steps:
        cells = [f"{column[step]:.4g}" if step in column else "" for column in columns]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[Path], out: Path, tags: list[str] = ("val/fve",), labels: list[str] | None = None,
         title: str | None = None) -> str:
    """Write the SVG of ``tags`` over ``runs`` to ``out`` and return the markdown table of its points."""
    tags = list(tags)
    series = read_series(runs, tags, labels)
    y_label = tags[0] if len(tags) == 1 else "value"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_svg(series, title or f"{', '.join(tags)} vs step", y_label), encoding="utf-8")
    return markdown_table(series)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="event files or run directories")
    parser.add_argument("--tags", nargs="+", default=["val/fve"], help="scalar tags to plot (default val/fve)")
    parser.add_argument("--labels", nargs="+", help="one legend name per run (default: the paths)")
    parser.add_argument("--title", help="default: the tags and 'vs step'")
    parser.add_argument("--out", type=Path, required=True, help="the SVG to write, e.g. docs/figures/NAME.svg")
    args = parser.parse_args()
    print(plot(args.runs, args.out, args.tags, args.labels, args.title), end="")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
