"""tools/bench/scale.py on the tiny llama: one row per requested setting, real figures for the ones the
machine runs, and an n/a row with its reason for the one it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
from tests.fixtures.paths import ROOT

SCRIPT = ROOT / "tools" / "bench" / "scale.py"


def rows(output: str) -> dict[str, list[str]]:
    table = [line for line in output.splitlines() if line.startswith("| ") and not line.startswith("| setting")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table)}


def test_table_has_a_row_per_setting_with_positive_figures(tiny_model_dir):
    # One thread per worker: the machine is shared, and the figures only need to be positive here.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(tiny_model_dir("llama")), "--device", "cpu",
         "--settings", "baseline,grad_ckpt,bf16", "--steps", "1", "--batch", "2", "--prompts", "2",
         "--samples", "2", "--max-new-tokens", "8"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "peak RSS the steps add over the built models (CPU)" in done.stdout
    table = rows(done.stdout)
    assert list(table) == ["baseline", "grad_ckpt", "bf16"]
    for name in ("baseline", "grad_ckpt"):
        sft_s, sft_mib, grpo_s, grpo_mib, params = table[name]
        assert all(float(value) > 0 for value in (sft_s, sft_mib, grpo_s, grpo_mib)), table[name]
        assert int(params.replace(",", "")) > 0
    # Recomputing blocks changes what is kept for backward, never what trains.
    assert table["grad_ckpt"][4] == table["baseline"][4]
    assert table["bf16"] == ["n/a (bf16 is measured on CUDA only)", "n/a"] * 2 + ["n/a"]
