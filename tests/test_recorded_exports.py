"""Behaviour unchanged: a short SFT + GRPO run on the tiny warm llama exports, tensor for tensor and
bit for bit, what the same run exported when it was recorded (``tests/fixtures/recorded_exports.json``,
made at the commit it names by ``tests/fixtures/recorded_pipeline.py``).

A change that is meant to alter what training computes records the digests again in its own commit
(``python -m tests.fixtures.recorded_pipeline DIR`` under ``PINNED_ENVIRONMENT``) and says why in the
CHANGELOG; a refactor never does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.recorded_pipeline import PINNED_ENVIRONMENT, ROOT

RECORDED = Path(__file__).resolve().parent / "fixtures" / "recorded_exports.json"


def test_a_short_sft_and_grpo_run_exports_the_recorded_tensors(tmp_path):
    environment = {**os.environ, **PINNED_ENVIRONMENT, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tests.fixtures.recorded_pipeline", str(tmp_path)],
                          env=environment, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("DIGESTS "))
    digests = json.loads(line.removeprefix("DIGESTS "))
    recorded = json.loads(RECORDED.read_text())["digests"]
    assert sorted(digests) == sorted(recorded)
    changed = sorted(key for key in recorded if digests[key] != recorded[key])
    assert not changed, f"{len(changed)} of {len(recorded)} exported tensors differ, e.g. {changed[:5]}"
    # The run must exercise both stages: GRPO's final pair moved away from its SFT start.
    assert digests["grpo-final/av/model.safetensors:lm_head.weight"] != digests["sft/av/model.safetensors:lm_head.weight"]
    assert digests["grpo-final/ar/value_head.safetensors:weight"] != digests["sft/ar/value_head.safetensors:weight"]
