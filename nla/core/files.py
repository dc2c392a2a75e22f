"""Atomic file writes that honour the umask, shared by the cache, the sidecars and the exports.

``tempfile.mkstemp`` creates files 0600 and ``mkdtemp`` directories 0700 whatever the umask says,
so a file written through a temporary name and renamed into place would stay private to its owner:
a teammate could not read a shared cache or export. Every temporary file or directory made here is
given the mode a plain ``open`` / ``mkdir`` would have produced.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from nla.core.errors import ConfigError, NLAError


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
    A full disk or a file-size limit is one line naming the file; the temporary file is removed on any
    failure."""
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
        if isinstance(error, OSError) and error.errno == errno.EFBIG:
            raise NLAError(too_large(path)) from error
        raise


def too_large(path: Path) -> str:
    """Why a write of ``path`` failed with EFBIG: the process's file-size limit (``ulimit -f``; Python
    ignores SIGXFSZ, so the write fails instead of killing the process), else the file system's."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        return (f"file-size limit reached while writing {path}: this process may write {limit} bytes per file "
                "(ulimit -f); raise the limit (ulimit -f unlimited) and rerun")
    return f"{path} is larger than its file system allows; write it to another file system"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda stream: stream.write(data))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the C
    library or the filesystem cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def swap_into_place(staging: Path, final: Path) -> None:
    """Put the complete directory ``staging`` at ``final``, replacing the directory there.

    Where the OS allows, the two trade places in one step, so neither a reader nor a kill ever finds
    ``final`` half-replaced or missing; elsewhere ``final`` is briefly absent between two renames,
    never mixed. Whatever was at ``final`` is deleted afterwards."""
    if not final.exists():
        os.rename(staging, final)
        return
    if not _exchange(staging, final):
        retired = staging.with_name(staging.name + ".old")
        os.rename(final, retired)
        os.rename(staging, final)
        staging = retired
    shutil.rmtree(staging, ignore_errors=True)


def check_replaceable(path: Path, field: str, ours: Callable[[Path], bool], what: str) -> None:
    """Refuse, in one line naming ``field``, to replace ``path`` unless it is absent, an empty
    directory, or a directory ``ours`` recognises as written by nla (``what``: "a cache", ...)."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(field, f"{path} is a file, not a directory; give a new directory for {what}")
    try:
        entries = sorted(os.listdir(path))
    except OSError as error:
        raise ConfigError(field, f"cannot read {path} ({error.strerror}); give a directory you can write") from None
    if entries and not ours(path):
        shown = ", ".join(name + ("/" if (path / name).is_dir() else "") for name in entries[:3])
        more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
        raise ConfigError(field, f"{path} holds files nla did not write ({shown}{more}); give a new or empty "
                          f"directory, or one that already holds {what}")
