"""Edits of an explanation as ``nla steer`` takes them: ``OLD=NEW`` replacements, or a whole new text."""

from __future__ import annotations

from nla.core.errors import ConfigError

MODES = ("replace", "add")


def parse_replacements(replace: list[str] | None) -> list[tuple[str, str]]:
    """``["rabbit=mouse", ...]`` as ``(old, new)`` pairs, split at the first ``=``."""
    pairs = []
    for item in replace or []:
        old, equals, new = item.partition("=")
        if not equals or not old:
            raise ConfigError("replace", f"'{item}' is not OLD=NEW; write e.g. --replace rabbit=mouse")
        pairs.append((old, new))
    return pairs


def apply_edits(explanation: str, replacements: list[tuple[str, str]]) -> str:
    """``explanation`` with every occurrence of each ``old`` replaced by its ``new``, in order; an
    ``old`` the explanation does not contain is an error (the edit would silently do nothing)."""
    edited = explanation
    for old, new in replacements:
        if old not in edited:
            shown = " ".join(edited.split())
            raise ConfigError("replace", f"'{old}' does not occur in the explanation \"{shown[:160]}\"; "
                              "replace words it contains, or give the whole text with --explanation")
        edited = edited.replace(old, new)
    return edited


def watched_words(watch: str | None) -> list[str]:
    """``"rabbit, mouse"`` as ``["rabbit", "mouse"]``."""
    words = [word.strip() for word in (watch or "").split(",")]
    return [word for word in words if word]
