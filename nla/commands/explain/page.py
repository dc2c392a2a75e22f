"""The round-trip explorer: one self-contained HTML page of ``nla explain``'s results.

``render_page`` is pure (results in, HTML out); ``write_page`` gathers what it needs and writes it.

Every token of the text is shown; explained ones are coloured by FVE (or cosine) on a fixed scale
(``nla.commands.explain.page_assets``) and clickable. A side panel shows the clicked token's explanation, its
scores, a slider over the detail curve (the AR reading only the first n tokens) and a flag when the
explanation's quoted final token contradicts the real one; hovering previews a token's explanation,
and a list under the text shows every explanation at once, to compare neighbours. Given a
``nla steer`` result, a panel shows its original and steered continuations. The page needs no
network: CSS, script and data are inline, the fonts are the reader's own, and a content security
policy forbids fetching.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from nla import __version__
from nla.data.storage import atomic_write_bytes
from nla.core.errors import ConfigError
from nla.commands.explain.page_assets import SCRIPT, STYLE
from nla.models.pair_loading import read_pair_sidecars
from nla.models.loading import ModelArgs, load_tokenizer
from nla.models.target import tokenize

# Inline only: the page must open from disk with no network and must never fetch anything.
_POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def fve_summary(rows) -> dict:
    """Mean and median FVE and cosine over the explained tokens (FVE None when not recorded)."""
    fves = [row.fve for row in rows if row.fve is not None]
    cosines = [row.cosine for row in rows]
    return {
        "explained": len(rows),
        "fve_mean": statistics.fmean(fves) if fves else None,
        "fve_median": statistics.median(fves) if fves else None,
        "cosine_mean": statistics.fmean(cosines),
        "cosine_median": statistics.median(cosines),
    }


def run_fields(av: str, ar: str, av_sidecar, target: str, variance: float | None, version: str, date: str,
               rows) -> list[tuple[str, str]]:
    """The header's (label, value) pairs: which pair, which target, how it injects, how well it did."""
    summary = fve_summary(rows)
    marker = av_sidecar.tokens
    return [
        ("AV", av), ("AR", ar), ("target", target), ("base model", av_sidecar.base_model or "-"),
        ("layer K", str(av_sidecar.extraction_layer_index)), ("d", str(av_sidecar.d_model)),
        ("injection scale", _fmt(av_sidecar.extraction.injection_scale)),
        ("injection", f"the vector {av_sidecar.extraction.site.describe()}"),
        ("marker", f"{marker.injection_char!r} (id {marker.injection_token_id})"),
        ("stage", av_sidecar.stage or "-"),
        ("FVE baseline", "not recorded" if variance is None else f"{variance:.4g} (held-out rawvar)"),
        ("FVE mean / median", f"{_fmt(summary['fve_mean'])} / {_fmt(summary['fve_median'])}"),
        ("cosine mean / median", f"{_fmt(summary['cosine_mean'])} / {_fmt(summary['cosine_median'])}"),
        ("explained tokens", str(summary["explained"])), ("nla version", version), ("date", date),
    ]


