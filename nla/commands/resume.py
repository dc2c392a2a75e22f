"""``--ckpt_path last`` that never silently starts over, and ``last_or_fresh`` for restartable jobs.

Lightning treats ``ckpt_path: last`` with no checkpoint to find as a warning and trains from step 0,
so a typo in a log directory, or a logger that picks a new version per run, throws away a run's
progress without a word. Here:

- ``last``: resume from the newest ``last*.ckpt`` of the run's ``ModelCheckpoint`` directories; none
  there is a one-line error (exit 2).
- ``last_or_fresh``: the same when one exists, else start from scratch, saying so (for a job
  scheduler that reruns one command after preemption).
- a path: it must exist.

A run's checkpoint directory is ``ModelCheckpoint.dirpath``, or ``<save_dir>/<name>/<version>/checkpoints``
of the first logger (``default_root_dir/checkpoints`` without one), as Lightning decides it; resuming
therefore needs a fixed logger ``version`` (every shipped config sets one).
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from nla.core.errors import ConfigError

LAST = "last"
LAST_OR_FRESH = "last_or_fresh"


def checkpoint_directory(trainer, callback: ModelCheckpoint) -> Path:
    """Where ``callback`` writes, resolved as ``ModelCheckpoint`` itself does at setup."""
    if callback.dirpath is not None:
        return Path(callback.dirpath)
    if trainer.loggers:
        logger = trainer.loggers[0]
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return Path(save_dir, str(logger.name), version, "checkpoints")
    return Path(trainer.default_root_dir, "checkpoints")


def last_checkpoints(trainer) -> tuple[list[Path], list[Path]]:
    """(``last*.ckpt`` files found, the directories searched)."""
    directories = [checkpoint_directory(trainer, cb) for cb in trainer.checkpoint_callbacks
                   if isinstance(cb, ModelCheckpoint)]
    found = [path for directory in directories if directory.is_dir() for path in directory.iterdir()
             if path.suffix == ".ckpt" and path.stem.split("-")[0] == ModelCheckpoint.CHECKPOINT_NAME_LAST]
    return found, directories


def resolve_ckpt_path(trainer, ckpt_path: str | None) -> str | None:
    """The checkpoint ``trainer.fit`` should load (None: start fresh); see the module docstring."""
    if ckpt_path is None:
        return None
    if ckpt_path not in (LAST, LAST_OR_FRESH):
        if not os.path.exists(ckpt_path) and "://" not in str(ckpt_path):
            raise ConfigError("ckpt_path", f"{ckpt_path} does not exist; give an existing checkpoint, "
                              f"{LAST!r} or {LAST_OR_FRESH!r}")
        return ckpt_path
    found, directories = last_checkpoints(trainer)
    if found:
        return str(max(found, key=lambda path: path.stat().st_mtime_ns))
    if ckpt_path == LAST_OR_FRESH:
        rank_zero_info(f"ckpt_path: no last checkpoint in {', '.join(map(str, directories)) or 'any directory'}; "
                       "starting fresh")
        return None
    if not any(getattr(cb, "save_last", False) for cb in trainer.checkpoint_callbacks):
        raise ConfigError("ckpt_path", "is 'last' but no ModelCheckpoint in trainer.callbacks has save_last: true, "
                          "so no run can be resumed; add one, or drop --ckpt_path to start fresh")
    searched = ", ".join(map(str, directories))
    raise ConfigError("ckpt_path", f"is 'last' but {searched} holds no last checkpoint (check trainer.default_root_dir "
                      f"and the logger's fixed version); drop --ckpt_path to start fresh, or use {LAST_OR_FRESH!r} to "
                      "resume only when one exists")
