"""tools/bench/plot_curves.py on a tiny event file: one polyline point per logged step, values in the table."""

from __future__ import annotations

import importlib.util
import sys
import xml.etree.ElementTree as ET

from torch.utils.tensorboard import SummaryWriter
from tests.fixtures.paths import ROOT

SCRIPT = ROOT / "tools" / "bench" / "plot_curves.py"
SVG = "{http://www.w3.org/2000/svg}"
POINTS = {0: 0.125, 10: 0.25, 20: 0.5, 30: 0.625}


def load_script():
    spec = importlib.util.spec_from_file_location("plot_curves", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the script is being executed.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_svg_has_one_point_per_step_and_the_table_lists_the_values(tmp_path):
    writer = SummaryWriter(str(tmp_path / "run"))
    for step, value in POINTS.items():
        writer.add_scalar("val/fve", value, step)
        writer.add_scalar("train/kl", 1.0, step)
    writer.close()

    out = tmp_path / "figures" / "fve.svg"
    table = load_script().plot([tmp_path / "run"], out, labels=["grpo"], title="FVE & steps")

    root = ET.parse(out).getroot()
    (polyline,) = root.iter(f"{SVG}polyline")
    assert len(polyline.get("points").split()) == len(POINTS)
    assert "FVE & steps" in [text.text for text in root.iter(f"{SVG}text")]
    assert "grpo" in [text.text for text in root.iter(f"{SVG}text")]
    lines = table.splitlines()
    assert lines[0] == "| step | grpo |"
    assert lines[2:] == [f"| {step} | {value:.4g} |" for step, value in POINTS.items()]
