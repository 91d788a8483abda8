"""Child processes started warm: a `python -m weaving ...` or `python -c CODE` that has already imported torch,
weaving and Lightning, for tests whose subject is a process boundary (signals, exit codes, ranks) rather than
start-up.

A fresh interpreter spends 3 to 10 CPU-seconds importing before it does anything; on the 2-core test machine
that dominated the tests that start processes. Here one server process (multiprocessing's forkserver)
imports the modules once, and each child is a fork of it: a real, separate process with its own pid, signal
handlers, environment, working directory and exit status, whose stdout and stderr are pipes. The server
never runs a test's code, so what a test registers in its own process (an open_clip config, a torch
setting) is not in the children, just as in a fresh interpreter. Tests of start-up itself (what a command
imports, offline environment variables read at import) keep using `subprocess` with a fresh interpreter."""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import threading
from multiprocessing.connection import Connection

# what the children need, imported once by the server (a module that fails to import is skipped there and
# imported by the child that needs it)
PRELOAD = ["torch", "torch.distributed", "safetensors.torch", "weaving", "weaving.cli", "weaving.merging.cli",
           "weaving.merging.recipe", "weaving.merging.distributed", "weaving.formats.importer", "weaving.io.writer",
           "weaving.io.publish", "open_clip", "lightning.pytorch", "transformers"]

# Run in the child, with `request` given: the child's side of the pipes, its environment and working folder,
# then the command as `python -m weaving ARGS` or `python -c CODE ARGS` would run it.
_CHILD = """
import os, runpy, signal, sys, traceback
from multiprocessing import resource_tracker

resource_tracker._resource_tracker._fd = resource_tracker._resource_tracker._pid = None  # its own, if it needs one
for fd, pipe in ((1, request["stdout"]), (2, request["stderr"])):
    os.dup2(pipe.fileno(), fd)
    pipe.close()
os.environ.clear()
os.environ.update(request["env"])
os.chdir(request["cwd"])
if request["env"].get("OMP_NUM_THREADS", "").isdigit():  # read by torch at start-up in a fresh interpreter
    import torch

    torch.set_num_threads(int(request["env"]["OMP_NUM_THREADS"]))
if request["setup"] is not None:
    request["setup"]()
try:
    if request["code"] is None:
        sys.argv = ["weaving", *request["args"]]
        runpy.run_module("weaving", run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *request["args"]]
        exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
except KeyboardInterrupt:  # as the interpreter ends on an uncaught Ctrl-C: the trace, then killed by SIGINT
    traceback.print_exc()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
"""

_context = None


def start_server() -> None:
    """Start the server (it imports PRELOAD in the background); the first child waits for it."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
        from multiprocessing import forkserver

        forkserver.ensure_running()


class WarmProcess:
    """The part of subprocess.Popen (text mode, stdout and stderr piped) that the tests use."""

    def __init__(self, args: list[str], code: str | None = None, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, setup=None) -> None:
        start_server()
        self.args = ["python", "-m", "weaving", *args] if code is None else ["python", "-c", "...", *args]
        reads, writes = zip(*(os.pipe() for _ in range(2)))
        request = {"stdout": Connection(writes[0], readable=False), "stderr": Connection(writes[1], readable=False),
                   "env": dict(os.environ if env is None else env), "cwd": str(cwd or os.getcwd()), "setup": setup,
                   "code": code, "args": list(args)}
        self._process = _context.Process(target=exec, args=(_CHILD, {"request": request}), daemon=True)
        try:
            self._process.start()
        finally:
            request["stdout"].close()
            request["stderr"].close()
        self.stdout = open(reads[0], encoding="utf-8", errors="replace")
        self.stderr = open(reads[1], encoding="utf-8", errors="replace")
        self.pid = self._process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        if self.poll() is None:
            self._process.kill()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Read both pipes to their end (in threads, so neither can fill up and stall the child), then wait."""
        texts: dict[str, str] = {}
        readers = [threading.Thread(target=lambda name=name: texts.__setitem__(name, getattr(self, name).read()),
                                    daemon=True) for name in ("stdout", "stderr")]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(timeout)
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(timeout)
        self.stdout.close()
        self.stderr.close()
        return texts["stdout"], texts["stderr"]


def run(args: list[str], code: str | None = None, env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None, timeout: float | None = 300) -> subprocess.CompletedProcess:
    """`subprocess.run([python, -m, weaving, *args] or [python, -c, code, *args], capture_output=True,
    text=True)`, started warm."""
    process = WarmProcess(args, code=code, env=env, cwd=cwd)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def run_ranks(args: list[str], code: str | None = None, cwd: str | os.PathLike | None = None,
              timeout: float | None = 300, world_size: int = 2,
              setups: dict[int, object] | None = None) -> list[subprocess.CompletedProcess]:
    """`run` as the ranks of a one-machine process group (the environment torchrun gives them, one free
    rendezvous port): every rank started warm at once, each waited for; none is left running.
    `setups[rank]` runs in that rank before the command (`WarmProcess`'s `setup`)."""
    port = free_port()
    processes = [WarmProcess(args, code=code, env=rank_env(port, rank, world_size), cwd=cwd,
                             setup=(setups or {}).get(rank)) for rank in range(world_size)]
    try:
        done = []
        for process in processes:
            out, err = process.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
        return done
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


def free_port() -> int:
    """A TCP port free on this machine now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(port: int, rank: int, world_size: int = 2) -> dict[str, str]:
    """The environment torchrun gives rank `rank` of a one-machine process group (one torch thread per rank,
    as torchrun sets by default)."""
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size), "OMP_NUM_THREADS": "1"}
