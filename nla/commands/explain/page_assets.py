"""The explorer page's inline style sheet and script (``nla.commands.explain.page`` embeds both).

Colours are fixed and absolute, the same on every page: a diverging scale over [-1, 1] that is white
at 0 (for FVE, the mean predictor), green above and red below; values below -1 take the reddest
colour, and every negative token also gets a dashed outline, so "worse than the mean" never passes
for a middling score.
"""

HEADER_STYLE = """
body{margin:0;font-family:system-ui,sans-serif;color:#222;background:#fafafa}
header{padding:12px 20px;background:#fff;border-bottom:1px solid #ddd}
header h1{font-size:18px;margin:0 0 8px}
dl.run{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:2px 12px;margin:0;font-size:13px}
dl.run dt{color:#666}dl.run dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
"""
"""The page header and run description, shared with the audit page."""

STYLE = HEADER_STYLE + """main{display:flex;gap:20px;padding:16px 20px}
#text{flex:3;line-height:2;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:15px}
#text span{border-radius:3px;padding:1px 0}
#text .tok{cursor:pointer;border:1px solid #bbb}
#text .tok.neg{border:1px dashed #a00}
#text .tok.flagged{text-decoration:underline wavy #b00}
#text .tok.selected{outline:2px solid #1a4fd6}
#text .plain{color:#999}
aside{flex:2;position:sticky;top:0;align-self:flex-start;background:#fff;border:1px solid #ddd;padding:12px;
 min-width:260px}
aside table{font-size:13px;border-collapse:collapse;margin-bottom:10px}
aside td{padding:2px 8px 2px 0}aside td:first-child{color:#666}
#p-explanation{white-space:pre-wrap;font-size:14px;line-height:1.4}
#p-flag{color:#a00}
#detail-box{margin:10px 0;padding:8px 0;border-top:1px solid #eee;font-size:13px}
#detail-box input{width:100%}
#detail-rest{color:#aaa}
#detail-text{white-space:pre-wrap}
.controls{margin:10px 0 0;font-size:13px;display:flex;gap:16px;align-items:center;flex-wrap:wrap}
.legend{display:flex;align-items:center;gap:6px}
.legend .bar{width:200px;height:12px;border:1px solid #bbb;position:relative;
 background:linear-gradient(to right,hsl(4,80%,55%),hsl(4,80%,100%) 50%,hsl(130,55%,100%) 50%,hsl(130,55%,45%))}
.legend .zero{position:absolute;left:50%;top:-3px;bottom:-3px;border-left:2px solid #222}
p.definition{font-size:12px;color:#444;margin:6px 0 0;max-width:1100px}
#preview{position:fixed;display:none;max-width:420px;background:#fff;border:1px solid #999;padding:6px 8px;
 font-size:12px;white-space:pre-wrap;box-shadow:0 2px 6px rgba(0,0,0,.2);pointer-events:none;z-index:5}
section{padding:0 20px 16px}
section h2{font-size:15px;margin:12px 0 6px}
#list table{border-collapse:collapse;font-size:13px;width:100%}
#list td,#list th{border-bottom:1px solid #eee;padding:3px 8px;text-align:left;vertical-align:top}
#list td.explanation{white-space:pre-wrap}
#list tr{cursor:pointer}#list tr.selected{background:#e8eefc}
#steering pre{white-space:pre-wrap;background:#fff;border:1px solid #ddd;padding:6px;margin:4px 0 10px}
#steering table{border-collapse:collapse;font-size:13px}#steering td,#steering th{padding:2px 10px 2px 0}
"""

