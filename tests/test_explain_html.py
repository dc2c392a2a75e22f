"""The round-trip explorer page: the pure builder (escaping, tokens, embedded data) and the real
``nla explain --html`` page loaded and clicked in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil

import pytest

from nla.cli import main
from nla.explain import ExplainedToken
from nla.explain_html import embed_json, render_page
from nla.export import export_pair
from nla.modules.backbone import BackboneArgs, load_tokenizer
from tests.test_export import LAYER, TRAINING, build_pair

HOSTILE = "<script>alert(1)</script>"
TEXT = f"The cook wrote {HOSTILE} and </script> on the card, then\nbaked the bread & waited."
FIELDS = [("AV", "/runs/a <b>"), ("nla version", "0.1.0.dev0")]


def _rows():
    return [
        ExplainedToken(position=1, token=HOSTILE, explanation="ends </script><script>alert(2)</script> & more",
                       parsed=True, cosine=0.5, mse=1.0, fve=-0.25),
        ExplainedToken(position=3, token="\n", explanation="a line break", parsed=False, cosine=0.9, mse=0.2,
                       fve=0.8),
    ]


def _data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="nla-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def test_page_escapes_text_and_embeds_parseable_data():
    tokens = ["<s>", HOSTILE, " and", "\n", "</script>", " &amp;"]
    page = render_page(_rows(), tokens, FIELDS)
    # Only the page's own two scripts open and close: no token or explanation broke out.
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    data = _data(page)
    assert data["has_fve"] is True
    assert [row["explanation"] for row in data["rows"]] == [r.explanation for r in _rows()]
    assert [row["token"] for row in data["rows"]] == [HOSTILE, "\n"]
    spans = re.findall(r'<span class="(tok|plain)"[^>]*data-position="(\d+)"[^>]*>(.*?)</span>', page, re.S)
    assert [int(p) for _, p, _ in spans] == list(range(len(tokens)))
    assert [kind for kind, _, _ in spans] == ["plain", "tok", "plain", "tok", "plain", "plain"]
    shown = [html.unescape(text) for _, _, text in spans]
    assert shown == ["<s>", HOSTILE, " and", "\u21b5\n", "</script>", " &amp;"]
    assert "<dd>/runs/a &lt;b&gt;</dd>" in page
    # Self-contained: nothing is fetched, and the policy forbids it anyway.
    assert not re.search(r"(src|href)=|https?://|@import|url\(", page)
    assert "default-src 'none'" in page


def test_without_fve_the_page_colours_by_cosine():
    rows = [ExplainedToken(position=0, token="a", explanation="x", parsed=True, cosine=0.1, mse=1.8, fve=None)]
    page = render_page(rows, ["a", "b"], FIELDS)
    assert _data(page)["has_fve"] is False
    assert '<input type="radio" name="metric" value="fve" disabled>' in page
    assert '<input type="radio" name="metric" value="cosine" checked>' in page


def test_a_diverged_score_is_embedded_as_null():
    rows = [ExplainedToken(position=1, token="b", explanation="x", parsed=True, cosine=float("nan"), mse=float("nan"),
                           fve=float("nan"))]
    assert _data(render_page(rows, ["a", "b"], FIELDS))["rows"][0] == {
        "position": 1, "token": "b", "explanation": "x", "parsed": True, "cosine": None, "mse": None, "fve": None}


def test_embed_json_round_trips_and_hides_markup():
    value = {"t": "</script><!-- & -->", "n": [1.5, None]}
    text = embed_json(value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == value


def test_rows_outside_the_tokens_are_refused():
    with pytest.raises(ValueError, match="distinct position"):
        render_page(_rows(), ["<s>", "a"], FIELDS)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_model_dir):
    source = tiny_model_dir("llama")
    verbalizer, reconstructor, prompts = build_pair(source)
    out = export_pair(tmp_path_factory.mktemp("explorer") / "pair", verbalizer=verbalizer,
                      reconstructor=reconstructor, prompts=prompts, layer=LAYER, base_model=str(source),
                      stage="sft", training=TRAINING)
    return {"av": str(out["av"]), "ar": str(out["ar"]), "source": str(source)}


def explain_to_page(pair, capsys, page, positions):
    main(["explain", "--av", pair["av"], "--ar", pair["ar"], "--text", TEXT, "--max_new_tokens", "8",
          "--positions", json.dumps(positions), "--json", "true", "--html", str(page)])
    return json.loads(capsys.readouterr().out)


def test_html_path_in_a_missing_directory_exits_2_before_loading(pair, capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["explain", "--av", pair["av"], "--ar", pair["ar"], "--text", TEXT,
              "--html", str(tmp_path / "missing" / "out.html")])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith("nla: error: html: directory") and err.count("\n") == 1


def test_explain_writes_the_page_with_every_token_and_the_run(pair, capsys, tmp_path):
    page_path = tmp_path / "out.html"
    rows = explain_to_page(pair, capsys, page_path, [1, 4, -1])
    page = page_path.read_text(encoding="utf-8")
    ids = load_tokenizer(BackboneArgs(pair["source"]))(TEXT)["input_ids"]
    assert page.count('class="tok"') == 3 and page.count('class="plain"') == len(ids) - 3
    assert _data(page)["rows"] == rows and [row["position"] for row in rows] == [1, 4, len(ids) - 1]
    fves = [row["fve"] for row in rows]
    for label, value in [("AV", pair["av"]), ("base model", pair["source"]), ("layer K", str(LAYER)),
                         ("d", "32"), ("injection scale", "7.0000"), ("FVE baseline", "0.75 (held-out rawvar)"),
                         ("FVE mean / median", f"{sum(fves) / 3:.4f} / {sorted(fves)[1]:.4f}")]:
        assert f"<dt>{label}</dt><dd>{html.escape(value)}</dd>" in page
    assert page.count("<script") == 2 and not list(tmp_path.glob(".out.html.*"))


def _browser():
    """A headless Chromium through Debian's chromedriver; a skip (a failure under
    NLA_REQUIRE_BROWSER=1, which CI sets) when either or selenium is missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if webdriver is None or chromium is None or driver is None:
        reason = ("the explorer browser test needs selenium, chromium and chromedriver "
                  "(apt-get install chromium chromium-driver)")
        if os.environ.get("NLA_REQUIRE_BROWSER") == "1":
            pytest.fail(f"NLA_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"\d+", css)[:3])


def test_page_in_headless_chromium_shows_the_clicked_token(pair, capsys, tmp_path):
    browser = _browser()
    try:
        page_path = tmp_path / "explorer.html"
        rows = explain_to_page(pair, capsys, page_path, [2, 5, 9, -3, -1])
        browser.get(page_path.as_uri())
        spans = browser.find_elements("css selector", "#text .tok")
        assert len(spans) == len(rows)
        assert HOSTILE in browser.find_element("id", "text").text
        low = min(range(len(rows)), key=lambda i: rows[i]["fve"])
        high = max(range(len(rows)), key=lambda i: rows[i]["fve"])
        assert rows[high]["fve"] - rows[low]["fve"] > 0.05, "the tiny pair should give distinct FVEs"
        for index in (high, low):
            spans[index].click()
            panel = {key: browser.find_element("id", f"p-{key}").text
                     for key in ("explanation", "fve", "position", "token")}
            assert panel["explanation"] == rows[index]["explanation"].strip()
            assert float(panel["fve"]) == pytest.approx(rows[index]["fve"], abs=5e-5)
            assert int(panel["position"]) == rows[index]["position"]
            assert json.loads(panel["token"]) == rows[index]["token"]
            assert "selected" in spans[index].get_attribute("class")
        # Higher FVE is greener, lower redder; the legend names the page's range.
        assert float(browser.find_element("id", "legend-low").text) == pytest.approx(rows[low]["fve"], abs=5e-5)
        assert float(browser.find_element("id", "legend-high").text) == pytest.approx(rows[high]["fve"], abs=5e-5)
        colours = [_rgb(span.value_of_css_property("background-color")) for span in spans]
        assert colours[low] != colours[high]
        greenness = [green - red for red, green, _ in colours]
        by_fve = sorted(range(len(rows)), key=lambda i: rows[i]["fve"])
        assert [greenness[i] for i in by_fve] == sorted(greenness)
        # Unexplained tokens are grey and inert: clicking one leaves the panel as it was.
        before = browser.find_element("id", "p-explanation").text
        browser.find_element("css selector", "#text .plain[data-position='3']").click()
        assert browser.find_element("id", "p-explanation").text == before
        # The toggle recolours by cosine.
        browser.find_element("css selector", "input[value=cosine]").click()
        assert browser.find_element("id", "metric-name").text == "cosine"
        by_cosine = [_rgb(span.value_of_css_property("background-color")) for span in spans]
        best = max(range(len(rows)), key=lambda i: rows[i]["cosine"])
        assert by_cosine[best][1] - by_cosine[best][0] == max(g - r for r, g, _ in by_cosine)
        from selenium.common.exceptions import NoAlertPresentException

        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text
        assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
    finally:
        browser.quit()
