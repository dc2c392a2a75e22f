"""Configs written before the settings were nested (nla before 0.1.0): read for one more release.

A run's saved ``config.yaml`` and the dotted overrides of a command line may still use the flat
names of that day (``model.init_args.av_lr``, ``model.init_args.samples_per_prompt``,
``data.init_args.model``). ``migrate`` rewrites a config mapping to today's names and says which keys
it renamed; ``migrate_argv`` does the same for ``--key value`` overrides. Class paths did not change,
so the module a config names decides which of its keys are old.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

SFT = "nla.modules.sft.SFTModule"
GRPO = "nla.modules.grpo.GRPOModule"
DATA = "nla.data.datamodule.NLADataModule"

TRAINING = ("betas", "weight_decay", "dtype", "optimizer", "verbalizer_lora", "reconstructor_lora",
            "max_nonfinite_steps")
ROLLOUT = ("samples_per_prompt", "micro_batch_size", "max_new_tokens", "temperature", "reward", "advantage",
           "clip_epsilon", "kl_coef", "kl_estimator", "loss_aggregation", "sampler", "unfinished",
           "unfinished_penalty", "overlong_buffer", "overlong_penalty", "uniform_groups", "greedy_answer")
SOURCE = ("corpus", "cache", "splits", "teacher", "prompts")

RENAMED: dict[str, dict[str, str]] = {
    SFT: {"verbalizer_lr": "training.verbalizer_lr", "reconstructor_lr": "training.reconstructor_lr",
          **{key: f"training.{key}" for key in TRAINING}},
    GRPO: {"av_lr": "training.verbalizer_lr", "ar_lr": "training.reconstructor_lr",
           **{key: f"training.{key}" for key in TRAINING}, **{key: f"rollout.{key}" for key in ROLLOUT},
           "samples_every_n_steps": "sample_every_n_steps",
           # Swapped: the end-of-fit pair is export_dir in both modules now, the best one best_export_dir.
           "export_dir": "best_export_dir", "final_export_dir": "export_dir"},
    DATA: {"model": "source.target", **{key: f"source.{key}" for key in SOURCE}},
}
"""Old init argument -> today's dotted path under ``init_args``, per class."""
CACHE_RENAMED = {"model": "source.target", "corpus": "source.corpus", "cache": "source.cache",
                 "splits": "source.splits"}
"""The same for an ``nla cache`` config, whose keys are top-level."""
COMMAND_RENAMED = {"cache": CACHE_RENAMED, "import": {"model": "target"}}
"""Renamed options of nla's own subcommands."""
NEW_KEYS = {SFT: {"training"}, GRPO: {"training", "rollout", "best_export_dir"}, DATA: {"source"}}
"""Keys only today's configs have: a mapping holding one is not read as old."""
AMBIGUOUS = {GRPO: {"export_dir"}}
"""Old keys that are also today's keys with another meaning: renamed only beside an unambiguous old key."""


def _old_keys(keys, cls: str) -> bool:
    """Whether ``keys`` (init arguments of ``cls``) are written with the old names."""
    keys = set(keys)
    return bool(keys & (set(RENAMED[cls]) - AMBIGUOUS.get(cls, set()))) and not keys & NEW_KEYS[cls]


def _renamed(init: dict, renames: dict[str, str], prefix: str, notes: list[str]) -> dict:
    """``init`` with every old key moved to its new dotted path (all moves read the old mapping,
    so two keys that swap names swap values)."""
    out: dict = {}
    for key, value in init.items():
        if key not in renames:
            out[key] = value
            continue
        *parents, leaf = renames[key].split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
        notes.append(f"{prefix}{key} -> {prefix}{renames[key]}")
    return out


def migrate(config: dict) -> tuple[dict, list[str]]:
    """A fit or cache config mapping with today's names, and the renames made (empty when none)."""
    notes: list[str] = []
    config = dict(config)
    if "trainer" not in config and "model" in config and "corpus" in config:
        return _renamed(config, CACHE_RENAMED, "", notes), notes
    for section in ("model", "data"):
        block = config.get(section)
        if not isinstance(block, dict):
            continue
        cls = block.get("class_path")
        init = block.get("init_args")
        if cls in RENAMED and isinstance(init, dict) and _old_keys(init, cls):
            init = _renamed(init, RENAMED[cls], f"{section}.init_args.", notes)
            if cls == GRPO and init.get("injection_scale", "auto") is None:
                init["injection_scale"] = "auto"
            if cls == DATA:
                # None meant "the default" for the old optional blocks; the data source has defaults.
                init["source"] = {key: value for key, value in init["source"].items() if value is not None}
            config[section] = {**block, "init_args": init}
    return config, notes


