"""Byte counts as people read them: a cache of 18 KiB is not "0.00 GiB"."""

from __future__ import annotations


def human_size(count: float) -> str:
    """Bytes in the largest binary unit that keeps the number at 1 or more (whole bytes below 1 KiB)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError
