"""The audit page's inline style sheet and script (``nla.commands.audit.page`` embeds both).

The rows arrive as gzip-compressed JSON in base64, unpacked with the browser's own
``DecompressionStream`` (no network), column by column: each text column is a list of its distinct
values and one index per row into it (-1: null), so a search tests each distinct explanation once
and a row's match is a lookup. Only the current page of hits (``PAGE`` rows) is ever in the DOM, so
a page of 100,000 rows stays as quick as one of a hundred. Every text of the table reaches the DOM
through ``textContent`` or text nodes, never as markup: explanations are model output.
"""

from nla.commands.explain.page_assets import HEADER_STYLE

PAGE = 50
"""Hits shown at once."""

STYLE = HEADER_STYLE + """#held{font-size:13px;color:#a60;margin:6px 0 0}
.controls{display:flex;flex-wrap:wrap;gap:10px 16px;align-items:center;padding:10px 20px;font-size:13px;
 background:#fff;border-bottom:1px solid #ddd;position:sticky;top:0;z-index:2}
#search{width:320px;font-size:14px;padding:3px 6px}
.controls input[type=number]{width:80px}
#status{padding:6px 20px;font-size:13px;display:flex;gap:16px;align-items:center;flex-wrap:wrap}
#search-error{color:#a00}
main{display:flex;gap:20px;padding:0 20px 20px}
#hits{flex:3;list-style:none;margin:0;padding:0;min-width:0}
.hit{background:#fff;border:1px solid #ddd;border-radius:4px;padding:8px 10px;margin:0 0 8px}
.hit.selected{border-color:#1a4fd6;box-shadow:0 0 0 1px #1a4fd6}
.meta{font-size:12px;color:#555;display:flex;gap:12px;flex-wrap:wrap;margin-bottom:4px}
.meta .invalid{color:#a00}
.context,.explanation{white-space:pre-wrap;word-break:break-word}
.context{font-family:ui-monospace,monospace;font-size:13px;color:#444;background:#f4f4f4;padding:3px 5px;
 border-radius:3px;margin-bottom:4px}
.explanation{font-size:14px;line-height:1.4}
mark{background:#ffe27a}mark.token{background:#b9d3ff;outline:1px solid #1a4fd6}
aside#detail{flex:2;position:sticky;top:60px;align-self:flex-start;background:#fff;border:1px solid #ddd;
 padding:10px 12px;min-width:260px;max-height:85vh;overflow:auto;font-size:13px}
#detail table{border-collapse:collapse;margin:6px 0}#detail td{padding:1px 8px 1px 0}
#detail td:first-child{color:#666}
#detail .positions a{font-family:ui-monospace,monospace;margin:0 2px;white-space:pre}
#detail .positions a.current{background:#b9d3ff}
"""

