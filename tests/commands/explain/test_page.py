"""The round-trip explorer page: the pure builder (escaping, tokens, embedded data) and the real
``nla explain --html`` page loaded and clicked in headless Chromium."""

from __future__ import annotations

import colorsys
import html
import json
import math
import re

import pytest

from nla.commands.cli import main
from nla.commands.explain.command import ExplainedToken
from nla.commands.explain.page import embed_json, render_page
from nla.models.loading import ModelArgs, load_tokenizer
from tests.fixtures.browser import headless_chromium
from tests.fixtures.pairs import LAYER

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
    nan = float("nan")
    rows = [ExplainedToken(position=1, token="b", explanation="x", parsed=True, cosine=nan, mse=nan, fve=nan,
                           detail=[{"tokens": 1, "chars": 1, "cosine": nan, "mse": nan, "fve": nan}])]
    assert _data(render_page(rows, ["a", "b"], FIELDS))["rows"][0] == {
        "position": 1, "token": "b", "explanation": "x", "parsed": True, "cosine": None, "mse": None, "fve": None,
        "detail": [{"tokens": 1, "chars": 1, "cosine": None, "mse": None, "fve": None}], "flag": None}


def test_embed_json_round_trips_and_hides_markup():
    value = {"t": "</script><!-- & -->", "n": [1.5, None]}
    text = embed_json(value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == value


def test_rows_outside_the_tokens_are_refused():
    with pytest.raises(ValueError, match="distinct position"):
        render_page(_rows(), ["<s>", "a"], FIELDS)


@pytest.fixture
def pair(exported_pair):
    return exported_pair


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
    ids = load_tokenizer(ModelArgs(pair["source"]))(TEXT)["input_ids"]
    assert page.count('class="tok"') == 3 and page.count('class="plain"') == len(ids) - 3
    assert _data(page)["rows"] == rows and [row["position"] for row in rows] == [1, 4, len(ids) - 1]
    fves = [row["fve"] for row in rows]
    for label, value in [("AV", pair["av"]), ("base model", pair["source"]), ("layer K", str(LAYER)),
                         ("d", "32"), ("injection scale", "7.0000"), ("FVE baseline", "0.75 (held-out rawvar)"),
                         ("FVE mean / median", f"{sum(fves) / 3:.4f} / {sorted(fves)[1]:.4f}")]:
        assert f"<dt>{label}</dt><dd>{html.escape(value)}</dd>" in page
    assert page.count("<script") == 2 and not list(tmp_path.glob(".out.html.*"))


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"\d+", css)[:3])


def _expected_rgb(value: float) -> tuple[int, int, int]:
    """The page's fixed diverging scale (nla.commands.explain.page_assets), computed here independently."""
    t = max(-1.0, min(1.0, value))
    js_round = lambda x: math.floor(x + 0.5)  # noqa: E731  (JavaScript's Math.round)
    hue, saturation, lightness = (130, 0.55, js_round(100 - 55 * t)) if t >= 0 else (4, 0.80, js_round(100 + 45 * t))
    red, green, blue = colorsys.hls_to_rgb(hue / 360, lightness / 100, saturation)
    return round(red * 255), round(green * 255), round(blue * 255)


