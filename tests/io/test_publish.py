"""Atomic writes: the target is either the old file or the complete new one, and no temporary is left."""

import errno
import os
import signal
import stat
import time
from pathlib import Path

import pytest
import torch

from weaving.io.publish import atomic_write, atomic_write_text, check_writable
from weaving.io.writer import save_state_dict


def test_writes_and_replaces(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def half_write(tmp):
        with open(tmp, "w") as handle:
            handle.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_write)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_outputs_respect_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        assert stat.S_IMODE(atomic_write_text(tmp_path / "a.txt", "x").stat().st_mode) == 0o644
        save_state_dict(tmp_path / "b.safetensors", {"w": torch.ones(2)})
        assert stat.S_IMODE((tmp_path / "b.safetensors").stat().st_mode) == 0o644
        os.umask(0o077)
        assert stat.S_IMODE(atomic_write_text(tmp_path / "c.txt", "x").stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_output_paths_are_checked(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        check_writable(tmp_path)
    with pytest.raises(ValueError, match="is a folder"):
        check_writable(str(tmp_path / "new") + "/")
    with pytest.raises(ValueError, match="file, so it cannot hold a folder"):
        check_writable(tmp_path / "file" / "sub" / "out.safetensors")
    assert check_writable(tmp_path / "missing" / "parents" / "out.safetensors").name == "out.safetensors"
    with pytest.raises(ValueError, match=r"needs about .* MiB but only"):
        check_writable(tmp_path / "out.safetensors", expected_bytes=2**62)
    # a folder the user may not write to (simulated: root may write anywhere, a read-only mount refuses)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    with pytest.raises(ValueError, match="is not writable"):
        atomic_write_text(tmp_path / "new" / "out.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path):
    def full(tmp):
        Path(tmp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ValueError, match="write failed, the disk is full; nothing was written") as info:
        atomic_write(tmp_path / "out.bin", full)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_safetensors_disk_full_error_is_converted(tmp_path, monkeypatch):
    import safetensors.torch

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(ValueError, match="the disk is full"):
        save_state_dict(tmp_path / "out.safetensors", {"w": torch.ones(2)})
    assert list(tmp_path.iterdir()) == []


WRITER = """
import sys, torch
from weaving.io.writer import save_state_dict
tensors = {{"w": torch.ones({numel})}}
print("writing", flush=True)
save_state_dict(sys.argv[1], tensors)
print("done", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_write_leaves_no_temporary_file(warm, tmp_path, signum):
    """safetensors writes its own hidden temporary first; whenever the signal lands, nothing stays behind."""
    out = tmp_path / "out" / "merged.safetensors"
    out.parent.mkdir()
    process = warm.WarmProcess([str(out)], code=WRITER.format(numel=20_000_000))
    assert process.stdout.readline().strip() == "writing"
    time.sleep(0.05)  # probably mid-write; any moment must leave the folder clean
    process.send_signal(signum)
    stdout, _ = process.communicate(timeout=120)
    if "done" not in stdout:  # interrupted: the process ended as the signal asks, and wrote nothing
        assert process.returncode == -signum
        assert list(out.parent.iterdir()) == []
    else:  # the write finished before the signal: the complete file and nothing else
        assert [p.name for p in out.parent.iterdir()] == ["merged.safetensors"]


def test_an_ignored_signal_stays_ignored_during_a_write(warm, tmp_path):
    """Under nohup SIGHUP is ignored: a write must not turn it into an abort."""
    out = tmp_path / "merged.safetensors"
    code = "import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN)\n" + WRITER.format(numel=5_000_000)
    process = warm.WarmProcess([str(out)], code=code)
    assert process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGHUP)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 0 and "done" in stdout
    assert [p.name for p in tmp_path.iterdir()] == ["merged.safetensors"]
