"""Whether this user may read the corpus and read or write the cache, asked of the OS before any file
is opened: a permission problem is then one line naming the path, not a PermissionError raised from
inside datasets or numpy once a run is under way. (``os.access`` answers as the files will be opened;
a user who bypasses permissions, root, always passes.)"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

LIST = os.R_OK | os.X_OK
"""What listing a directory and opening the files in it takes."""
WRITE = os.W_OK | os.X_OK
"""What creating, replacing and removing files in a directory takes."""


def _below(root: Path) -> Iterator[tuple[list[Path], list[Path]]]:
    """The subfolders and files of each folder under ``root`` (itself included), sorted; hidden entries
    (``.git``, temporary files) are passed over: neither a corpus nor a cache reads them. A subfolder
    is listed by its parent, so one that cannot itself be listed is still seen."""
    for current, directories, files in os.walk(root):
        directories[:] = sorted(name for name in directories if not name.startswith("."))
        yield ([Path(current, name) for name in directories],
               [Path(current, name) for name in sorted(files) if not name.startswith(".")])


def first_unreadable(root: Path, wanted: Callable[[Path], bool] = lambda path: True) -> Path | None:
    """The first directory under ``root`` (itself included) this user cannot list, or file among those
    ``wanted`` it cannot read; None when all can be read."""
    root = Path(root)
    if not root.is_dir():
        return None if os.access(root, os.R_OK) else root
    if not os.access(root, LIST):
        return root
    for folders, files in _below(root):
        denied = [p for p in folders if not os.access(p, LIST)] + [
            p for p in files if wanted(p) and not os.access(p, os.R_OK)]
        if denied:
            return denied[0]
    return None


def first_unwritable(directory: Path) -> Path | None:
    """Where writing into ``directory`` would be refused: the directory or its subdirectories when it
    exists, else the nearest existing folder above it (where it will be created); None when this user
    may write there."""
    directory = Path(directory).expanduser().absolute()
    if not directory.is_dir():
        existing = directory.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        return None if os.access(existing, WRITE) else existing
    if not os.access(directory, WRITE):
        return directory
    return next((p for folders, _ in _below(directory) for p in folders if not os.access(p, WRITE)), None)


def unreadable_message(path: Path) -> str:
    """Why ``path`` cannot be read, and the fix."""
    mode = "u+rx" if Path(path).is_dir() else "u+r"
    return f"{path} is not readable by this user (permission denied); fix its permissions (chmod {mode} {path}) and rerun"