def _close(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return all(abs(a - b) <= 1 for a, b in zip(got, want))


STEERING = {"text": "a b c", "position": 2, "mode": "replace", "edited_explanation": "about a <mouse>",
            "continuations": {"clean": " one", "original": " two", "steered": " three <mouse>"},
            "watch": [{"word": "mouse", "token": " mouse", "before": 0.125, "steered": 0.5}]}


def test_fixed_scale_flags_detail_slider_and_steering_in_headless_chromium(tmp_path):
    """A hand-made page: the same FVE has the same colour whatever else is on the page, 0 is white,
    negatives are red with a dashed outline, the flag and the steering panel show, the slider reads
    the detail curve."""
    values = [-2.0, -0.5, 0.0, 0.5, 1.0]
    tokens = ["<s>", *[f" t{i}" for i in range(len(values))]]
    detail = [{"tokens": 1, "chars": 5, "cosine": 0.1, "mse": 1.8, "fve": -0.2},
              {"tokens": 3, "chars": 11, "cosine": 0.5, "mse": 1.0, "fve": 0.25}]
    rows = [ExplainedToken(position=i + 1, token=tokens[i + 1], explanation="first then more", parsed=True,
                           cosine=0.5, mse=1.0, fve=value, detail=detail if i == 3 else [],
                           flag="t9" if i == 1 else None) for i, value in enumerate(values)]
    narrow = [ExplainedToken(position=1, token=" t0", explanation="x", parsed=True, cosine=0.5, mse=1.0, fve=0.5),
              ExplainedToken(position=2, token=" t1", explanation="y", parsed=True, cosine=0.5, mse=1.0, fve=0.55)]
    (tmp_path / "wide.html").write_text(render_page(rows, tokens, FIELDS, steering=STEERING), encoding="utf-8")
    (tmp_path / "narrow.html").write_text(render_page(narrow, tokens[:3], FIELDS), encoding="utf-8")
    browser = headless_chromium()
    try:
        browser.get((tmp_path / "wide.html").as_uri())
        spans = browser.find_elements("css selector", "#text .tok")
        colours = [_rgb(span.value_of_css_property("background-color")) for span in spans]
        for value, colour in zip(values, colours):
            assert _close(colour, _expected_rgb(value)), (value, colour)
        assert colours[2] == (255, 255, 255) and _close(colours[0], _expected_rgb(-1))
        assert colours[1][0] > colours[1][1] and colours[3][1] > colours[3][0]
        assert ["neg" in span.get_attribute("class") for span in spans] == [True, True, False, False, False]
        assert "mean predictor" in browser.find_element("id", "legend-zero").text
        assert browser.find_element("id", "definition").text.startswith("Per-token FVE = 1 - MSE / Var.")
        # The flag: marked on the token and spelled out in the panel.
        assert "flagged" in spans[1].get_attribute("class")
        spans[1].click()
        assert browser.find_element("id", "p-flag").text == 'quotes "t9" as the final token; the real token is " t1"'
        assert not browser.find_element("id", "detail-box").is_displayed()
        # The slider: starts at the whole explanation's point, moves to the first.
        spans[3].click()
        slider = browser.find_element("id", "detail")
        assert slider.get_attribute("max") == "1" and slider.get_attribute("value") == "1"
        assert browser.find_element("id", "detail-value").text == "0.2500"
        browser.execute_script("arguments[0].value = 0; arguments[0].dispatchEvent(new Event('input'));", slider)
        assert browser.find_element("id", "detail-value").text == "-0.2000"
        assert browser.find_element("id", "detail-read").text == "first"
        assert browser.find_element("id", "detail-tokens").text == "1 of 3"
        # The steering panel, escaped.
        assert browser.find_element("id", "steer-steered").text == " three <mouse>"
        assert browser.find_element("id", "steer-original").text == " two"
        assert "0.5000" in browser.find_element("id", "steer-watch").text
        # Same value, same colour, on a page whose values span another range.
        browser.get((tmp_path / "narrow.html").as_uri())
        narrow_colour = _rgb(browser.find_elements("css selector", "#text .tok")[0].value_of_css_property(
            "background-color"))
        assert narrow_colour == colours[3]
        assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
    finally:
        browser.quit()


def test_page_in_headless_chromium_shows_tokens_hover_list_detail_and_steering(pair, capsys, tmp_path):
    main(["steer", "--av", pair["av"], "--ar", pair["ar"], "--text", TEXT, "--max_new_tokens", "8", "--tokens", "5",
          "--explanation", "Rivers bend around old stones.", "--json", "true"])
    steering = json.loads(capsys.readouterr().out)
    (tmp_path / "steer.json").write_text(json.dumps(steering), encoding="utf-8")
    browser = headless_chromium()
    try:
        page_path = tmp_path / "explorer.html"
        main(["explain", "--av", pair["av"], "--ar", pair["ar"], "--text", TEXT, "--max_new_tokens", "8",
              "--positions", "[2, 5, 9, -3, -1]", "--json", "true", "--html", str(page_path),
              "--steering", str(tmp_path / "steer.json"), "--detail_points", "4"])
        rows = json.loads(capsys.readouterr().out)
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
            # The slider starts on the whole explanation: its FVE is the token's.
            assert float(browser.find_element("id", "detail-value").text) == pytest.approx(rows[index]["fve"],
                                                                                           abs=2e-4)
        colours = [_rgb(span.value_of_css_property("background-color")) for span in spans]
        for row, colour in zip(rows, colours):
            assert _close(colour, _expected_rgb(row["fve"])), (row["fve"], colour)
            assert ("neg" in spans[rows.index(row)].get_attribute("class")) == (row["fve"] < 0)
        # Unexplained tokens are grey and inert: clicking one leaves the panel as it was.
        before = browser.find_element("id", "p-explanation").text
        browser.find_element("css selector", "#text .plain[data-position='3']").click()
        assert browser.find_element("id", "p-explanation").text == before
        # Hovering previews a token's explanation without selecting it.
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(browser).move_to_element(spans[high]).perform()
        preview = browser.find_element("id", "preview")
        assert preview.is_displayed() and rows[high]["explanation"].strip()[:20] in preview.text
        # The list shows every explanation; a click on a line selects its token.
        lines = browser.find_elements("css selector", "#list tr[data-row]")
        assert len(lines) == len(rows)
        lines[0].click()
        assert "selected" in spans[0].get_attribute("class")
        assert browser.find_element("id", "p-position").text == str(rows[0]["position"])
        # The steering panel holds nla steer's continuations.
        for key in ("clean", "original", "steered"):
            assert browser.find_element("id", f"steer-{key}").text.strip() == steering["continuations"][key].strip()
        # The toggle recolours by cosine, on the same fixed scale.
        browser.find_element("css selector", "input[value=cosine]").click()
        assert browser.find_element("css selector", ".metric-name").text == "cosine"
        by_cosine = [_rgb(span.value_of_css_property("background-color")) for span in spans]
        assert all(_close(c, _expected_rgb(row["cosine"])) for c, row in zip(by_cosine, rows))
        from selenium.common.exceptions import NoAlertPresentException

        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text
        assert [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
    finally:
        browser.quit()


def test_steering_file_must_be_a_steer_result_about_the_same_text(pair, capsys, tmp_path):
    other = dict(STEERING, text="another text")
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "bad.json").write_text("[1, 2]")
    for name, message in (("other.json", "steers another text"), ("bad.json", "is not a nla steer result")):
        with pytest.raises(SystemExit) as done:
            main(["explain", "--av", pair["av"], "--ar", pair["ar"], "--text", TEXT, "--html", str(tmp_path / "p.html"),
                  "--steering", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert done.value.code == 2 and err.startswith("nla: error: steering: ") and message in err