SCRIPT = """
const data = JSON.parse(document.getElementById('nla-data').textContent);
let metric = data.has_fve ? 'fve' : 'cosine';
let selected = null;
function fmt(value) { return value === null || value === undefined ? '-' : value.toFixed(4); }
// Fixed, absolute and diverging: 0 is white (for FVE: the mean predictor), 1 full green, -1 or
// below full red; the same value has the same colour on every page.
function colour(value) {
  if (value === null) { return ''; }
  const t = Math.max(-1, Math.min(1, value));
  return t >= 0 ? 'hsl(130,55%,' + Math.round(100 - 55 * t) + '%)' : 'hsl(4,80%,' + Math.round(100 + 45 * t) + '%)';
}
function paint() {
  document.querySelectorAll('#text .tok').forEach(function (span) {
    const value = data.rows[Number(span.dataset.row)][metric];
    span.style.backgroundColor = colour(value);
    span.classList.toggle('neg', value !== null && value < 0);
  });
  document.querySelectorAll('.metric-name').forEach(function (node) {
    node.textContent = metric === 'fve' ? 'FVE' : 'cosine';
  });
}
function showDetail(row, index) {
  const point = row.detail[index];
  const whole = row.detail[row.detail.length - 1].tokens;
  document.getElementById('detail-tokens').textContent = point.tokens + ' of ' + whole;
  document.getElementById('detail-value').textContent = fmt(point[metric]);
  document.getElementById('detail-read').textContent = row.explanation.slice(0, point.chars);
  document.getElementById('detail-rest').textContent = row.explanation.slice(point.chars);
}
function show(index) {
  const row = data.rows[index];
  selected = index;
  document.querySelectorAll('.selected').forEach(function (s) { s.classList.remove('selected'); });
  document.querySelector('#text .tok[data-row="' + index + '"]').classList.add('selected');
  document.querySelector('#list tr[data-row="' + index + '"]').classList.add('selected');
  document.getElementById('p-token').textContent = JSON.stringify(row.token);
  document.getElementById('p-position').textContent = String(row.position);
  document.getElementById('p-fve').textContent = fmt(row.fve);
  document.getElementById('p-cosine').textContent = fmt(row.cosine);
  document.getElementById('p-mse').textContent = fmt(row.mse);
  document.getElementById('p-parsed').textContent = row.parsed ? 'yes' : 'no (no closing tag)';
  document.getElementById('p-flag').textContent = row.flag === null ? '-' :
    'quotes ' + JSON.stringify(row.flag) + ' as the final token; the real token is ' + JSON.stringify(row.token);
  document.getElementById('p-explanation').textContent = row.explanation;
  const box = document.getElementById('detail-box');
  box.style.display = row.detail.length ? '' : 'none';
  if (row.detail.length) {
    const slider = document.getElementById('detail');
    slider.max = String(row.detail.length - 1);
    slider.value = slider.max;
    showDetail(row, row.detail.length - 1);
  }
}
const preview = document.getElementById('preview');
document.querySelectorAll('#text .tok').forEach(function (span) {
  const index = Number(span.dataset.row);
  span.addEventListener('click', function () { show(index); });
  span.addEventListener('keydown', function (event) {
    if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); show(index); }
  });
  span.addEventListener('mouseenter', function () {
    const row = data.rows[index];
    const cut = row.explanation.length > 240 ? row.explanation.slice(0, 240) + '\\u2026' : row.explanation;
    preview.textContent = JSON.stringify(row.token) + '  ' + (metric === 'fve' ? 'FVE ' : 'cosine ') +
      fmt(row[metric]) + (row.flag === null ? '' : '  [final-token claim contradicts]') + '\\n' + cut;
    const box = span.getBoundingClientRect();
    preview.style.left = Math.min(box.left, window.innerWidth - 440) + 'px';
    preview.style.top = (box.bottom + 6) + 'px';
    preview.style.display = 'block';
  });
  span.addEventListener('mouseleave', function () { preview.style.display = 'none'; });
});
document.querySelectorAll('#list tr[data-row]').forEach(function (tr) {
  tr.addEventListener('click', function () { show(Number(tr.dataset.row)); });
});
document.getElementById('detail').addEventListener('input', function (event) {
  if (selected !== null) { showDetail(data.rows[selected], Number(event.target.value)); }
});
document.querySelectorAll('input[name=metric]').forEach(function (input) {
  input.addEventListener('change', function () {
    metric = input.value;
    paint();
    if (selected !== null) { showDetail(data.rows[selected], Number(document.getElementById('detail').value)); }
  });
});
paint();
"""
