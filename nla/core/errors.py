"""User-facing errors: one line that names the field at fault and how to fix it.

The CLI prints these without a traceback and exits with status 2; anything else is a bug and keeps
its traceback.
"""

from collections.abc import Iterator
from contextlib import contextmanager


class NLAError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ConfigError(NLAError):
    """A configuration value is wrong. ``field`` is the dotted key as the user wrote it; ``value``,
    when given, the value at fault (it tells apart two keys of the same name)."""

    def __init__(self, field: str, message: str, value=None) -> None:
        self.field = field
        self.detail = message
        self.value = value
        super().__init__(f"{field}: {message}")


@contextmanager
def field_scope(prefix: str) -> Iterator[None]:
    """Prefix the field of any ConfigError raised inside, so shared argument classes report the full key
    (``model.name_or_path``, not ``name_or_path``)."""
    try:
        yield
    except ConfigError as error:
        raise ConfigError(f"{prefix}.{error.field}", error.detail) from None
