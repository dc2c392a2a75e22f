"""``null`` given on the command line to a key inside a class chosen by ``class_path``
(``--data.init_args.source.corpus.max_documents null``), rewritten into a form jsonargparse reads.

jsonargparse (4.53) hands such a key on to the class's own parser as the text ``--KEY=None``: the value
is read as YAML first, then formatted with ``str``, and no ``int | None`` accepts the word ``None``, so a
valid null was refused with a union message. Given as a mapping under the class's ``init_args``
(``--data.init_args '{"source": {"corpus": {"max_documents": null}}}'``), the value is merged as parsed
YAML and stays null; the keys the mapping leaves out keep their values.
"""

from __future__ import annotations

import json

NULLS = ("null", "Null", "NULL", "~")
"""The YAML spellings of null."""
CLASS_KEYS = ("model", "data")
"""Top-level keys of ``nla fit`` whose class is chosen by ``class_path``, so ``init_args`` may be left out."""


def _rewritten(key: str) -> tuple[str, dict] | None:
    """(the ``init_args`` option, the mapping that sets ``key`` to null), or None for a key that jsonargparse
    parses itself (a Trainer argument, a ``class_path``)."""
    parts = key.split(".")
    if "init_args" in parts:
        at = len(parts) - 1 - parts[::-1].index("init_args")
        head, below = parts[: at + 1], parts[at + 1:]
    elif parts[0] in CLASS_KEYS:
        head, below = [parts[0], "init_args"], parts[1:]
    else:
        return None
    if not below or below[0] in ("class_path", "dict_kwargs"):
        return None
    value: dict = {below[-1]: None}
    for name in reversed(below[:-1]):
        value = {name: value}
    return ".".join(head), value


def nulls_as_mappings(argv: list[str]) -> list[str]:
    """``argv`` with every ``--KEY null`` (or ``--KEY=null``) inside a class given as a mapping under
    its ``init_args``; every other argument as it was, in its place."""
    out: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        key, equals, inline = arg.partition("=")
        value = inline if equals else argv[index + 1] if index + 1 < len(argv) else None
        rewritten = _rewritten(key[2:]) if key.startswith("--") and value in NULLS else None
        if rewritten is None:
            out.append(arg)
            index += 1
            continue
        option, mapping = rewritten
        out += [f"--{option}", json.dumps(mapping)]
        index += 1 if equals else 2
    return out
