"""tools/gpu/report.py: the device check's targets judged from a results file."""

import json
import sys

from tests.fixtures.paths import ROOT

sys.path.insert(0, str(ROOT / "tools" / "gpu"))

import report  # noqa: E402

SAMPLER = dict(step="sampler", shape="qwen2.5-0.5b", engine="hf_generate_dynamic", rows=512, new_tokens=150)


def verdicts(entries):
    return {target.step: report.judge(target, entries) for target in report.TARGETS}


def test_each_target_is_met_missed_or_not_measured():
    entries = [
        dict(SAMPLER, static_speedup=3.5),
        dict(step="decode", shape="qwen2.5-7b", ratio_to_floor=2.4),
        dict(step="decode", shape="qwen2.5-0.5b", ratio_to_floor=1.1),  # another shape: not the target's
        dict(step="sft_av", shape="qwen2.5-7b", mfu=0.40),
        dict(step="sft_ar", shape="qwen2.5-7b", mfu=None),  # no peak known for the device: no MFU
    ]
    assert verdicts(entries) == {"sampler": (3.5, "met"), "decode": (2.4, "missed"), "sft_av": (0.40, "met"),
                                 "sft_ar": (None, "not measured")}


def test_a_target_is_judged_only_at_its_own_size():
    # The CPU dry run's tiny sampler rows say nothing of the 512 x 150 target.
    small = dict(SAMPLER, rows=4, static_speedup=9.0)
    assert verdicts([small])["sampler"] == (None, "not measured")
    assert verdicts([small, dict(SAMPLER, static_speedup=2.0)])["sampler"] == (2.0, "missed")


def test_the_markdown_leads_with_the_targets(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(dict(SAMPLER, static_speedup=1.5)) + "\n")
    text = report.write(results, tmp_path / "results.md")
    assert text == (tmp_path / "results.md").read_text()
    targets, sampler = text.index("## targets"), text.index("## sampler")
    assert targets < sampler
    assert "| sampler >= 3x HF generate (default cache), Qwen2.5-0.5B, 512 rows x 150 tokens | 1.5 | missed |" in text
    assert text.count("| not measured |") == 3
    assert report.write(tmp_path / "absent.jsonl", tmp_path / "empty.md").count("| not measured |") == 4
