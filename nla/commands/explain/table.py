"""The plain-text table ``nla explain`` prints."""

from __future__ import annotations

NO_BASELINE = (
    "FVE not shown: the AR sidecar records no training.heldout_variance (the held-out rawvar baseline); "
    "cos and normalised MSE only (MSE = 2(1 - cos): 0 same direction, 2 orthogonal)"
)


def _one_line(text: str) -> str:
    return " / ".join(part.strip() for part in text.splitlines() if part.strip())


def render_table(rows, variance: float | None, target: str) -> str:
    """One line per row (position, token, cos, MSE, FVE, explanation) under a header that says which
    target and which FVE baseline were used."""
    if variance is None:
        lines = [f"target: {target}", NO_BASELINE]
    else:
        lines = [f"target: {target}", f"FVE = 1 - MSE / {variance:.4g} (held-out rawvar from the sidecar)"]
    width = max(len(repr(row.token)) for row in rows)
    lines.append(f"{'pos':>5}  {'token':<{width}}  {'cos':>7}  {'mse':>6}  {'fve':>7}  explanation")
    for row in rows:
        fve = "-" if row.fve is None else f"{row.fve:.3f}"
        note = "" if row.parsed else "[no closing tag] "
        lines.append(
            f"{row.position:>5}  {repr(row.token):<{width}}  {row.cosine:>7.4f}  {row.mse:>6.4f}  {fve:>7}  "
            f"{note}{_one_line(row.explanation)}"
        )
    return "\n".join(lines)
