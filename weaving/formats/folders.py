"""Folder outputs written atomically: build everything in a hidden temporary folder, then rename it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_new_folder(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise a one-line ValueError unless `path` is free for a new folder (missing, or an empty folder)."""
    path = Path(path)
    if path.is_file():
        raise ValueError(f"{what} {path} is a file; give a new folder name")
    if path.is_dir() and any(path.iterdir()):
        raise ValueError(f"{what} {path} already exists and is not empty; give a new folder or remove it")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: {parent} is not a writable folder; choose another place")
    return path


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it becomes `path`, on any error it is removed."""
    path = check_new_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.is_dir():
            path.rmdir()  # empty (checked above)
        os.replace(tmp, path)
        os.chmod(path, 0o777 & ~_umask())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
