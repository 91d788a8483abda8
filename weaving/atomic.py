"""Atomic file writes: write a temporary file next to the target, then rename it over the target.

A crash, an error or a termination signal (SIGTERM, SIGHUP, Ctrl-C) mid-write leaves the old file (or
nothing), never a half-written one and never a stray temporary. Finished files get the permissions any new
file gets (0666 minus the umask, e.g. 0644 under umask 022), not the 0600 of a private temporary.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

_UMASK_LOCK = threading.Lock()
TERMINATION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def current_umask() -> int:
    """The process umask (read from /proc where possible, so it is never changed, even for an instant)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, expected_bytes: int = 0) -> Path:
    """Raise a one-line ValueError unless a file can be written at `path`: it is not a folder, its nearest
    existing parent is a writable folder (missing folders are created on write), and, when
    `expected_bytes` is given, that file system has room for it. Call it before long work."""
    raw = os.fspath(path)
    path = Path(path)
    if path.is_dir() or raw.endswith(("/", os.sep)):
        raise ValueError(f"output {path} is a folder; give a file name inside it, e.g. {path / 'merged.safetensors'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"output {path}: {folder} is a file, so it cannot hold a folder; choose another output path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"output {path}: folder {folder} is not writable; choose another output path or fix its permissions")
    if expected_bytes > 0:
        free = shutil.disk_usage(folder).free
        if free < expected_bytes:
            raise ValueError(f"output {path}: needs about {expected_bytes / 2**20:.1f} MiB but only "
                             f"{free / 2**20:.1f} MiB are free on that disk; free space or choose another disk")
    return path


class _TerminatedDuringWrite(BaseException):
    """Raised by the temporary signal handler, so the write unwinds and removes its temporary file."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame) -> None:
    raise _TerminatedDuringWrite(signum)


@contextmanager
def _signals_unwind() -> Iterator[None]:
    """While active, SIGTERM/SIGHUP raise an exception instead of ending the process at once (Ctrl-C already
    raises KeyboardInterrupt). Only the main thread can install handlers; other threads write unguarded."""
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in TERMINATION_SIGNALS:
            if signal.getsignal(signum) is signal.SIG_IGN:  # e.g. SIGHUP under nohup: stays ignored
                continue
            try:
                previous[signum] = signal.signal(signum, _raise_terminated)
            except (OSError, ValueError):  # not allowed here (embedded interpreter): leave it alone
                pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_failure(path: str | os.PathLike, error: OSError) -> ValueError:
    """The one-line user error for an OSError while writing `path` (disk full, file too large, permissions)."""
    reason = "the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else (error.strerror or str(error))
    return ValueError(f"output {path}: write failed, {reason}; nothing was written")


def folder_write_failure(error: OSError, output: str | os.PathLike, folder: str | os.PathLike) -> BaseException:
    """`write_failure` for an OSError while writing into `folder` (a folder output built in place of
    `output`); an error about a file elsewhere (an input read while merging) stays as it is."""
    return write_failure(output, error) if error.filename is None or Path(error.filename).parent == Path(folder) else error


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(temporary_path)`, then rename the temporary file to `path` (missing parents are created).

    Errors writing the file (disk full, permissions) become a one-line ValueError; nothing is left behind.
    A termination signal during the write removes the temporary, then ends the process as the signal would.
    """
    path = check_writable(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"output {path}: cannot create folder {path.parent} ({error.strerror or error})") from None
    terminated: _TerminatedDuringWrite | None = None
    with _signals_unwind():
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as error:
            raise ValueError(f"output {path}: cannot write there ({error.strerror or error})") from None
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, path)
        except _TerminatedDuringWrite as signal_error:
            _remove(tmp)
            terminated = signal_error
        except OSError as error:
            _remove(tmp)
            raise write_failure(path, error) from None
        except BaseException:
            _remove(tmp)
            raise
    if terminated is not None:  # handlers are restored: deliver the signal again, as if we had not caught it
        os.kill(os.getpid(), terminated.signum)
        raise SystemExit(128 + terminated.signum)
    return path


def atomic_save_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> Path:
    """safetensors' save_file through atomic_write; its I/O errors (disk full) become one-line ValueErrors."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    def write(tmp: str) -> None:
        try:
            save_file(dict(tensors), tmp, metadata=dict(metadata))
        except SafetensorError as error:
            text = str(error)
            raise OSError(errno.ENOSPC if "os error 28" in text else errno.EIO, text) from None

    return atomic_write(path, write)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))
