"""Publishing outputs: every file and folder weaving writes is built as a temporary next to its target,
then renamed over it, so a reader sees the old output (or none) or the complete new one.

- A crash, an error or a termination signal (SIGTERM, SIGINT, SIGHUP) mid-write removes the temporary and
  then ends the process as the signal would: nothing half-written, no stray temporary.
- A temporary is named `.<target>.<host>.<pid>-<start>.<random>.weaving-tmp`: a later write of the same
  target removes the ones it can prove are weaving's own and abandoned (made on this host by a process
  that no longer runs), e.g. after `kill -9`.
- Finished files and folders get the permissions any new file gets (0666 / 0777 minus the umask, e.g.
  0644 / 0755 under umask 022), not the 0600 / 0700 of a private temporary.
- `check_output` is the one check of an output path, run before any work: a writable place, room on the
  disk, and an output that exists or that is an input (resolved paths, links and folders included) is
  refused unless `overwrite`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

_UMASK_LOCK = threading.Lock()
TERMINATION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
TEMP_SUFFIX = ".weaving-tmp"
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


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


# ----------------------------------------------------------------------------------------- checks
def _nearest_folder(path: Path) -> Path:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _exists(path: Path) -> bool:
    """An output that exists: a file, a link (even a dangling one) or a folder that is not empty."""
    if path.is_symlink() or path.is_file():
        return True
    return path.is_dir() and any(path.iterdir())


def check_output(path: str | os.PathLike, *, folder: bool = False, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = (), expected_bytes: int = 0, what: str = "output") -> Path:
    """Raise a one-line ValueError unless `path` can be written as a new file (or, with `folder`, a folder).

    Its nearest existing parent must be a writable folder (missing folders are created on write) with room
    for `expected_bytes`. An output that exists (a file, a link or a non-empty folder) or that is one of
    `inputs` or holds one (paths resolved, links followed) is refused unless `overwrite`. Call it before
    long work.
    """
    raw = os.fspath(path)
    path = Path(path)
    flag = "--overwrite"
    if not folder and (path.is_dir() or raw.endswith(("/", os.sep))):
        raise ValueError(f"{what} {path} is a folder; give a file name inside it, e.g. {path / 'merged.safetensors'}")
    if folder and path.is_file():
        raise ValueError(f"{what} {path} is a file; give a new folder name")
    parent = _nearest_folder(path)
    if not parent.is_dir():
        raise ValueError(f"{what} {path}: {parent} is a file, so it cannot hold a folder; choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: folder {parent} is not writable; choose another output path or fix its permissions")
    target = path.resolve()
    sources = [Path(source) for source in inputs if Path(source).exists()]
    for source in sources:
        if source.resolve() == target and not overwrite:
            raise ValueError(f"{what} {path} is the input {source}; writing it would replace that input: choose "
                             f"another output path, or pass {flag} to replace it")
    if _exists(path) and not overwrite:
        state = "already exists and is not empty" if path.is_dir() and not path.is_symlink() else "already exists"
        raise ValueError(f"{what} {path} {state}; choose a new {'folder' if folder else 'file'} name, remove it, "
                         f"or pass {flag} to replace it")
    for source in sources:
        if target in source.resolve().parents and not overwrite:
            raise ValueError(f"{what} {path} holds the input {source}; writing it would replace that input: choose "
                             f"another output path, or pass {flag} to replace it")
    if expected_bytes > 0:
        free = shutil.disk_usage(parent).free
        if free < expected_bytes:
            raise ValueError(f"{what} {path}: needs about {expected_bytes / 2**20:.1f} MiB but only "
                             f"{free / 2**20:.1f} MiB are free on that disk; free space or choose another disk")
    return path


def check_writable(path: str | os.PathLike, expected_bytes: int = 0) -> Path:
    """`check_output` for a file that may be replaced (an index, a report): the place and the room only."""
    return check_output(path, overwrite=True, expected_bytes=expected_bytes)


def write_failure(path: str | os.PathLike, error: OSError) -> ValueError:
    """The one-line user error for an OSError while writing `path` (disk full, file too large, permissions)."""
    reason = "the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else (error.strerror or str(error))
    return ValueError(f"output {path}: write failed, {reason}; nothing was written")


def folder_write_failure(error: OSError, output: str | os.PathLike, folder: str | os.PathLike) -> BaseException:
    """`write_failure` for an OSError while writing into `folder` (a folder output built in place of
    `output`); an error about a file elsewhere (an input read while merging) stays as it is."""
    if error.filename is None or Path(folder) in Path(error.filename).parents or Path(error.filename) == Path(folder):
        return write_failure(output, error)
    return error


# ------------------------------------------------------------------------------------ temporaries
def _start_time(pid: int) -> str:
    """A process's start time (clock ticks since boot) from /proc; "" where /proc does not tell."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def temporary_path(target: str | os.PathLike) -> Path:
    """A fresh temporary path next to `target`, named so that a later run can tell it is ours (see doc)."""
    target = Path(target)
    pid = os.getpid()
    return target.parent / f".{target.name}.{_HOST}.{pid}-{_start_time(pid)}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _abandoned(name: str, target_name: str) -> bool:
    prefix = f".{target_name}.{_HOST}."
    if not name.startswith(prefix) or not name.endswith(TEMP_SUFFIX):
        return False
    match = re.fullmatch(r"(\d+)-(\d*)\.[0-9a-f]{8}", name[len(prefix):-len(TEMP_SUFFIX)])
    if match is None:
        return False
    pid, started = int(match.group(1)), match.group(2)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True  # no such process: its writer is gone
    except PermissionError:
        pass  # a process of another user runs with that id
    return bool(started) and _start_time(pid) not in ("", started)  # the id was reused by a newer process


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `target` left by weaving processes of this host that no longer run."""
    target = Path(target)
    removed = []
    try:
        entries = list(target.parent.iterdir()) if target.parent.is_dir() else []
    except OSError:
        return removed
    for entry in entries:
        if _abandoned(entry.name, target.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed.append(entry)
    return removed


# ---------------------------------------------------------------------------------------- signals
class TerminatedDuringWrite(BaseException):
    """Raised by the temporary signal handler, so the write unwinds and removes its temporary."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame) -> None:
    raise TerminatedDuringWrite(signum)


