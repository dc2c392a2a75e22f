"""The audit page: its embedded data read back in Python, then search, filters, paging and links in
headless Chromium, on a hostile table and on one of 100,000 rows."""

from __future__ import annotations

import base64
import gzip
import json
import re
import time

import pytest

from nla.commands.audit.page import page
from nla.commands.cli import main
from nla.data.audit_table import MANIFEST, read_table, write_shard
from tests.fixtures.browser import headless_chromium

HOSTILE = "<script>alert(1)</script> then <img src=x onerror=alert(2)>"


def hostile_audit(directory) -> None:
    rows = [{"text_index": t, "text_id": f"doc <{t}>", "group": "<b>bold</b>" if t == 0 else None, "role": "user",
             "position": p, "token": "<i>" if p == 1 else f" w{p}",
             "context": f"text {t} up to" + ("<i>" if p == 1 else f" w{p}"),
             "explanation": HOSTILE if (t, p) == (0, 1) else None if p == 2 else f"about text {t}, a test of {p}",
             "mse": 0.5, "fve": float("nan") if p == 3 else 0.25 * p, "cosine": 0.5, "valid": p != 2}
            for t in range(3) for p in range(4)]
    write_shard(directory, 0, 0, rows)
    (directory / MANIFEST).write_text(json.dumps({"kind": "nla_audit", "settings": {"pair": "/runs/<p>",
                                                                                     "every": 1}, "texts": 3}))


def unpack(page_text: str) -> dict:
    found = re.search(r'<script type="text/plain" id="nla-data">(.*?)</script>', page_text, re.S)
    return json.loads(gzip.decompress(base64.b64decode(found.group(1))))


def test_the_page_embeds_every_row_and_nothing_it_could_fetch(tmp_path, capsys):
    hostile_audit(tmp_path)
    page(str(tmp_path), str(tmp_path / "a.html"))
    assert "nla audit page: wrote" in capsys.readouterr().out
    text = (tmp_path / "a.html").read_text(encoding="utf-8")
    data, table = unpack(text), read_table(tmp_path)
    for name in ("explanation", "token", "text_id", "group", "context"):
        column = data[name]
        assert [None if i < 0 else column["values"][i] for i in column["index"]] == table.column(name).to_pylist()
    assert data["position"] == table.column("position").to_pylist()
    assert data["fve"] == [None if p == 3 else 0.25 * p for _ in range(3) for p in range(4)]
    assert data["valid"] == [int(p != 2) for _ in range(3) for p in range(4)]
    # The rows are compressed, the header escaped: only the page's own two scripts, nothing fetched.
    assert text.count("<script") == 2 and "<img" not in text
    assert "<dt>pair</dt><dd>/runs/&lt;p&gt;</dd>" in text and "<dt>texts</dt><dd>3</dd>" in text
    assert not re.search(r"(src|href)=|https?://|@import|url\(", text) and "default-src 'none'" in text


def test_max_rows_keeps_the_first_rows_and_says_so(tmp_path, capsys):
    hostile_audit(tmp_path)
    page(str(tmp_path), str(tmp_path / "a.html"), max_rows=5)
    capsys.readouterr()
    text = (tmp_path / "a.html").read_text(encoding="utf-8")
    assert unpack(text)["text_index"] == [0, 0, 0, 0, 1]
    assert "This page holds the first 5 of the audit&#x27;s 12 rows" in text


