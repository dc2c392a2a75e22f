"""``check.py report``: the device check's results file as markdown, led by the targets the device
check was written to test (issue 12), each met, missed or not measured.

Targets are benchmarks, not tests: a missed one is a finding to record, not a failure of the check.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Target:
    """One figure the device check should reach."""

    name: str
    """What is claimed, in words."""
    step: str
    """The results' ``step`` whose entry holds the figure."""
    where: dict
    """The entry's settings the target is defined at (shape, rows, ...)."""
    key: str
    """The figure's field in that entry."""
    bound: float
    """The figure's limit."""
    at_least: bool
    """Whether the figure must reach ``bound`` (else stay within it)."""


TARGETS = (
    Target("sampler >= 3x HF generate (default cache), Qwen2.5-0.5B, 512 rows x 150 tokens", "sampler",
           dict(shape="qwen2.5-0.5b", engine="hf_generate_dynamic", rows=512, new_tokens=150), "static_speedup",
           3.0, True),
    Target("7B decode step within 2x its weight-streaming time", "decode", dict(shape="qwen2.5-7b"),
           "ratio_to_floor", 2.0, False),
    Target("SFT MFU of the AV >= 40%, Qwen2.5-7B", "sft_av", dict(shape="qwen2.5-7b"), "mfu", 0.40, True),
    Target("SFT MFU of the AR >= 30%, Qwen2.5-7B", "sft_ar", dict(shape="qwen2.5-7b"), "mfu", 0.30, True),
)


def judge(target: Target, entries: list[dict]) -> tuple[float | None, str]:
    """The target's measured figure (the last matching entry's) and ``met`` / ``missed`` / ``not measured``."""
    found = [e for e in entries if e.get("step") == target.step and e.get(target.key) is not None
             and all(e.get(key) == value for key, value in target.where.items())]
    if not found:
        return None, "not measured"
    value = float(found[-1][target.key])
    met = value >= target.bound if target.at_least else value <= target.bound
    return value, "met" if met else "missed"


def markdown(entries: list[dict]) -> str:
    lines = [f"# nla device check ({platform.node()}, torch {torch.__version__})", ""]
    if torch.cuda.is_available():
        lines += [f"Device: {torch.cuda.get_device_name(0)}", ""]
    lines += ["## targets", "", "| target | measured | verdict |", "|---|---|---|"]
    for target in TARGETS:
        value, verdict = judge(target, entries)
        lines.append(f"| {target.name} | {_cell(value)} | {verdict} |")
    lines.append("")
    by_step: dict[str, list[dict]] = {}
    for entry in entries:
        by_step.setdefault(entry["step"], []).append(entry)
    for step, items in by_step.items():
        keys = list(dict.fromkeys(key for item in items for key in item if key != "step"))
        lines += [f"## {step}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for item in items:
            lines.append("| " + " | ".join(_cell(item.get(key)) for key in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def write(results: Path, destination: Path) -> str:
    """Render ``results`` (JSON lines; missing: no entries) into ``destination`` and return the text."""
    entries = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] \
        if results.is_file() else []
    text = markdown(entries)
    destination.write_text(text)
    return text


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