@contextmanager
def signals_unwind() -> Iterator[None]:
    """While active, SIGTERM/SIGHUP raise an exception instead of ending the process at once (Ctrl-C already
    raises KeyboardInterrupt). Only the main thread can install handlers; other threads write unguarded."""
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in TERMINATION_SIGNALS:
            handler = signal.getsignal(signum)
            if handler is signal.SIG_IGN or handler is _raise_terminated:  # ignored (nohup), or unwinding already
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


def _end_as_signalled(terminated: TerminatedDuringWrite) -> None:
    """Handlers are restored: deliver the signal again, as if it had not been caught."""
    os.kill(os.getpid(), terminated.signum)
    raise SystemExit(128 + terminated.signum)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"output {path}: cannot create folder {path.parent} ({error.strerror or error})") from None


@contextmanager
def unwinding(tmp: Path | None, output: Path) -> Iterator[None]:
    """Remove `tmp` (when given) on any error, Ctrl-C or termination signal, then end as the signal asks;
    OSErrors writing it become one line."""
    terminated: TerminatedDuringWrite | None = None
    with signals_unwind():
        try:
            yield
        except TerminatedDuringWrite as signal_error:
            if tmp is not None:
                _remove(tmp)
            terminated = signal_error
        except OSError as error:
            if tmp is not None:
                _remove(tmp)
            raise folder_write_failure(error, output, tmp if tmp is not None else output) from None
        except BaseException:
            if tmp is not None:
                _remove(tmp)
            raise
    if terminated is not None:
        _end_as_signalled(terminated)


# ------------------------------------------------------------------------------------------ publish
def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(temporary_path)`, then rename the temporary file to `path` (missing parents are created).

    The caller has checked the output (`check_output`); `path` is replaced if it exists. Errors writing the
    file (disk full, permissions) become a one-line ValueError; nothing is left behind. A termination
    signal during the write removes the temporary, then ends the process as the signal would.
    """
    path = check_writable(path)
    _make_parent(path)
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    with unwinding(tmp, path):
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as error:
            raise ValueError(f"output {path}: cannot write there ({error.strerror or error})") from None
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    return path


def make_readable(folder: Path) -> None:
    """Give a finished folder, and everything in it, the permissions of new files under the umask."""
    mask = current_umask()
    for root, dirs, files in os.walk(folder):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
    os.chmod(folder, 0o777 & ~mask)


@contextmanager
def publish_folder(path: str | os.PathLike, *, overwrite: bool = False, tmp: str | os.PathLike | None = None
                   ) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; when the block ends it becomes `path` (an existing folder is
    replaced only with `overwrite`), on any error or signal it is removed (see the module docstring).

    `tmp`: a temporary folder made already (`temporary_path(path)`, e.g. shared by the ranks of a
    distributed write); the caller checked the output with `check_output(path, folder=True)`."""
    path = Path(path)
    _make_parent(path)
    if tmp is None:
        remove_stale_temporaries(path)
        tmp = temporary_path(path)
        try:
            tmp.mkdir()
        except OSError as error:
            raise ValueError(f"output {path}: cannot write there ({error.strerror or error})") from None
    tmp = Path(tmp)
    with unwinding(tmp, path):
        yield tmp
        make_readable(tmp)
        replace_with(tmp, path, overwrite=overwrite)


def replace_with(tmp: Path, path: Path, *, overwrite: bool) -> None:
    """Rename the finished temporary `tmp` to `path`; an empty folder there is replaced, and with
    `overwrite` anything else (a folder is moved aside first, then removed)."""
    if path.is_dir() and not path.is_symlink():
        if not any(path.iterdir()):
            path.rmdir()
        elif overwrite:
            aside = temporary_path(path)
            os.replace(path, aside)
            os.replace(tmp, path)
            shutil.rmtree(aside, ignore_errors=True)
            return
        else:
            raise ValueError(f"output {path} appeared while writing it; nothing was replaced")
    elif path.is_symlink() or path.exists():
        if not overwrite:
            raise ValueError(f"output {path} appeared while writing it; nothing was replaced")
        os.unlink(path)
    os.replace(tmp, path)


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
