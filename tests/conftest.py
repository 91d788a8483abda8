"""Session-wide test set-up."""

import pytest

# Lightning adds its console log handler on the stream that is sys.stderr at its first import. Imported here,
# that is pytest's session-long capture; imported first inside a test using capsys, it would be that test's
# stream, closed when the test ends, and every later Lightning log line would print a "Logging error" trace.
import lightning.pytorch  # noqa: F401

from . import processes


def pytest_collection_finish(session) -> None:
    """Start the warm-process server while the first tests run, if any collected test uses it."""
    if any("warm" in getattr(item, "fixturenames", ()) for item in session.items):
        processes.start_server()


@pytest.fixture
def warm():
    """Start child processes warm: `warm.WarmProcess(args, code=..., env=..., setup=...)` is a Popen,
    `warm.run(args, ...)` a subprocess.run, `warm.run_ranks(args, ...)` that run as the ranks of a process
    group (see tests/processes.py)."""
    processes.start_server()
    return processes
