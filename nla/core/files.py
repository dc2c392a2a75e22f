"""Atomic file writes that honour the umask, shared by the cache, the sidecars and the exports.

``tempfile.mkstemp`` creates files 0600 and ``mkdtemp`` directories 0700 whatever the umask says,
so a file written through a temporary name and renamed into place would stay private to its owner:
a teammate could not read a shared cache or export. Every temporary file or directory made here is
given the mode a plain ``open`` / ``mkdir`` would have produced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from nla.core.errors import NLAError


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    # Elsewhere: set and restore (not thread-safe, but nla writes files from one thread).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode ``open`` (0666) or ``mkdir`` (0777) gives a new file or directory under the umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def make_staging_directory(parent: Path, prefix: str) -> Path:
    """``mkdtemp`` in ``parent``, with the permissions of a plain ``mkdir``."""
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(staging, default_mode(directory=True))
    return staging


def honour_umask(tree: Path) -> None:
    """Give every file and directory under ``tree`` (itself included) the mode the umask allows:
    libraries that write atomically (safetensors' ``save_file``) leave their files 0600."""
    os.chmod(tree, default_mode(directory=True))
    for root, directories, files in os.walk(tree):
        for name in directories:
            os.chmod(os.path.join(root, name), default_mode(directory=True))
        for name in files:
            os.chmod(os.path.join(root, name), default_mode())


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file in the same directory, then rename: readers see all or nothing.
    A full disk is one line naming the file; the temporary file is removed on any failure."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, default_mode())
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise NLAError(f"disk full while writing {path}; free space on {path.parent} and rerun") from error
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda stream: stream.write(data))
