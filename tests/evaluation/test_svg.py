"""The hand-written SVG charts of the report."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from nla.evaluation.svg import interval_chart

SVG = "{http://www.w3.org/2000/svg}"


def test_interval_chart_draws_a_dot_and_a_whisker_per_row_and_the_reference_line():
    rows = [("pair <round trip>", 0.25, 0.1, 0.4), ("shuffled", -0.5, -0.7, -0.3), ("no interval", 0.0, float("nan"),
                                                                                   float("nan"))]
    root = ElementTree.fromstring(interval_chart("FVE & controls", rows, "FVE"))
    assert root.tag == f"{SVG}svg"
    texts = [node.text for node in root.iter(f"{SVG}text")]
    assert "FVE & controls" in texts and "pair <round trip>" in texts and "FVE" in texts
    assert len(list(root.iter(f"{SVG}circle"))) == 3
    whiskers = [line for line in root.iter(f"{SVG}line") if line.get("stroke-width") == "2"]
    assert len(whiskers) == 2
    low, high = (float(whiskers[0].get(key)) for key in ("x1", "x2"))
    (dot,) = [c for c in root.iter(f"{SVG}circle")][:1]
    assert low < float(dot.get("cx")) < high
    (reference,) = [line for line in root.iter(f"{SVG}line") if line.get("stroke-dasharray")]
    # The reference line at 0 sits between the shuffled row's whisker and the pair's.
    assert float(whiskers[1].get("x2")) < float(reference.get("x1")) < float(whiskers[0].get("x1"))
