"""Configuration mistakes as one line naming the full key path and the fix, wherever jsonargparse meets them.

jsonargparse reports a nested mistake as a union message that lists every alternative type and dumps
the whole given value (1,284 characters for one misspelt key), and it wraps a ``ConfigError`` raised
while it builds a nested argument into a ``ValueError``. Two functions turn both into a short line:

- ``describe_parse_error``: an unknown key becomes ``data.cache.layr: unknown key; did you mean
  `layer`?`` (the closest valid key of the class at that path, else the list of valid keys); a value
  of the wrong type becomes ``data.cache.layer: expected int, got 'abc'``; a ``class_path`` that does
  not import, or names a class of another kind, becomes ``model.class_path: cannot import 'X' (why);
  give the full dotted path of a class, such as ...``.
- ``lift_config_error``: finds the ``ConfigError`` inside the wrapping and prefixes its field with the
  path of the argument it came from (``cache.store_dtype`` raised inside ``data`` reads
  ``data.cache.store_dtype``).

``describe_trainer_error`` does the same for Lightning's refusal of a Trainer argument
(``trainer.max_steps: must be a non-negative integer or -1 (infinite steps), got -5``).

Key paths leave out ``init_args`` (``data.cache.layer``), a form the command line accepts too.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from nla.core.errors import ConfigError, NLAError

_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS = re.compile(r"Problem with given class_path '([^']+)'")
_LEAVES = (
    ("unknown", re.compile(r"Option '([^']+)' is not accepted")),
    ("unknown", re.compile(r"does not accept option '([^']+)'")),
    ("unknown", re.compile(r"unrecognized arguments: --([^\s=;]+)")),
    ("type", re.compile(r"Expected a <class '([^']+)'>\. Got value: ([^\n;]*)")),
    ("subclass", re.compile(r"Import path (\S+) does not correspond to a subclass of (\w+)")),
)
_GROUP = re.compile(r"Group '([^']+)' does not accept option '([^']+)'")


def _strip(path: str) -> list[str]:
    return [part for part in path.split(".") if part and part != "init_args"]


def _unwrap(annotation: Any) -> Any:
    """The class inside ``X | None`` / ``Optional[X]``; other annotations unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def parameters(target: Any) -> dict[str, Any]:
    """Argument name -> annotation of a dataclass, a class's ``__init__`` or a function."""
    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function)
    except (NameError, TypeError):
        hints = {}
    if dataclasses.is_dataclass(target):
        return {field.name: hints.get(field.name) for field in dataclasses.fields(target)}
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return {}
    return {name: hints.get(name) for name, parameter in signature.parameters.items()
            if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)}


