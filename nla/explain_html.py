"""The round-trip explorer: one self-contained HTML page of ``nla explain``'s results.

``render_page`` is pure (results in, HTML out); ``write_page`` gathers what it needs and writes it.

Every token of the text is shown; explained ones are coloured by FVE (or cosine) and clickable, and a
side panel shows the clicked token's explanation and scores. The page needs no network: CSS, script
and data are inline, the fonts are the reader's own, and a content security policy forbids fetching.
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
from nla.errors import ConfigError
from nla.export import read_pair_meta
from nla.modules.backbone import BackboneArgs, load_tokenizer

_STYLE = """
body{margin:0;font-family:system-ui,sans-serif;color:#222;background:#fafafa}
header{padding:12px 20px;background:#fff;border-bottom:1px solid #ddd}
header h1{font-size:18px;margin:0 0 8px}
dl.run{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:2px 12px;margin:0;font-size:13px}
dl.run dt{color:#666}dl.run dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
main{display:flex;gap:20px;padding:16px 20px}
#text{flex:3;line-height:2;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:15px}
#text span{border-radius:3px;padding:1px 0}
#text .tok{cursor:pointer;border:1px solid #bbb}
#text .tok.selected{outline:2px solid #1a4fd6}
#text .plain{color:#999}
aside{flex:2;position:sticky;top:0;align-self:flex-start;background:#fff;border:1px solid #ddd;padding:12px;
 min-width:260px}
aside table{font-size:13px;border-collapse:collapse;margin-bottom:10px}
aside td{padding:2px 8px 2px 0}aside td:first-child{color:#666}
#p-explanation{white-space:pre-wrap;font-size:14px;line-height:1.4}
.controls{margin:10px 0 0;font-size:13px;display:flex;gap:16px;align-items:center;flex-wrap:wrap}
.legend{display:flex;align-items:center;gap:6px}
.legend .bar{width:180px;height:12px;border:1px solid #bbb;
 background:linear-gradient(to right,hsl(0,85%,78%),hsl(60,85%,78%),hsl(120,85%,78%))}
"""

_SCRIPT = """
const data = JSON.parse(document.getElementById('nla-data').textContent);
let metric = data.has_fve ? 'fve' : 'cosine';
function fmt(value) { return value === null ? '-' : value.toFixed(4); }
// The scale spans this page's own range: small or young pairs sit far below FVE 0 (and on
// low-variance layers cosines bunch near 1), where a fixed scale would paint every token alike.
function paint() {
  const values = data.rows.map(function (row) { return row[metric]; }).filter(function (v) { return v !== null; });
  const low = values.length ? Math.min.apply(null, values) : null;
  const high = values.length ? Math.max.apply(null, values) : null;
  document.querySelectorAll('#text .tok').forEach(function (span) {
    const value = data.rows[Number(span.dataset.row)][metric];
    const t = high > low ? (value - low) / (high - low) : 1;
    span.style.backgroundColor = value === null ? '' : 'hsl(' + Math.round(120 * t) + ',85%,78%)';
  });
  document.getElementById('metric-name').textContent = metric === 'fve' ? 'FVE' : 'cosine';
  document.getElementById('legend-low').textContent = fmt(low);
  document.getElementById('legend-high').textContent = fmt(high);
}
function show(index) {
  const row = data.rows[index];
  document.querySelectorAll('#text .tok.selected').forEach(function (s) { s.classList.remove('selected'); });
  document.querySelector('#text .tok[data-row="' + index + '"]').classList.add('selected');
  document.getElementById('p-token').textContent = JSON.stringify(row.token);
  document.getElementById('p-position').textContent = String(row.position);
  document.getElementById('p-fve').textContent = fmt(row.fve);
  document.getElementById('p-cosine').textContent = fmt(row.cosine);
  document.getElementById('p-mse').textContent = fmt(row.mse);
  document.getElementById('p-parsed').textContent = row.parsed ? 'yes' : 'no (no closing tag)';
  document.getElementById('p-explanation').textContent = row.explanation;
}
document.querySelectorAll('#text .tok').forEach(function (span) {
  const index = Number(span.dataset.row);
  span.addEventListener('click', function () { show(index); });
  span.addEventListener('keydown', function (event) {
    if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); show(index); }
  });
});
document.querySelectorAll('input[name=metric]').forEach(function (input) {
  input.addEventListener('change', function () { metric = input.value; paint(); });
});
paint();
"""

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


def run_fields(av: str, ar: str, av_meta, target: str, variance: float | None, version: str, date: str,
               rows) -> list[tuple[str, str]]:
    """The header's (label, value) pairs: which pair, which target, how it injects, how well it did."""
    summary = fve_summary(rows)
    marker = av_meta.tokens
    return [
        ("AV", av), ("AR", ar), ("target", target), ("base model", av_meta.base_model or "-"),
        ("layer K", str(av_meta.extraction_layer_index)), ("d", str(av_meta.d_model)),
        ("injection scale", _fmt(av_meta.extraction.injection_scale)),
        ("marker", f"{marker.injection_char!r} (id {marker.injection_token_id})"),
        ("stage", av_meta.stage or "-"),
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


def _token_span(index: int, token: str, row: int | None) -> str:
    # A newline token would be an invisible line break and an empty one a zero-width span: both get a
    # visible stand-in so they can be seen and clicked.
    shown = html.escape(token.replace("\n", "\u21b5\n") or "\u2205")
    if row is None:
        return f'<span class="plain" data-position="{index}">{shown}</span>'
    return f'<span class="tok" data-row="{row}" data-position="{index}" tabindex="0" role="button">{shown}</span>'


def render_page(rows, tokens: list[str], fields: list[tuple[str, str]], title: str = "nla explain") -> str:
    """The whole page: ``tokens`` is every token of the text in order, ``rows`` the explained ones
    (``ExplainedToken``, each naming its position), ``fields`` the header's (label, value) pairs."""
    by_position = {row.position: i for i, row in enumerate(rows)}
    if len(by_position) != len(rows) or any(not 0 <= p < len(tokens) for p in by_position):
        raise ValueError("every explained row needs a distinct position inside the token list")
    has_fve = any(row.fve is not None for row in rows)
    # JSON has no NaN: a diverged score travels as null and shows as '-', uncoloured.
    data = {"rows": [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(row).items()}
                     for row in rows], "has_fve": has_fve}
    spans = "".join(_token_span(i, token, by_position.get(i)) for i, token in enumerate(tokens))
    header = "".join(f"<dt>{html.escape(label)}</dt><dd>{html.escape(value)}</dd>" for label, value in fields)
    fve_input = '<input type="radio" name="metric" value="fve"' + (" checked" if has_fve else " disabled") + ">"
    cos_input = '<input type="radio" name="metric" value="cosine"' + ("" if has_fve else " checked") + ">"
    panel = "".join(f'<tr><td>{label}</td><td id="p-{key}">-</td></tr>' for key, label in (
        ("token", "token"), ("position", "position"), ("fve", "FVE"), ("cosine", "cosine"),
        ("mse", "normalised MSE"), ("parsed", "closing tag")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body><header><h1>{html.escape(title)}</h1><dl class="run">{header}</dl>
<div class="controls"><span>colour by:</span>
<label>{fve_input} FVE</label><label>{cos_input} cosine</label>
<span class="legend"><span id="metric-name">FVE</span> <span id="legend-low"></span><span class="bar"></span>
<span id="legend-high"></span> (lowest to highest on this page)</span>
<span>grey tokens were not explained; click a coloured one</span></div></header>
<main><div id="text">{spans}</div>
<aside id="panel"><table>{panel}</table>
<div id="p-explanation">Click a coloured token to see its explanation.</div></aside></main>
<script type="application/json" id="nla-data">{embed_json(data)}</script>
<script>{_SCRIPT}</script></body></html>
"""


def check_page_path(path: str) -> Path:
    """The page's path, checked before any model loads (``ConfigError`` naming ``html``)."""
    page = Path(path)
    if page.is_dir():
        raise ConfigError("html", f"'{path}' is a directory; give a file name such as explain.html")
    if not page.parent.is_dir():
        raise ConfigError("html", f"directory '{page.parent}' does not exist; create it or choose another path")
    return page


def write_page(path: str, av: str, ar: str, text: str, rows, variance: float | None, target: str) -> Path:
    """Render ``nla explain``'s results for ``text`` and write the page atomically."""
    page = check_page_path(path)
    (_, av_meta), _ = read_pair_meta(av, ar)
    tokenizer = load_tokenizer(BackboneArgs(target))
    # Tokenized as nla.explain reads the target (default special tokens), so positions line up.
    tokens = [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in tokenizer(text)["input_ids"]]
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    fields = run_fields(av, ar, av_meta, target, variance, __version__, date, rows)
    atomic_write_bytes(page, render_page(rows, tokens, fields).encode("utf-8"))
    return page
