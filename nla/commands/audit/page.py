"""``nla audit page``: one self-contained HTML file to search and filter the explanations of an audit.

The page holds the table's rows (``nla.data.audit_table``) and finds among them: full-text search
over the explanations, contexts or tokens (words and quoted phrases, or one regular expression),
filters by group, FVE range and valid answer, the hits paged with each shown in its context, the
token marked, and a link ``#t{text_index}-{position}`` that opens the row beside the hits with the
other explained positions of its text. It needs no network: style, script and data are inline (the
data gzip-compressed, ``nla.commands.audit.page_assets``) and a content security policy forbids
fetching.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
from pathlib import Path

import pyarrow as pa

from nla.commands.audit.page_assets import PAGE, SCRIPT, STYLE
from nla.core.errors import ConfigError
from nla.core.files import atomic_write_bytes
from nla.core.sizes import human_size
from nla.data.audit_table import MANIFEST, read_table

# Inline only: the page must open from disk with no network and must never fetch anything.
POLICY = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
TEXT_COLUMNS = ("text_id", "group", "role", "token", "context", "explanation")
SCORE_COLUMNS = ("fve", "cosine", "mse")


def encode(table: pa.Table) -> dict:
    """The rows column by column: each text column as its distinct values and one index per row into
    them (-1: null), scores with null for a non-finite value (JSON has no NaN), valid as 0 or 1."""
    data: dict = {}
    for name in TEXT_COLUMNS:
        encoded = table.column(name).combine_chunks().dictionary_encode()
        data[name] = {"values": encoded.dictionary.to_pylist(), "index": encoded.indices.fill_null(-1).to_pylist()}
    for name in ("text_index", "position"):
        data[name] = table.column(name).to_pylist()
    for name in SCORE_COLUMNS:
        data[name] = [value if math.isfinite(value) else None for value in table.column(name).to_pylist()]
    data["valid"] = [int(value) for value in table.column("valid").to_pylist()]
    return data


def pack(data: dict) -> str:
    """``data`` as base64 of gzip-compressed JSON: the text column of a 100,000-row audit shrinks
    several times over, and base64 cannot close the script element that holds it."""
    raw = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def manifest_fields(directory: Path) -> list[tuple[str, str]]:
    """The header's (label, value) pairs: the audit's settings and counts from ``audit.json`` (none
    when it is missing or unreadable: the rows alone make the page)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(manifest, dict):
        return []
    settings = manifest.get("settings") if isinstance(manifest.get("settings"), dict) else {}
    found = {**settings, **{key: value for key, value in manifest.items() if key not in ("kind", "settings")}}
    shown = []
    for key, value in found.items():
        value = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        shown.append((key, value if len(value) <= 300 else value[:300] + "\u2026"))
    return shown


def render_page(table: pa.Table, fields: list[tuple[str, str]], title: str, held: str = "") -> str:
    """The whole page for the rows of ``table`` (an audit table's schema), ``fields`` its header's
    (label, value) pairs, ``held`` a note on rows left out."""
    header = "".join(f"<dt>{html.escape(label)}</dt><dd>{html.escape(value)}</dd>" for label, value in fields)
    note = f'<p id="held">{html.escape(held)}</p>' if held else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body><header><h1>{html.escape(title)}</h1><dl class="run">{header}</dl>{note}</header>
<div class="controls">
<input id="search" type="search" placeholder="search: words, &quot;a phrase&quot;" aria-label="search">
<select id="field" aria-label="search in"><option value="explanation">in explanations</option>
<option value="context">in contexts</option><option value="token">in tokens</option>
<option value="all">in all three</option></select>
<label><input type="checkbox" id="regex"> regular expression</label>
<select id="group" aria-label="group"><option value="">every group</option></select>
<label>FVE from <input type="number" id="fve-min" step="any"> to <input type="number" id="fve-max" step="any"></label>
<select id="valid" aria-label="valid"><option value="all">valid and invalid</option>
<option value="valid">valid answers</option><option value="invalid">invalid answers</option></select>
</div>
<div id="status"><span><span id="count-rows">-</span> rows in <span id="count-texts">-</span> texts match,
of <span id="count-all">-</span> rows</span>
<span><button id="prev" type="button">previous</button> <span id="page-info"></span>
<button id="next" type="button">next</button></span><span id="search-error"></span></div>
<main><ol id="hits"></ol><aside id="detail"><p>Follow a hit's link to open it here.</p></aside></main>
<script type="text/plain" id="nla-data">{pack(encode(table))}</script>
<script>const PAGE = {PAGE};{SCRIPT}</script></body></html>
"""


def page(table: str, out: str, max_rows: int = 100_000, title: str | None = None) -> None:
    """Write one self-contained HTML page to search and filter the explanations of an nla audit.

    Args:
        table: The audit directory (``nla audit --out``).
        out: The HTML file to write, e.g. audit.html.
        max_rows: Most rows the page holds: the first, in the table's order (by text, then position).
        title: The page's title; default "nla audit: " and the directory's name.
    """
    page_path = Path(out)
    if page_path.is_dir() or not page_path.parent.is_dir():
        raise ConfigError("out", f"'{out}' is a directory or in a missing one; give a file such as audit.html in "
                          "an existing directory")
    if max_rows < 1:
        raise ConfigError("max_rows", f"is {max_rows}; it must be at least 1")
    rows = read_table(table)
    held = ""
    if rows.num_rows > max_rows:
        held = (f"This page holds the first {max_rows:,} of the audit's {rows.num_rows:,} rows; "
                "raise --max_rows for more.")
        rows = rows.slice(0, max_rows)
    directory = Path(table)
    body = render_page(rows, manifest_fields(directory), title or f"nla audit: {directory.resolve().name}", held)
    atomic_write_bytes(page_path, body.encode("utf-8"))
    texts = len(set(rows.column("text_index").to_pylist()))
    print(f"nla audit page: wrote {out} ({rows.num_rows:,} rows of {texts:,} texts, "
          f"{human_size(len(body.encode('utf-8')))}){' ' + held if held else ''}")