def embed_json(value) -> str:
    """JSON safe inside ``<script>``: no ``<``, ``>`` or ``&`` survives, so no text can close the tag
    or open a comment; JSON.parse reads the escapes back."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _token_span(index: int, token: str, row: int | None, flagged: bool = False) -> str:
    # A newline token would be an invisible line break and an empty one a zero-width span: both get a
    # visible stand-in so they can be seen and clicked.
    shown = html.escape(token.replace("\n", "\u21b5\n") or "\u2205")
    if row is None:
        return f'<span class="plain" data-position="{index}">{shown}</span>'
    kind = "tok flagged" if flagged else "tok"
    return f'<span class="{kind}" data-row="{row}" data-position="{index}" tabindex="0" role="button">{shown}</span>'


DEFINITION = (
    "Per-token FVE = 1 - MSE / Var. MSE is the normalised MSE, 2(1 - cos), between the real activation "
    "and the AR's reconstruction from this token's explanation; Var is the held-out rawvar the sidecar "
    "records. FVE 0 scores like always predicting the mean activation (white); below 0 is worse than "
    "that (red, dashed outline); 1 is exact (green). Colours are the same on every page."
)


def _steering_section(steering: dict | None) -> str:
    if not steering:
        return ""
    runs = "".join(f"<h3>{html.escape(label)}</h3><pre id=\"steer-{key}\">{html.escape(text)}</pre>"
                   for key, label, text in steering_runs(steering))
    watched = "".join(
        f"<tr><td>{html.escape(w['word'])}</td><td>{html.escape(json.dumps(w['token'], ensure_ascii=False))}</td>"
        + "".join(f"<td>{w[key]:.4f}</td>" for key in ("before", "steered")) + "</tr>"
        for w in steering.get("watch", []))
    table = ("<table id=\"steer-watch\"><tr><th>word</th><th>first token</th><th>p before</th><th>p steered</th></tr>"
             f"{watched}</table>") if watched else ""
    edit = html.escape(steering["edited_explanation"])
    return (f"<section id=\"steering\"><h2>Steering at position {int(steering['position'])} "
            f"({html.escape(steering['mode'])} mode)</h2><p>edited explanation:</p><pre id=\"steer-edit\">{edit}</pre>"
            f"{runs}{table}</section>")


def steering_runs(steering: dict) -> list[tuple[str, str, str]]:
    """(key, label, continuation) of a ``nla steer`` result, in reading order."""
    labels = {"clean": "clean run (no patch)", "original": "patched with the original explanation's reconstruction",
              "steered": "patched with the edited explanation (steered)"}
    return [(key, labels[key], text) for key, text in steering["continuations"].items() if key in labels]


def render_page(rows, tokens: list[str], fields: list[tuple[str, str]], title: str = "nla explain",
                steering: dict | None = None) -> str:
    """The whole page: ``tokens`` is every token of the text in order, ``rows`` the explained ones
    (``ExplainedToken``, each naming its position), ``fields`` the header's (label, value) pairs,
    ``steering`` a ``nla steer`` result to show beside them."""
    by_position = {row.position: i for i, row in enumerate(rows)}
    if len(by_position) != len(rows) or any(not 0 <= p < len(tokens) for p in by_position):
        raise ValueError("every explained row needs a distinct position inside the token list")
    has_fve = any(row.fve is not None for row in rows)
    data = {"rows": [finite(asdict(row)) for row in rows], "has_fve": has_fve}
    spans = "".join(_token_span(i, token, by_position.get(i), flagged=by_position.get(i) is not None
                                and rows[by_position[i]].flag is not None) for i, token in enumerate(tokens))
    header = "".join(f"<dt>{html.escape(label)}</dt><dd>{html.escape(value)}</dd>" for label, value in fields)
    fve_input = '<input type="radio" name="metric" value="fve"' + (" checked" if has_fve else " disabled") + ">"
    cos_input = '<input type="radio" name="metric" value="cosine"' + ("" if has_fve else " checked") + ">"
    panel = "".join(f'<tr><td>{label}</td><td id="p-{key}">-</td></tr>' for key, label in (
        ("token", "token"), ("position", "position"), ("fve", "FVE"), ("cosine", "cosine"),
        ("mse", "normalised MSE"), ("parsed", "closing tag"), ("flag", "final-token claim")))
    listed = "".join(
        f'<tr data-row="{i}"><td>{row.position}</td><td>{html.escape(json.dumps(row.token, ensure_ascii=False))}</td>'
        f'<td>{_fmt(row.fve if has_fve else row.cosine)}</td><td>{"contradicts" if row.flag is not None else ""}</td>'
        f'<td class="explanation">{html.escape(row.explanation)}</td></tr>' for i, row in enumerate(rows))
    score = "FVE" if has_fve else "cosine"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body><header><h1>{html.escape(title)}</h1><dl class="run">{header}</dl>
<div class="controls"><span>colour by:</span>
<label>{fve_input} FVE</label><label>{cos_input} cosine</label>
<span class="legend"><span class="metric-name">FVE</span> <span id="legend-low">-1 or below</span>
<span class="bar"><span class="zero"></span></span><span id="legend-high">1</span>
<span id="legend-zero">(white: 0 = the mean predictor)</span></span>
<span>grey tokens were not explained; click or hover a coloured one</span></div>
<p class="definition" id="definition">{html.escape(DEFINITION)}</p></header>
<main><div id="text">{spans}</div>
<aside id="panel"><table>{panel}</table>
<div id="detail-box" style="display:none"><label for="detail">detail: the AR reads the first
<span id="detail-tokens"></span> tokens, <span class="metric-name">FVE</span> <span id="detail-value"></span></label>
<input type="range" id="detail" min="0" max="0" value="0" step="1">
<div id="detail-text"><span id="detail-read"></span><span id="detail-rest"></span></div></div>
<div id="p-explanation">Click a coloured token to see its explanation.</div></aside></main>
{_steering_section(steering)}
<section id="list"><h2>All explained tokens</h2><table><tr><th>position</th><th>token</th><th>{score}</th>
<th>flag</th><th>explanation</th></tr>{listed}</table></section>
<div id="preview"></div>
<script type="application/json" id="nla-data">{embed_json(data)}</script>
<script>{SCRIPT}</script></body></html>
"""


def finite(value):
    """``value`` with every non-finite float replaced by None: JSON has no NaN, so a diverged score
    travels as null and shows as '-', uncoloured."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def read_steering(path: str, text: str) -> dict:
    """A ``nla steer --json`` result for the page, checked to be about ``text``."""
    try:
        steering = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError("steering", f"cannot read {path} as JSON ({type(error).__name__}); write it with "
                          "nla steer --json true > FILE") from None
    if not isinstance(steering, dict) or not {"text", "position", "mode", "continuations"} <= set(steering):
        raise ConfigError("steering", f"{path} is not a nla steer result; write it with nla steer --json true > FILE")
    if steering["text"] != text:
        raise ConfigError("steering", f"{path} steers another text; run nla steer on the same --text")
    return steering


def check_page_path(path: str) -> Path:
    """The page's path, checked before any model loads (``ConfigError`` naming ``html``)."""
    page = Path(path)
    if page.is_dir():
        raise ConfigError("html", f"'{path}' is a directory; give a file name such as explain.html")
    if not page.parent.is_dir():
        raise ConfigError("html", f"directory '{page.parent}' does not exist; create it or choose another path")
    return page


def write_page(path: str, av: str, ar: str, text: str, rows, variance: float | None, target: str,
               steering: dict | None = None, layer: int | None = None) -> Path:
    """Render ``nla explain``'s results for ``text`` and write the page atomically (``layer``: the one
    explained, for a pair that serves several)."""
    page = check_page_path(path)
    av_sidecar, _ = read_pair_sidecars(av, ar, layer)
    tokenizer = load_tokenizer(ModelArgs(target))
    # Tokenized as nla.models.target reads the target (default special tokens), so positions line up.
    tokens = tokenize(tokenizer, text).tokens
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    fields = run_fields(av, ar, av_sidecar, target, variance, __version__, date, rows)
    atomic_write_bytes(page, render_page(rows, tokens, fields, steering=steering).encode("utf-8"))
    return page
