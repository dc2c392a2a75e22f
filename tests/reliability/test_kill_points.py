"""kill -9 at the atomic renames of every stage resumes to the same bytes.

A tiny SFT run (cache, extractive summaries, checkpoints, export), a GRPO run from its export and an
``nla export`` over an older export are each killed (``tests/fixtures/kill_points.py``) just before a
chosen rename, then run again with ``--ckpt_path last_or_fresh``; what they leave (cache, summaries,
exports with their sidecars and cards) must equal, byte for byte, what the uninterrupted run left. The
renames are read from the uninterrupted run's own log, so a new stage's renames show up there.
Between the kill and the rerun, an export directory holds one whole pair or none, never halves of two.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nla.data.cache_format import LOCATION
from nla.models.sidecar import read_sidecar
from tests.fixtures.commands import GRPO, GRPO_SOURCE, source_overrides, sft_argv
from tests.fixtures.corpus import write_corpus
from tests.fixtures.paths import ROOT

pytestmark = pytest.mark.slow

CHECKPOINTS = {"trainer": {"callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                          "init_args": {"every_n_train_steps": 2, "save_last": True,
                                                        "save_top_k": -1}}]}}


def run(root: Path, argv: list[str], kill_at: str = "", occurrence: int = 1) -> tuple[int, list[str]]:
    """Exit status and the renames (destinations, in order) of ``nla argv``, killed just before the
    ``occurrence``-th rename whose destination matches the regular expression ``kill_at``."""
    log = root / "renames.log"
    log.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", NLA_CACHE_DIR=str(root / "nla-cache"))
    done = subprocess.run([sys.executable, "-m", "tests.fixtures.kill_points", str(log), kill_at, str(occurrence),
                           *argv], env=env, cwd=root, capture_output=True, text=True)
    renames = log.read_text().splitlines() if log.exists() else []
    if not kill_at:
        assert done.returncode == 0, done.stderr[-3000:]
    return done.returncode, renames


def tree(*directories: Path) -> dict[str, bytes]:
    """Every file under ``directories`` by path: what a rerun must reproduce exactly. A cache's
    ``location.json`` records the inode of its directory, which a test that deletes it changes."""
    return {str(path): path.read_bytes() for directory in directories for path in sorted(directory.rglob("*"))
            if path.is_file() and path.name != LOCATION}


def occurs(renames: list[str], pattern: str, occurrence: int = 1) -> None:
    """The uninterrupted run renamed onto ``pattern`` at least ``occurrence`` times: the kill will land."""
    assert sum(re.search(pattern, target) is not None for target in renames) >= occurrence, (pattern, renames)


def one_pair_or_none(export: Path) -> None:
    """A killed export leaves the earlier pair whole (both sidecars of one step) or nothing at all."""
    if export.exists():
        av, ar = read_sidecar(export / "av"), read_sidecar(export / "ar")
        assert (av.stage, av.training["steps"]) == (ar.stage, ar.training["steps"])


def check_kill_and_rerun(root: Path, argv: list[str], kill_at: str, occurrence: int, clear: list[Path],
                         outputs: list[Path], expected: dict[str, bytes], export: Path) -> None:
    for path in clear:
        shutil.rmtree(path, ignore_errors=True)
    code, _ = run(root, argv, kill_at, occurrence)
    assert code == -signal.SIGKILL
    one_pair_or_none(export)
    run(root, argv)
    assert tree(*outputs) == expected


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("kill-points")
    write_corpus(root)
    (root / "checkpoints.yaml").write_text(yaml.safe_dump(CHECKPOINTS))
    return root, tiny_model_dir("llama")


def sft_command(root: Path, model: Path) -> list[str]:
    return [*sft_argv(model, root / "docs.jsonl", root / "cache", root / "sft", *source_overrides(GRPO_SOURCE),
                      "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
                      "--model.init_args.sample_every_n_steps", "0"),
            "--config", str(root / "checkpoints.yaml"), "--ckpt_path", "last_or_fresh"]


@pytest.fixture(scope="module")
def sft_run(workspace):
    root, model = workspace
    argv = sft_command(root, model)
    _, renames = run(root, argv)
    return argv, renames, tree(root / "cache", root / "sft" / "export")


# Every kind of file a run renames into place: the cache's plan, a shard's first file and its manifest
# (the shard's commit), the statistics and meta.json; the first and the last split's summaries; the
# first checkpoint and the second last.ckpt (an older one is there); a sidecar inside the export's
# staging directory and the export's swap.
SFT_POINTS = [(r"cache/plan\.json$", 1), (r"shards/shard-00001\.vectors\.npy$", 1), (r"shards/shard-00001\.json$", 1),
              (r"cache/split_means\.npy$", 1), (r"cache/meta\.json$", 1), (r"summaries/.*/av_sft\.json$", 1),
              (r"summaries/.*/heldout\.json$", 1), (r"step=2\.ckpt$", 1), (r"last\.ckpt$", 2),
              (r"\.export\.staging-[^/]*/ar/nla_meta\.yaml$", 1), (r"sft/export$", 1)]


@pytest.mark.parametrize("kill_at, occurrence", SFT_POINTS)
def test_a_killed_sft_run_reruns_to_the_same_bytes(workspace, sft_run, kill_at, occurrence):
    root, _ = workspace
    argv, renames, expected = sft_run
    occurs(renames, kill_at, occurrence)
    check_kill_and_rerun(root, argv, kill_at, occurrence, [root / "cache", root / "sft"],
                         [root / "cache", root / "sft" / "export"], expected, root / "sft" / "export")


def grpo_command(root: Path, model: Path) -> list[str]:
    return ["fit", "--config", str(GRPO), *source_overrides(GRPO_SOURCE),
            "--data.init_args.source.target.name_or_path", str(model),
            "--data.init_args.source.corpus.path", str(root / "docs.jsonl"),
            "--data.init_args.source.cache.directory", str(root / "cache"),
            "--model.init_args.sft_export", str(root / "sft" / "export"),
            "--model.init_args.best_export_dir", str(root / "grpo" / "best"),
            "--model.init_args.export_dir", str(root / "grpo" / "final"),
            "--trainer.default_root_dir", str(root / "grpo"), "--trainer.logger.init_args.save_dir", str(root / "grpo"),
            "--ckpt_path", "last_or_fresh"]


@pytest.fixture(scope="module")
def grpo_run(workspace, sft_run):
    root, model = workspace
    argv = grpo_command(root, model)
    _, renames = run(root, argv)
    outputs = [root / "grpo" / "best", root / "grpo" / "final"]
    return argv, renames, outputs, tree(*outputs)


@pytest.mark.parametrize("kill_at, occurrence", [(r"step=2\.ckpt$", 1), (r"grpo/.*last\.ckpt$", 2),
                                                  (r"grpo/best$", 1), (r"grpo/final$", 1)])
def test_a_killed_grpo_run_reruns_to_the_same_bytes(workspace, grpo_run, kill_at, occurrence):
    root, _ = workspace
    argv, renames, outputs, expected = grpo_run
    occurs(renames, kill_at, occurrence)
    check_kill_and_rerun(root, argv, kill_at, occurrence, [root / "grpo"], outputs, expected, root / "grpo" / "best")


def test_a_killed_export_leaves_the_older_pair_whole(workspace, sft_run):
    root, _ = workspace
    version = root / "sft" / "sft" / "version_0"
    first, last = sorted(version.glob("checkpoints/epoch=*.ckpt"))[0], version / "checkpoints" / "last.ckpt"
    target = root / "exported"
    export = ["export", "--fit_config", str(version / "config.yaml"), "--output", str(target), "--ckpt_path"]
    _, renames = run(root, [*export, str(last)])
    expected = tree(target)
    run(root, [*export, str(first)])
    older = tree(target)
    occurs(renames, r"/exported$")
    code, _ = run(root, [*export, str(last)], r"/exported$")
    assert code == -signal.SIGKILL
    assert tree(target) == older
    run(root, [*export, str(last)])
    assert tree(target) == expected
