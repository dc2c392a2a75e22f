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


def pipeline(directory: Path, *options: str) -> dict[str, str]:
    """The digests ``tests.fixtures.recorded_pipeline`` prints, run in a process with pinned numerics."""
    environment = {**os.environ, **PINNED_ENVIRONMENT, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tests.fixtures.recorded_pipeline", str(directory), *options],
                          env=environment, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("DIGESTS "))
    return json.loads(line.removeprefix("DIGESTS "))


def assert_recorded(digests: dict[str, str], recorded: dict[str, str]) -> None:
    assert sorted(digests) == sorted(recorded)
    changed = sorted(key for key in recorded if digests[key] != recorded[key])
    assert not changed, f"{len(changed)} of {len(recorded)} exported tensors differ, e.g. {changed[:5]}"


def test_a_short_sft_and_grpo_run_exports_the_recorded_tensors(tmp_path):
    digests = pipeline(tmp_path)
    assert_recorded(digests, json.loads(RECORDED.read_text())["digests"])
    # The run must exercise both stages: GRPO's final pair moved away from its SFT start.
    assert digests["grpo-final/av/model.safetensors:lm_head.weight"] != digests["sft/av/model.safetensors:lm_head.weight"]
    assert digests["grpo-final/ar/value_head.safetensors:weight"] != digests["sft/ar/value_head.safetensors:weight"]


def test_a_run_saved_before_the_move_resumes_and_exports_the_recorded_tensors(tmp_path):
    """Saved runs keep working: the SFT run's ``config.yaml`` and step-3 checkpoint, written by the
    code before the move (class paths and keys of that day), resume to the recorded SFT pair; ``nla
    export`` through that config writes it again; the GRPO run's saved config trains the recorded pair."""
    digests = pipeline(tmp_path, "--saved-before-move")
    recorded = json.loads(RECORDED.read_text())["digests"]
    exported = {key.replace("sft-exported/", "sft/", 1): value for key, value in digests.items()
                if key.startswith("sft-exported/")}
    assert_recorded({key: value for key, value in digests.items() if not key.startswith("sft-exported/")}, recorded)
    assert exported == {key: value for key, value in recorded.items() if key.startswith("sft/")}
