"""Scalar curves of TensorBoard runs as a self-contained SVG line chart, plus a markdown table.

    python tools/bench/plot_curves.py RUN [RUN ...] [--tags val/fve] [--labels sft grpo]
        [--title "Held-out FVE"] --out docs/figures/NAME.svg

Each RUN is an event file or a directory searched recursively for event files; all the files of one
RUN form one curve per tag (a resumed run that logged a step again keeps the later value). The SVG is
built as plain text, so docs need no plotting library and the figure diffs cleanly in git.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

WIDTH, HEIGHT = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 190, 50, 55
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Series:
    label: str
    points: list[tuple[int, float]]
    """(step, value) sorted by step, one value per step."""


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


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if high <= low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    # The tolerance keeps float noise (0.3 / 0.1 = 2.9999...) from adding a tick below the data.
    first = math.floor(low / step + 1e-9) * step
    ticks: list[float] = []
    while len(ticks) < 2 or ticks[-1] < high - step * 1e-9:
        ticks.append(round(first + len(ticks) * step, 12))
    return ticks


def tick_text(value: float) -> str:
    return f"{value:.6g}"


def render_svg(series: list[Series], title: str, y_label: str, x_label: str = "step") -> str:
    """The chart as an SVG document: one polyline (plus point markers) per series, with axes, ticks,
    grid lines, a legend on the right and the title on top. Non-finite values are left out."""
    finite = [[(s, v) for s, v in item.points if math.isfinite(v)] for item in series]
    steps = [s for points in finite for s, _ in points] or [0]
    values = [v for points in finite for _, v in points] or [0.0]
    x_ticks = nice_ticks(min(steps), max(steps))
    y_ticks = nice_ticks(min(values), max(values))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(step: float) -> float:
        return LEFT + (step - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * plot_w

    def y(value: float) -> float:
        return TOP + plot_h - (value - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP / 2 + 6:.1f}" text-anchor="middle" font-size="16">'
        f'{escape(title)}</text>',
    ]
    for tick in x_ticks:
        px = x(tick)
        parts.append(f'<line x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{TOP + plot_h}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{px:.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{tick_text(tick)}</text>')
    for tick in y_ticks:
        py = y(tick)
        parts.append(f'<line x1="{LEFT}" y1="{py:.1f}" x2="{LEFT + plot_w}" y2="{py:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{LEFT - 8}" y="{py + 4:.1f}" text-anchor="end">{tick_text(tick)}</text>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 12}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text x="18" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 18 {TOP + plot_h / 2:.1f})">{escape(y_label)}</text>')
    for index, (item, points) in enumerate(zip(series, finite)):
        color = COLORS[index % len(COLORS)]
        coords = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}">'
                     f'<title>{escape(item.label)}</title></polyline>')
        parts.extend(f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}"/>' for s, v in points)
        legend_y = TOP + 10 + index * 20
        parts.append(f'<line x1="{LEFT + plot_w + 15}" y1="{legend_y}" x2="{LEFT + plot_w + 40}" y2="{legend_y}" '
                     f'stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{LEFT + plot_w + 46}" y="{legend_y + 4}">{escape(item.label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


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