def _import(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _unknown(path: list[str], anchor: Mapping[str, Any] | Any, depth: int) -> str:
    """Some key of ``path`` is unknown; ``anchor`` (a class, or the top-level mapping of keys to
    classes) configures ``path[:depth]``. Names the first key that is not accepted and the closest one
    that is."""
    keys = anchor if isinstance(anchor, Mapping) else parameters(anchor)
    for index in range(depth, len(path)):
        name = path[index]
        if name not in keys:
            key = ".".join(path[: index + 1])
            close = difflib.get_close_matches(name, list(keys), n=1, cutoff=0.5)
            if close:
                return f"{key}: unknown key; did you mean `{close[0]}`?"
            listed = ", ".join(sorted(keys)) if keys else "none"
            return f"{key}: unknown key; the keys here are: {listed}"
        target = _unwrap(keys[name])
        if not (inspect.isclass(target) or inspect.isfunction(target)):
            break
        keys = parameters(target)
    return f"{'.'.join(path)}: unknown key; check its spelling against --help"


def describe_parse_error(message: str, root: Mapping[str, Any]) -> str | None:
    """One line for a jsonargparse error about an unknown key, a mistyped value or a class path, or None
    when the message is of another kind. ``root`` maps top-level keys to the classes they configure; classes
    below come from the ``class_path`` the message names."""
    path: list[str] = []
    anchor: Mapping[str, Any] | Any = root
    depth, position = 0, 0
    while True:
        found = [(m.start(), "key", m) for m in [_KEY.search(message, position)] if m]
        found += [(m.start(), "class", m) for m in [_CLASS.search(message, position)] if m]
        found += [(m.start(), kind, m) for kind, pattern in _LEAVES for m in [pattern.search(message, position)] if m]
        found += [(m.start(), "group", m) for m in [_GROUP.search(message, position)] if m]
        if not found:
            return None
        _, kind, match = min(found, key=lambda item: item[0])
        position = match.end()
        if kind == "key":
            path += _strip(match.group(1))
        elif kind == "class":
            # The class configured at ``path``: the keys below it are its arguments.
            target = _import(match.group(1))
            if target is None:
                return _unimportable(path, match.group(1), message[match.end():])
            anchor, depth = target, len(path)
        elif kind == "unknown":
            return _unknown([*path, *_strip(match.group(1))], anchor, depth)
        elif kind == "subclass":
            return (f"{'.'.join([*path, 'class_path'])}: '{match.group(1)}' is not a {match.group(2)}; "
                    f"{_class_fix(path)}")
        elif kind == "group":
            # A nested group (a dataclass argument) that lacks a key, below the class at ``path``.
            return _unknown([*path, *_strip(match.group(1)), *_strip(match.group(2))], anchor, depth)
        else:
            expected, got = match.group(1), match.group(2).strip()
            return f"{'.'.join(path) or 'value'}: expected {expected}, got {got!r}"


CLASS_EXAMPLES = {"model": "nla.modules.sft.SFTModule or nla.modules.grpo.GRPOModule",
                  "data": "nla.data.datamodule.NLADataModule"}
"""Classes to name when the ``class_path`` of a top-level key does not import."""


def _unimportable(path: list[str], class_path: str, rest: str) -> str:
    """``KEY.class_path: cannot import 'X' (why); the fix``; ``rest`` is the message after the class path,
    whose first non-empty line says why."""
    lines = [line.strip() for line in rest.lstrip(":").splitlines() if line.strip()]
    why = lines[0] if lines else "not found"
    return f"{'.'.join([*path, 'class_path'])}: cannot import '{class_path}' ({why}); {_class_fix(path)}"


def _class_fix(path: list[str]) -> str:
    examples = CLASS_EXAMPLES.get(path[0]) if len(path) == 1 else None
    return "give the full dotted path of a class" + (f", such as {examples}" if examples else "")


def lift_config_error(error: BaseException, config: Any) -> NLAError | None:
    """The ``NLAError`` jsonargparse wrapped while building an argument, with a ``ConfigError``'s field
    extended to its full key path in ``config`` (the parsed namespace); None when ``error`` wraps none."""
    wrappers: list[BaseException] = []
    inner: BaseException | None = error
    while inner is not None and not isinstance(inner, NLAError):
        wrappers.append(inner)
        inner = inner.__cause__
    if inner is None:
        return None
    if not isinstance(inner, ConfigError):
        return inner
    path: list[str] = []
    node = config
    for wrapper in wrappers:
        given = _given_value(str(wrapper))
        found = _find(node, given) if given is not None else None
        if found is None:
            break
        relative, node = found
        path += _strip(relative)
    field = _strip(inner.field)
    overlap = max((k for k in range(min(len(path), len(field)) + 1) if k == 0 or path[-k:] == field[:k]), default=0)
    return located(ConfigError(".".join(path + field[overlap:]), inner.detail, inner.value), config)


def _given_value(message: str) -> str | None:
    """The value a union error was given (its last, unindented ``Given value:`` line)."""
    lines = [line for line in message.splitlines() if line.startswith("Given value: ")]
    return lines[-1][len("Given value: "):] if lines else None


def _find(node: Any, text: str, prefix: str = "") -> tuple[str, Any] | None:
    """The dotted key (below ``node``) of the first value whose ``str`` is ``text``, and that value."""
    items = list(vars(node).items() if _is_namespace(node) else node.items() if isinstance(node, Mapping) else [])
    for key, value in items:
        if str(value) == text:
            return f"{prefix}{key}", value
    for key, value in items:
        if _is_namespace(value) or isinstance(value, Mapping):
            found = _find(value, text, f"{prefix}{key}.")
            if found is not None:
                return found
    return None


def _is_namespace(value: Any) -> bool:
    return type(value).__name__ == "Namespace" and hasattr(value, "as_dict")


def trainer_root() -> dict[str, Any]:
    """Top-level keys of ``nla fit`` whose classes are fixed (``model`` and ``data`` come from their
    ``class_path``)."""
    from lightning.pytorch import Trainer

    return {"trainer": Trainer}


_TRAINER_REFUSAL = re.compile(r"`(\w+)`\s+(.+)", re.DOTALL)
_PASSED = re.compile(r"\.?\s*You passed in (.+?)\.?$", re.DOTALL)


def describe_trainer_error(message: str) -> str | None:
    """Lightning's refusal of a ``Trainer`` argument, a ``MisconfigurationException`` raised as the trainer
    is built ("`max_steps` must be a non-negative integer or -1 (infinite steps). You passed in -5."), as
    ``trainer.max_steps: must be ..., got -5``; None when the message does not start with a Trainer argument."""
    from lightning.pytorch import Trainer

    match = _TRAINER_REFUSAL.match(message.strip())
    if match is None or match.group(1) not in parameters(Trainer):
        return None
    detail = _PASSED.sub(lambda passed: f", got {passed.group(1)}", match.group(2).strip())
    return f"trainer.{match.group(1)}: {detail.rstrip('.')}"


def function_root(function: Callable) -> dict[str, Any]:
    """Top-level keys of an ``nla`` subcommand that is a function: its parameters."""
    return parameters(function)


def located(error: ConfigError, config: Any) -> ConfigError:
    """``error`` with its field extended to the key path of ``config`` (the parsed namespace) that
    ends with it: a settings dataclass nested in another (``data.source.splits``) raises its own key
    (``splits``) without its place. Of several such paths, the one holding the error's ``value``. A
    field that already starts at the top, or that no single path ends with, is left as it is."""
    field = _strip(error.field)
    if not field or field[0] in _keys(config):
        return error
    paths = [(path, value) for path, value in _paths(config) if path[-len(field):] == field]
    if len(paths) > 1 and error.value is not None:
        paths = [(path, value) for path, value in paths if value == error.value]
    return ConfigError(".".join(paths[0][0]), error.detail, error.value) if len(paths) == 1 else error


def _keys(node: Any) -> list[str]:
    return list(vars(node)) if _is_namespace(node) else list(node) if isinstance(node, Mapping) else []


def _paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[list[str], Any]]:
    """Every (key path, value) below ``node``, ``init_args`` left out of the paths."""
    found = []
    for key in _keys(node):
        value = vars(node)[key] if _is_namespace(node) else node[key]
        path = prefix if key == "init_args" else (*prefix, key)
        if path:
            found.append((list(path), value))
        if _is_namespace(value) or isinstance(value, Mapping):
            found += _paths(value, path)
    return found
