"""Small self-contained SVG charts, written as plain text: docs and reports need no plotting library,
and a figure diffs cleanly in git. ``render_svg`` draws line charts (the detail curve, TensorBoard
curves in ``tools/bench/plot_curves.py``); ``interval_chart`` draws values with their 95% intervals
(the round trip's predictors, the transforms' paired differences, the splice)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 190, 50, 55
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Series:
    label: str
    points: list[tuple[int, float]]
    """(step, value) sorted by step, one value per step."""


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




def interval_chart(title: str, rows: list[tuple[str, float, float, float]], x_label: str,
                   reference: float | None = 0.0) -> str:
    """One horizontal line per ``(label, value, low, high)``: a dot at the value and a whisker over
    its interval, labels on the left, and a dashed vertical line at ``reference`` (0: no gain, or the
    mean predictor). Non-finite ends are drawn as the value alone."""
    label_w, row_h = 230, 30
    height = TOP + BOTTOM + row_h * max(len(rows), 1)
    plot_w = WIDTH - label_w - 40
    ends = [v for _, value, low, high in rows for v in (value, low, high) if math.isfinite(v)]
    if reference is not None:
        ends.append(reference)
    ticks = nice_ticks(min(ends, default=0.0), max(ends, default=1.0))

    def x(value: float) -> float:
        return label_w + (value - ticks[0]) / (ticks[-1] - ticks[0]) * plot_w

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{WIDTH / 2:.1f}" y="{TOP / 2 + 6:.1f}" text-anchor="middle" font-size="16">{escape(title)}</text>',
    ]
    bottom = TOP + row_h * len(rows)
    for tick in ticks:
        parts.append(f'<line x1="{x(tick):.1f}" y1="{TOP}" x2="{x(tick):.1f}" y2="{bottom}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{x(tick):.1f}" y="{bottom + 18}" text-anchor="middle">{tick_text(tick)}</text>')
    if reference is not None:
        parts.append(f'<line x1="{x(reference):.1f}" y1="{TOP}" x2="{x(reference):.1f}" y2="{bottom}" '
                     f'stroke="#333" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{label_w + plot_w / 2:.1f}" y="{height - 12}" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    for index, (label, value, low, high) in enumerate(rows):
        y = TOP + row_h * index + row_h / 2
        color = COLORS[index % len(COLORS)]
        parts.append(f'<text x="{label_w - 10}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        if math.isfinite(low) and math.isfinite(high):
            parts.append(f'<line x1="{x(low):.1f}" y1="{y:.1f}" x2="{x(high):.1f}" y2="{y:.1f}" stroke="{color}" '
                         f'stroke-width="2"><title>{escape(label)}: {low:.4g} to {high:.4g}</title></line>')
        if math.isfinite(value):
            parts.append(f'<circle cx="{x(value):.1f}" cy="{y:.1f}" r="4" fill="{color}">'
                         f'<title>{escape(label)}: {value:.4g}</title></circle>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