# PAGE is defined before this script by the page (``const PAGE = ...;``).
SCRIPT = """
const state = {rows: 0, hits: new Int32Array(0), page: 0, terms: [], selected: -1};
let data = null;
const $ = function (id) { return document.getElementById(id); };

async function unpack() {
  const binary = atob($('nla-data').textContent.trim());
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) { bytes[i] = binary.charCodeAt(i); }
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
  return JSON.parse(await new Response(stream).text());
}
function text(column, row) {
  const at = data[column].index[row];
  return at < 0 ? null : data[column].values[at];
}
function fmt(value) { return value === null ? '-' : value.toFixed(4); }
function escapeRegExp(word) { return word.replace(/[.*+?^${}()|[\\]\\\\]/g, '\\\\$&'); }
// The query as regular expressions, all of which a hit must match (in the searched fields): quoted
// phrases and words, or one regular expression as written.
function terms(query, regex) {
  if (!query.trim()) { return []; }
  if (regex) { return [new RegExp(query, 'i')]; }
  const found = [];
  query.replace(/"([^"]+)"|(\\S+)/g, function (_, phrase, word) {
    found.push(new RegExp(escapeRegExp(phrase || word), 'i'));
  });
  return found;
}
function fields() {
  const chosen = $('field').value;
  return chosen === 'all' ? ['explanation', 'token', 'context'] : [chosen];
}
function update(keepPage) {
  let compiled;
  try {
    compiled = terms($('search').value, $('regex').checked);
    $('search-error').textContent = '';
  } catch (error) {
    $('search-error').textContent = 'not a regular expression: ' + error.message;
    compiled = [];
  }
  state.terms = compiled;
  // Per field and term: which distinct values match, tested once each.
  const tables = fields().map(function (column) {
    return compiled.map(function (term) {
      const values = data[column].values;
      const hit = new Uint8Array(values.length);
      for (let v = 0; v < values.length; v++) { hit[v] = term.test(values[v]) ? 1 : 0; }
      return hit;
    });
  });
  const indexes = fields().map(function (column) { return data[column].index; });
  const group = $('group').value === '' ? null : Number($('group').value);
  const valid = $('valid').value;
  const low = $('fve-min').value === '' ? null : Number($('fve-min').value);
  const high = $('fve-max').value === '' ? null : Number($('fve-max').value);
  const hits = new Int32Array(state.rows);
  let count = 0;
  for (let row = 0; row < state.rows; row++) {
    if (group !== null && data.group.index[row] !== group) { continue; }
    if (valid !== 'all' && (data.valid[row] === 1) !== (valid === 'valid')) { continue; }
    const fve = data.fve[row];
    if ((low !== null || high !== null) && fve === null) { continue; }
    if ((low !== null && fve < low) || (high !== null && fve > high)) { continue; }
    let all = true;
    for (let t = 0; t < compiled.length && all; t++) {
      let any = false;
      for (let f = 0; f < tables.length && !any; f++) {
        const at = indexes[f][row];
        any = at >= 0 && tables[f][t][at] === 1;
      }
      all = any;
    }
    if (all) { hits[count++] = row; }
  }
  state.hits = hits.subarray(0, count);
  let texts = 0;
  for (let i = 0; i < count; i++) {
    if (i === 0 || data.text_index[state.hits[i]] !== data.text_index[state.hits[i - 1]]) { texts++; }
  }
  $('count-rows').textContent = String(count);
  $('count-texts').textContent = String(texts);
  if (!keepPage) { state.page = 0; }
  render();
}
// ``value`` into ``parent`` as text nodes, the stretches the search terms match in <mark>.
function marked(parent, value, highlight) {
  const spans = [];
  if (highlight) {
    state.terms.forEach(function (term) {
      const global = new RegExp(term.source, 'gi');
      let found;
      while ((found = global.exec(value)) !== null) {
        if (found[0].length === 0) { global.lastIndex++; continue; }
        spans.push([found.index, found.index + found[0].length]);
      }
    });
  }
  spans.sort(function (a, b) { return a[0] - b[0]; });
  let at = 0;
  spans.forEach(function (span) {
    if (span[1] <= at) { return; }
    const start = Math.max(span[0], at);
    parent.appendChild(document.createTextNode(value.slice(at, start)));
    const mark = document.createElement('mark');
    mark.textContent = value.slice(start, span[1]);
    parent.appendChild(mark);
    at = span[1];
  });
  parent.appendChild(document.createTextNode(value.slice(at)));
}
// The context, the explained token (its end) marked.
function context(parent, row, highlight) {
  const value = text('context', row) || '';
  const token = text('token', row) || '';
  const ends = token.length > 0 && value.endsWith(token);
  marked(parent, ends ? value.slice(0, value.length - token.length) : value,
         highlight && fields().indexOf('context') >= 0);
  if (ends) {
    const mark = document.createElement('mark');
    mark.className = 'token';
    mark.textContent = token;
    parent.appendChild(mark);
  }
}
function anchor(row) { return 't' + data.text_index[row] + '-' + data.position[row]; }
function element(tag, className, value) {
  const node = document.createElement(tag);
  if (className) { node.className = className; }
  if (value !== undefined) { node.textContent = value; }
  return node;
}
function render() {
  const pages = Math.max(1, Math.ceil(state.hits.length / PAGE));
  state.page = Math.min(state.page, pages - 1);
  $('page-info').textContent = 'page ' + (state.page + 1) + ' of ' + pages;
  $('prev').disabled = state.page === 0;
  $('next').disabled = state.page >= pages - 1;
  const list = $('hits');
  list.replaceChildren();
  const first = state.page * PAGE;
  for (let i = first; i < Math.min(first + PAGE, state.hits.length); i++) {
    const row = state.hits[i];
    const item = element('li', 'hit' + (row === state.selected ? ' selected' : ''));
    item.id = anchor(row);
    const meta = element('div', 'meta');
    const link = element('a', null, 'text ' + text('text_id', row) + ' \\u00b7 position ' + data.position[row]);
    link.href = '#' + anchor(row);
    meta.appendChild(link);
    meta.appendChild(element('span', 'token', 'token ' + JSON.stringify(text('token', row))));
    if (text('group', row) !== null) { meta.appendChild(element('span', 'group', 'group ' + text('group', row))); }
    if (text('role', row) !== null) { meta.appendChild(element('span', 'role', 'role ' + text('role', row))); }
    meta.appendChild(element('span', 'fve', 'FVE ' + fmt(data.fve[row])));
    if (data.valid[row] !== 1) { meta.appendChild(element('span', 'invalid', 'invalid answer')); }
    item.appendChild(meta);
    const where = element('div', 'context');
    context(where, row, true);
    item.appendChild(where);
    const said = element('div', 'explanation');
    marked(said, text('explanation', row) === null ? '(no explanation)' : text('explanation', row),
           fields().indexOf('explanation') >= 0);
    item.appendChild(said);
    list.appendChild(item);
  }
}
// The row of text ``textIndex`` at ``position`` (rows are sorted by both), or -1.
function find(textIndex, position) {
  let low = 0, high = state.rows;
  while (low < high) {
    const middle = (low + high) >> 1;
    const t = data.text_index[middle];
    if (t < textIndex || (t === textIndex && data.position[middle] < position)) { low = middle + 1; }
    else { high = middle; }
  }
  return low < state.rows && data.text_index[low] === textIndex && data.position[low] === position ? low : -1;
}
function detail(row) {
  const panel = $('detail');
  panel.replaceChildren();
  if (row < 0) {
    panel.appendChild(element('p', null, 'That position is not on this page.'));
    return;
  }
  panel.appendChild(element('h2', null, 'text ' + text('text_id', row) + ' \\u00b7 position ' + data.position[row]));
  const table = element('table');
  [['token', JSON.stringify(text('token', row))], ['group', text('group', row) || '-'],
   ['role', text('role', row) || '-'], ['FVE', fmt(data.fve[row])], ['cosine', fmt(data.cosine[row])],
   ['normalised MSE', fmt(data.mse[row])], ['valid', data.valid[row] === 1 ? 'yes' : 'no']].forEach(function (pair) {
    const line = element('tr');
    line.appendChild(element('td', null, pair[0]));
    line.appendChild(element('td', 'value-' + pair[0].split(' ').pop(), pair[1]));
    table.appendChild(line);
  });
  panel.appendChild(table);
  const where = element('div', 'context');
  context(where, row, false);
  panel.appendChild(where);
  panel.appendChild(element('div', 'explanation', text('explanation', row) === null ? '(no explanation)' :
                                                   text('explanation', row)));
  panel.appendChild(element('h3', null, 'explained positions of this text'));
  const positions = element('div', 'positions');
  let first = row;
  while (first > 0 && data.text_index[first - 1] === data.text_index[row]) { first--; }
  for (let other = first; other < state.rows && data.text_index[other] === data.text_index[row]; other++) {
    const link = element('a', other === row ? 'current' : null, text('token', other));
    link.href = '#' + anchor(other);
    link.title = 'position ' + data.position[other];
    positions.appendChild(link);
  }
  panel.appendChild(positions);
}
// ``#t{text_index}-{position}``: open that row beside the hits and, when it is among them, turn to
// its page and scroll to it.
function follow() {
  const found = /^#t(\\d+)-(\\d+)$/.exec(location.hash);
  if (!found) { return; }
  const row = find(Number(found[1]), Number(found[2]));
  state.selected = row;
  detail(row);
  let at = -1;
  for (let i = 0; i < state.hits.length; i++) { if (state.hits[i] === row) { at = i; break; } }
  if (at >= 0) { state.page = Math.floor(at / PAGE); }
  render();
  if (at >= 0) { $(anchor(row)).scrollIntoView({block: 'center'}); }
}
unpack().then(function (unpacked) {
  data = unpacked;
  state.rows = data.position.length;
  data.group.values.map(function (value, index) { return [value, index]; })
    .sort(function (a, b) { return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0; })
    .forEach(function (pair) {
      const option = element('option', null, pair[0]);
      option.value = String(pair[1]);
      $('group').appendChild(option);
    });
  if (data.group.index.indexOf(-1) >= 0) {
    const none = element('option', null, '(none)');
    none.value = '-1';
    $('group').appendChild(none);
  }
  $('count-all').textContent = String(state.rows);
  ['search', 'fve-min', 'fve-max'].forEach(function (id) { $(id).addEventListener('input', function () { update(); }); });
  ['field', 'regex', 'group', 'valid'].forEach(function (id) { $(id).addEventListener('change', function () { update(); }); });
  $('prev').addEventListener('click', function () { state.page--; render(); });
  $('next').addEventListener('click', function () { state.page++; render(); });
  window.addEventListener('hashchange', follow);
  update();
  follow();
  document.body.dataset.ready = 'yes';
}).catch(function (error) {
  $('search-error').textContent = 'the rows could not be read: ' + error;
});
"""