def _init_key(parts: list[str]) -> tuple[int, str | None]:
    """Where the init argument sits in a dotted key split at its dots (``model.init_args.X.y`` or
    ``model.X.y``), and its name (None when the key names none)."""
    at = 2 if len(parts) > 1 and parts[1] == "init_args" else 1
    return at, parts[at] if len(parts) > at else None


def migrate_argv(argv: list[str], classes: dict[str, str]) -> tuple[list[str], list[str]]:
    """Dotted overrides (``--model.init_args.av_lr 1e-4``, ``--data.model.dtype=x``) renamed for the
    classes ``classes`` names per section (``{"model": class path, "data": class path}``) when they
    are written the old way, and the options of the subcommand ``classes[""]`` names (``nla cache
    --model.name_or_path``)."""
    split = [arg.partition("=")[0][2:].split(".") if arg.startswith("--") else [] for arg in argv]
    given: dict[str, set[str]] = {}
    for parts in split:
        if parts and parts[0] in classes and classes[parts[0]] in RENAMED:
            given.setdefault(parts[0], set()).add(_init_key(parts)[1])
    old = {section for section, keys in given.items() if _old_keys(keys, classes[section])}
    command = COMMAND_RENAMED.get(classes.get(""), {})
    notes: list[str] = []
    out = []
    for arg, parts in zip(argv, split):
        new = None
        if parts and parts[0] in command:
            new = [*command[parts[0]].split("."), *parts[1:]]
        elif parts and parts[0] in old:
            at, key = _init_key(parts)
            if key in RENAMED[classes[parts[0]]]:
                new = [*parts[:at], *RENAMED[classes[parts[0]]][key].split("."), *parts[at + 1:]]
        if new is not None:
            head, eq, value = arg.partition("=")
            notes.append(f"{head} -> --{'.'.join(new)}")
            arg = f"--{'.'.join(new)}{eq}{value}"
        out.append(arg)
    return out, notes


def warn(source: str, notes: list[str]) -> None:
    """One line on stderr naming what was renamed, so the user updates the file."""
    if notes:
        print(f"nla: {source} uses names from before 0.1.0, read until the next release: {'; '.join(notes)}",
              file=sys.stderr)


def _class_paths(config: dict, classes: dict[str, str]) -> None:
    for section in ("model", "data"):
        block = config.get(section)
        if isinstance(block, dict) and isinstance(block.get("class_path"), str):
            classes[section] = block["class_path"]


def migrated_args(args: list[str], command: str = "fit") -> list[str]:
    """``args`` of ``nla COMMAND`` with each ``--config`` file written with the names from before 0.1.0
    handed on renamed (as YAML text: such files name no other file) and old dotted overrides renamed."""
    out: list[str] = []
    classes: dict[str, str] = {"": command}
    index = 0
    while index < len(args):
        arg = args[index]
        key, _, inline = arg.partition("=")
        if key in ("--config", "-c") and (inline or index + 1 < len(args)):
            value = inline or args[index + 1]
            index += 1 if inline else 2
            path = Path(value)
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
            except (OSError, yaml.YAMLError):
                loaded = None  # the parser reports it
            if isinstance(loaded, dict):
                migrated, notes = migrate(loaded)
                _class_paths(migrated, classes)
                if notes:
                    warn(value, notes)
                    value = yaml.safe_dump(migrated, sort_keys=False, allow_unicode=True)
            out += ["--config", value]
            continue
        if key in ("--model", "--model.class_path", "--data", "--data.class_path") and (inline or index + 1 < len(args)):
            classes[key[2:].split(".")[0]] = inline or args[index + 1]
        out.append(arg)
        index += 1
    out, notes = migrate_argv(out, classes)
    warn("the command line", notes)
    return out