@pytest.mark.parametrize("argv, prefix", [
    (["--out", "{tmp}/missing/a.html"], "nla: error: out: "),
    (["--out", "{tmp}/a.html", "--max_rows", "0"], "nla: error: max_rows: is 0"),
    (["--out", "{tmp}/a.html", "--table", "{tmp}/nothing"], "nla: error: table: "),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, prefix):
    hostile_audit(tmp_path)
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    with pytest.raises(SystemExit) as done:
        main(["audit", "page", "--table", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith(prefix) and err.count("\n") == 1, err
    assert not (tmp_path / "a.html").exists()


def ready(browser, timeout: float = 60.0) -> float:
    """Seconds until the page has unpacked its rows."""
    start = time.monotonic()
    while browser.execute_script("return document.body.dataset.ready") != "yes":
        assert time.monotonic() - start < timeout, browser.find_element("id", "search-error").text
        time.sleep(0.05)
    return time.monotonic() - start


def set_value(browser, element_id: str, value: str, event: str = "input") -> float:
    """Set a control and fire its event; the seconds until the hits are updated (the page updates in
    the event's handler)."""
    start = time.monotonic()
    browser.execute_script(f"const e = document.getElementById('{element_id}'); e.value = arguments[0];"
                           f"e.dispatchEvent(new Event('{event}'));", value)
    return time.monotonic() - start


def counts(browser) -> tuple[int, int]:
    return int(browser.find_element("id", "count-rows").text), int(browser.find_element("id", "count-texts").text)


def test_hostile_text_is_shown_as_text_and_links_open_rows(tmp_path, capsys):
    hostile_audit(tmp_path)
    page(str(tmp_path), str(tmp_path / "a.html"))
    capsys.readouterr()
    browser = headless_chromium()
    try:
        browser.get((tmp_path / "a.html").as_uri())
        ready(browser)
        assert counts(browser) == (12, 3)
        hits = browser.find_elements("css selector", "#hits li")
        assert len(hits) == 12 and browser.find_elements("css selector", "#hits img") == []
        assert hits[1].find_element("css selector", ".explanation").text == HOSTILE
        assert hits[1].find_element("css selector", "mark.token").text == "<i>"
        assert hits[1].find_element("css selector", ".context").text == "text 0 up to<i>"
        assert hits[2].find_element("css selector", ".explanation").text == "(no explanation)"
        assert "FVE -" in hits[3].text  # a diverged score travels as null
        options = [o.text for o in browser.find_elements("css selector", "#group option")]
        assert options == ["every group", "<b>bold</b>", "(none)"]
        # Search: words anywhere in the explanation, marked; then a regular expression; then a bad one.
        browser.find_element("id", "search").send_keys("<SCRIPT> onerror")
        assert counts(browser) == (1, 1)
        assert [m.text for m in browser.find_elements("css selector", "#hits .explanation mark")] == [
            "<script>", "onerror"]
        set_value(browser, "search", r"test of [13]")
        browser.find_element("id", "regex").click()
        assert counts(browser) == (5, 3)  # position 3 of texts 0-2, position 1 of texts 1-2
        set_value(browser, "search", "(")
        assert browser.find_element("id", "search-error").text.startswith("not a regular expression")
        assert counts(browser) == (12, 3)
        browser.find_element("id", "regex").click()
        set_value(browser, "search", "")
        # Group and valid filters, and an FVE range that leaves out the null score.
        browser.execute_script("const g = document.getElementById('group'); g.selectedIndex = 1;"
                               "g.dispatchEvent(new Event('change'));")
        assert counts(browser) == (4, 1)
        set_value(browser, "valid", "invalid", "change")
        assert counts(browser) == (1, 1)
        set_value(browser, "valid", "all", "change")
        set_value(browser, "fve-max", "0.3")
        assert counts(browser) == (2, 1)  # FVE 0 and 0.25: the null score is in no range, not even around 0
        set_value(browser, "fve-max", "")
        set_value(browser, "fve-min", "0.2")
        assert counts(browser) == (2, 1)  # FVE 0.25 and 0.5
        # A link opens its row beside the hits, with the other positions of its text.
        browser.find_element("css selector", "#hits li a").click()
        assert browser.execute_script("return location.hash") == "#t0-1"
        detail = browser.find_element("id", "detail")
        assert detail.find_element("css selector", "h2").text == "text doc <0> · position 1"
        assert detail.find_element("css selector", ".explanation").text == HOSTILE
        assert [a.text for a in detail.find_elements("css selector", ".positions a")] == [" w0", "<i>", " w2", " w3"]
        assert "selected" in browser.find_element("id", "t0-1").get_attribute("class")
        from selenium.common.exceptions import NoAlertPresentException

        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        browser.quit()


WORDS = ("tone", "syntax", "a name", "numbers", "the plot")


def large_rows() -> list[dict]:
    """2,000 texts of 50 positions; every tenth answer invalid; "constructed test" in 134 of them."""
    rows = []
    for i in range(100_000):
        text, position = divmod(i, 50)
        token = f" w{i % 97}"
        explanation = None if i % 10 == 0 else (f"note {i}: the reader tracks {WORDS[i % 5]}"
                                                 + (", and this feels like a constructed test" if i % 750 == 5 else ""))
        rows.append({"text_index": text, "text_id": f"doc-{text}", "group": ("eval", "real")[text % 2], "role": None,
                     "position": position, "token": token, "context": f"text {text} reads{token}",
                     "explanation": explanation, "mse": 0.5, "fve": ((i % 200) - 100) / 100, "cosine": 0.5,
                     "valid": explanation is not None})
    return rows


def expected(rows, keep) -> tuple[int, int]:
    kept = [row for row in rows if keep(row)]
    return len(kept), len({row["text_index"] for row in kept})


def test_a_page_of_100000_rows_searches_filters_and_pages_in_headless_chromium(tmp_path, capsys):
    rows = large_rows()
    for start in range(0, len(rows), 25_000):
        write_shard(tmp_path, 0, start // 25_000, rows[start:start + 25_000])
    page(str(tmp_path), str(tmp_path / "a.html"))
    capsys.readouterr()
    browser = headless_chromium()
    try:
        browser.get((tmp_path / "a.html").as_uri())
        assert ready(browser) < 30
        assert counts(browser) == (100_000, 2_000)
        assert len(browser.find_elements("css selector", "#hits li")) == 50
        assert browser.find_element("id", "page-info").text == "page 1 of 2000"
        took = set_value(browser, "search", '"constructed test"')
        assert took < 2 and counts(browser) == expected(rows, lambda r: "constructed test" in (r["explanation"] or ""))
        assert len(browser.find_elements("css selector", "#hits li")) == 50
        browser.execute_script("const g = document.getElementById('group'); g.value = "
                               "[...g.options].find(o => o.text === 'eval').value; g.dispatchEvent(new Event('change'));")
        assert counts(browser) == expected(rows, lambda r: "constructed test" in (r["explanation"] or "")
                                           and r["group"] == "eval")
        set_value(browser, "fve-min", "-0.5")
        took = set_value(browser, "fve-max", "0.5")
        assert took < 2 and counts(browser) == expected(
            rows, lambda r: "constructed test" in (r["explanation"] or "") and r["group"] == "eval"
            and -0.5 <= r["fve"] <= 0.5)
        # Every invalid row in the range, across groups: pages of 50, the third page starting at the 101st.
        set_value(browser, "search", "")
        set_value(browser, "group", "", "change")
        took = set_value(browser, "valid", "invalid", "change")
        invalid = [r for r in rows if not r["valid"] and -0.5 <= r["fve"] <= 0.5]
        assert took < 2 and counts(browser) == expected(invalid, lambda r: True)
        for _ in range(2):
            browser.find_element("id", "next").click()
        pages = -(-len(invalid) // 50)
        assert browser.find_element("id", "page-info").text == f"page 3 of {pages}"
        shown = browser.find_elements("css selector", "#hits li")
        assert len(shown) == 50 and shown[0].get_attribute("id") == f"t{invalid[100]['text_index']}-" \
                                                                      f"{invalid[100]['position']}"
        # Searching the contexts and tokens as well.
        set_value(browser, "valid", "all", "change")
        set_value(browser, "fve-min", "")
        set_value(browser, "fve-max", "")
        set_value(browser, "field", "all", "change")
        took = set_value(browser, "search", "w96 reads")
        assert took < 2 and counts(browser) == expected(rows, lambda r: r["token"] == " w96")
        # A link to a row on the seventh page of all rows: loaded directly, the page turns to it.
        target = rows[6 * 50 + 7]
        browser.get("about:blank")
        browser.get((tmp_path / "a.html").as_uri() + f"#t{target['text_index']}-{target['position']}")
        ready(browser)
        assert browser.find_element("id", "page-info").text == "page 7 of 2000"
        hit = browser.find_element("id", f"t{target['text_index']}-{target['position']}")
        assert "selected" in hit.get_attribute("class")
        assert browser.find_element("css selector", "#detail .explanation").text == (target["explanation"]
                                                                                     or "(no explanation)")
        assert len(browser.find_elements("css selector", "#detail .positions a")) == 50
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        browser.quit()
