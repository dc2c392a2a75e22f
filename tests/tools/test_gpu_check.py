"""tools/gpu/check.sh's CPU dry run: tiny shapes through every measurement step, so the device check
keeps working between the sessions that have a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path
from tests.fixtures.paths import ROOT



def test_check_script_dry_run_on_cpu(tmp_path):
    # check.sh calls python3 (the image's name): this interpreter's, whether or not its venv is active.
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "PATH": path}
    done = subprocess.run(["bash", "tools/gpu/check.sh", "--device", "cpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    log = (tmp_path / "check.log").read_text() if (tmp_path / "check.log").is_file() else ""
    assert done.returncode == 0, done.stdout[-3000:] + log[-6000:]
    entries = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    steps = {entry["step"] for entry in entries}
    assert steps == {"sampler", "decode", "sft_av", "sft_ar", "grpo", "varlen"}
    engines = {entry["engine"] for entry in entries if entry["step"] == "sampler"}
    assert engines == {"static", "loop", "hf_generate_dynamic", "hf_generate_static"}
    # The packed nla_varlen path (its CPU reference kernel) predicts what padded SDPA predicts.
    (difference,) = [e["value"] for e in entries if e["step"] == "varlen" and e["kernel"] == "relative difference"]
    assert difference < 1e-5
    grpo = [e for e in entries if e["step"] == "grpo"]
    assert all(e["ar_update_s"] > 0 and e["generated_tokens"] == e["rows"] * e["new_tokens"] for e in grpo)
    # The 7B steps' settings ran too, as training accepts them: 8-bit AdamW over float32 masters, in full
    # (SFT) and with LoRA on both models (GRPO: both 7B models in full need more than one GPU).
    settings = {(e["step"], e["masters"], e["optimizer"], e["lora"]) for e in entries if "optimizer" in e}
    assert settings == {(step, "float32", "adamw", None) for step in ("sft_av", "sft_ar", "grpo")} | {
        ("sft_av", "float32", "adamw8bit", None), ("sft_ar", "float32", "adamw8bit", None),
        ("grpo", "float32", "adamw8bit", 4)}
    assert "## sft_av" in (tmp_path / "results.md").read_text()


def test_the_check_refuses_what_training_refuses(tmp_path):
    # Its settings go through training's own checks (TrainingArgs), before any model is built: bf16
    # weights under plain 8-bit AdamW, which training refuses, cannot be timed as if a user could run them.
    done = subprocess.run([sys.executable, "tools/gpu/check.py", "grpo", "--device", "cpu", "--shape", "tiny",
                           "--prompts", "2", "--group", "2", "--tokens", "5", "--micro", "2", "--repeats", "1",
                           "--no-masters", "--optimizer", "adamw8bit", "--out", str(tmp_path / "results.jsonl")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and not (tmp_path / "results.jsonl").exists()
    assert done.stderr.strip().splitlines()[-1].startswith("check: model.training.dtype: is bfloat16: AdamW updates")


def test_prepare_refuses_a_python_without_the_projects_packages(tmp_path):
    # A `python` that cannot import tokenizers (the system one, venv not active) is refused before any
    # download, and the carried folder is left as it was.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    carried = ROOT / ".whl"
    before = sorted(p.name for p in carried.iterdir()) if carried.is_dir() else None
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}
    done = subprocess.run(["bash", "tools/gpu/prepare.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "lacks tokenizers; activate the project's venv" in done.stderr and done.stderr.count("\n") == 1
    assert (sorted(p.name for p in carried.iterdir()) if carried.is_dir() else None) == before
