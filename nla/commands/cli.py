"""``python -m nla`` / ``nla``: LightningCLI for training, plus nla's own subcommands in the same style.

The four trainer subcommands (fit, validate, test, predict) go to LightningCLI. Every other subcommand
is a function whose signature (dataclass arguments included) jsonargparse turns into a parser, so it
takes ``--config X.yaml`` and dotted overrides exactly like ``fit`` does. Errors in the user's input,
whether from the parser or from nla itself, print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
import typing
from typing import Callable

from nla.commands.config_errors import (describe_parse_error, describe_trainer_error, function_root, lift_config_error,
                                        located, trainer_root)
from nla.core.errors import ConfigError, NLAError

TRAINER_SUBCOMMANDS = {
    "fit": "train a model (SFT warm start or GRPO), as named by the config's model.class_path",
    "validate": "run one evaluation epoch on the validation split",
    "test": "run one evaluation epoch on the test split",
    "predict": "run inference with a trained module",
}

# name -> ("module:function", one-line description). Imported lazily so `nla --help` stays fast.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("nla.commands.inspect_model:inspect_model", "show family, depth, width, default layer and marker of a model"),
    "cache": ("nla.commands.cache:cache", "cache residual-stream activations to sharded memmaps"),
    "export": ("nla.commands.export:export", "write a training checkpoint's AV/AR pair as HF directories"),
    "explain": ("nla.commands.explain.command:explain", "explain a text's activations token by token with a trained AV/AR pair"),
    "evaluate": ("nla.commands.evaluate:evaluate", "the paper's checks of a pair on held-out data, with intervals"),
    "steer": ("nla.commands.steer.command:steer", "edit an explanation, patch its reconstruction into the target, compare"),
    "quickstart": ("nla.commands.quickstart:quickstart", "the whole pipeline on CPU: cache, SFT, GRPO, held-out FVE table"),
    "import": ("nla.commands.import_reference:import_datasets",
               "convert reference-format parquet datasets (.nla_meta.yaml) into an activation cache"),
    "plan": ("nla.commands.plan.command:plan", "parameters, memory per GPU and time per step of a config, before any download"),
    "audit": ("nla.commands.audit.run:audit", "explain chosen positions of every text of a dataset into a resumable table"),
    "audit query": ("nla.commands.audit.query:query",
                    "how often an audit's explanations match a pattern or a judged claim, with intervals"),
    "audit page": ("nla.commands.audit.page:page", "one self-contained HTML page to search and filter an audit"),
}
# Subcommands whose --config names the config they examine, not a file of their own options.
CONFIG_IS_INPUT = {"plan"}


def one_line(message: str) -> str:
    parts = [part.strip() for part in str(message).splitlines() if part.strip()]
    text = parts[0] if parts else ""
    for part in parts[1:]:
        text += (" " if text.endswith(":") else "; ") + part
    return text


def fail(message: str) -> None:
    print(f"nla: error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(2)


def print_overview() -> None:
    width = max(map(len, [*TRAINER_SUBCOMMANDS, *SUBCOMMANDS]))
    print("usage: nla SUBCOMMAND [--config FILE.yaml] [--key value ...]\n\nsubcommands:")
    for name, text in [*TRAINER_SUBCOMMANDS.items(), *((n, d) for n, (_, d) in SUBCOMMANDS.items())]:
        print(f"  {name:<{width}}  {text}")
    print("\n`nla SUBCOMMAND --help` lists the options of one subcommand.")


def resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def configure_jsonargparse() -> None:
    import jsonargparse

    # Field docstrings of the argument dataclasses become the --help text of each option.
    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)


def list_options(function: Callable) -> set[str]:
    """Names of ``function``'s parameters typed as a list (alone or in a union with None or str)."""
    hints = typing.get_type_hints(function)
    names = set()
    for name, hint in hints.items():
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        options = typing.get_args(hint) if union else (hint,)
        if any(typing.get_origin(option) is list for option in options):
            names.add(name)
    return names


def repeatable_lists(argv: list[str], names: set[str]) -> list[str]:
    """``--name value`` of a list option, value not written as a list, appends (``--name+ value``):
    list options can be repeated, ``--replace a=b --replace c=d``, or given whole, ``--replace '[...]'``."""
    out = []
    for index, arg in enumerate(argv):
        value = argv[index + 1] if index + 1 < len(argv) else ""
        if arg.startswith("--") and arg[2:] in names and not value.lstrip().startswith(("[", "--")) and value:
            arg += "+"
        out.append(arg)
    return out


def run_function(name: str, argv: list[str]) -> None:
    from jsonargparse import ActionConfigFile, ArgumentParser

    function = resolve(SUBCOMMANDS[name][0])
    if name not in CONFIG_IS_INPUT:
        from nla.commands.config_files import check_config_files
        from nla.commands.legacy import migrated_args

        check_config_files(argv)
        argv = migrated_args(argv, name)
    argv = repeatable_lists(argv, list_options(function))
    parser = ArgumentParser(
        # The docstring's first paragraph describes the command; its Args block already documents each option.
        prog=f"nla {name}",
        description=(function.__doc__ or "").strip().split("\n\n")[0],
        exit_on_error=False,
        allow_abbrev=False,
    )
    if name not in CONFIG_IS_INPUT:
        parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    parser.add_function_arguments(function, as_group=False)
    config = parser.parse_args(argv)
    if name not in CONFIG_IS_INPUT:
        config.pop("config", None)
    try:
        instantiated = parser.instantiate_classes(config)
    except ConfigError as error:
        raise located(error, config) from None
    except ValueError as error:
        lifted = lift_config_error(error, config)
        if lifted is None:
            raise
        raise lifted from None
    function(**instantiated.as_dict())


def run_trainer(argv: list[str] | None) -> None:
    """``argv`` (None: ``sys.argv``) through the LightningCLI, its config files checked first, a ``null``
    inside ``model`` or ``data`` in a form jsonargparse reads, and Lightning's refusal of a Trainer
    argument as one line."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from nla.commands.config_files import check_config_files
    from nla.commands.fit import NLALightningCLI
    from nla.commands.null_overrides import nulls_as_mappings

    check_config_files(sys.argv[1:] if argv is None else argv)
    if argv is None:
        # Rewritten in sys.argv itself: data-parallel launchers start each process with this command line.
        sys.argv[1:] = nulls_as_mappings(sys.argv[1:])
    try:
        NLALightningCLI(args=None if argv is None else nulls_as_mappings(argv))
    except MisconfigurationException as error:
        line = describe_trainer_error(str(error))
        if line is None:
            raise
        raise NLAError(line) from None


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print_overview()
        return
    name, rest = argv[0], argv[1:]
    # A two-word subcommand (``nla audit query``) is registered under both words.
    if rest and f"{name} {rest[0]}" in SUBCOMMANDS:
        name, rest = f"{name} {rest[0]}", rest[1:]
    configure_jsonargparse()
    try:
        if name in SUBCOMMANDS:
            run_function(name, rest)
        elif name in TRAINER_SUBCOMMANDS:
            # LightningCLI reads sys.argv itself and warns when handed the same list explicitly.
            run_trainer(None if from_command_line else argv)
        else:
            fail(f"unknown subcommand '{name}'; choose from {', '.join([*TRAINER_SUBCOMMANDS, *SUBCOMMANDS])}")
    except NLAError as error:
        fail(str(error))
    except argparse.ArgumentError as error:
        root = trainer_root() if name in TRAINER_SUBCOMMANDS else function_root(resolve(SUBCOMMANDS[name][0]))
        fail(describe_parse_error(str(error), root) or str(error))
