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

from nla.commands import legacy
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


def check_fresh_start(trainer) -> None:
    """A fit without ``--ckpt_path`` must not write over the checkpoints of an earlier run."""
    for callback in trainer.checkpoint_callbacks:
        directory = checkpoint_directory(trainer, callback) if isinstance(callback, ModelCheckpoint) else None
        earlier = sorted(p.name for p in directory.iterdir() if p.suffix == ".ckpt") if directory and directory.is_dir() else []
        if earlier:
            raise ConfigError("ckpt_path", f"is not set but {directory} holds the checkpoints of an earlier run "
                              f"({', '.join(earlier[:3])}); resume it with --ckpt_path last, or start over in another "
                              "directory (trainer.logger.init_args.version) or after deleting that one")


# What may differ between a run and its resumption: where files go, how much is logged or sampled,
# and how far the run goes (trainer.max_steps, unless the learning-rate schedule ends there).
CHANGEABLE = ("model.export_dir", "model.best_export_dir", "model.sample_every_n_steps", "model.num_samples",
              "model.peak_tflops", "model.eval_every_n_steps", "model.eval_max_batches", "data.num_workers",
              "data.pin_memory", "data.progress", "data.summaries_dir", "data.source.cache.directory",
              "data.source.cache.checksums", "data.source.cache.repair")
FIXED_TRAINER = ("seed_everything", "trainer.accumulate_grad_batches", "trainer.gradient_clip_val",
                 "trainer.gradient_clip_algorithm", "trainer.precision")


def _flat(node, prefix: str = "") -> dict:
    """Dotted keys of a config mapping, ``init_args`` left out as in every key nla names."""
    if not isinstance(node, dict):
        return {prefix: node}
    out = {}
    for key, value in node.items():
        path = prefix if key == "init_args" else f"{prefix}.{key}" if prefix else str(key)
        out.update(_flat(value, path))
    return out


def _fixed(key: str, saved: dict) -> bool:
    if key.startswith(("model.", "data.")):
        return not key.startswith(CHANGEABLE) and not key.endswith("class_path")
    # Without model.schedule_steps the cosine schedule ends at max_steps: moving it bends the schedule mid-run.
    if key == "trainer.max_steps":
        return "model.schedule_steps" in saved and saved["model.schedule_steps"] is None
    return key in FIXED_TRAINER


def _readable_checkpoint(path: Path) -> dict:
    """The checkpoint's contents, memory-mapped (no weights read); one line when it cannot be read."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a truncated or foreign file fails in the zip reader, the unpickler, ...
        others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path)
        hint = f"give one of {', '.join(others[:3])} to --ckpt_path" if others else "start over without --ckpt_path"
        raise ConfigError("ckpt_path", f"{path} is not a readable checkpoint ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:120]}); it may be truncated: {hint}") from None


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_unchanged_settings(checkpoint: str, current: dict) -> None:
    """Refuse to resume ``checkpoint`` under settings it fixes (learning rates, batch size, ...): the
    optimizer and schedule would keep the old ones while the run's saved ``config.yaml`` recorded the
    new. Compared with the ``config.yaml`` of the checkpoint's run, else with the module's
    hyperparameters the checkpoint holds. A sharded checkpoint (a directory) is compared by config only."""
    path = Path(checkpoint)
    saved_config = path.parent.parent / "config.yaml"
    contents = {} if path.is_dir() else _readable_checkpoint(path)
    if saved_config.is_file():
        import yaml

        saved = legacy.migrate(yaml.safe_load(saved_config.read_text()) or {})[0]
    elif isinstance(contents.get("hyper_parameters"), dict):
        hparams = dict(contents["hyper_parameters"])
        saved = legacy.migrate({"model": {"class_path": hparams.pop("_class_path", None), "init_args": hparams}})[0]
    else:
        return
    saved, now = _flat(saved), _flat(current)
    changed = [key for key in saved if key in now and _fixed(key, saved) and saved[key] != now[key]]
    if changed:
        was = ", ".join(f"{key} {_show(saved[key])}" for key in changed)
        raise ConfigError("ckpt_path", f"the checkpoint {path} was trained with {was}, but this run sets "
                          f"{', '.join(_show(now[key]) for key in changed)}; resuming would keep the checkpoint's "
                          "optimizer and schedule while config.yaml records the new values: resume with the "
                          "run's own settings, or start a new run without --ckpt_path")
