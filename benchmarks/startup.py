"""Start-up cost of each `weaving` command: CPU seconds (user + sys) of a child process, next to
`python -c "import torch"`.

Each command runs `--repeat` times (default 3) as its own process; the table gives the median CPU time
(user + sys, from the child's resource usage: the time other processes hold the cores does not count) and
the median wall time. The refused merge is a bad option (`--lam abc`): what a typo costs before the one-line
error.

    python benchmarks/startup.py                 # prints a Markdown table
    python benchmarks/startup.py --repeat 5 --json startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

PYTHON = sys.executable
WEAVING = [PYTHON, "-m", "weaving"]
COMMANDS = [
    ('python -c "import torch"', [PYTHON, "-c", "import torch"]),
    ("weaving --version", WEAVING + ["--version"]),
    ("weaving --help", WEAVING + ["--help"]),
    ("weaving merge --help", WEAVING + ["merge", "--help"]),
    ("weaving merge, refused at once (--lam abc)", WEAVING + ["merge", "--pretrained", "p.safetensors", "--finetuned",
                                                          "a.safetensors", "--method", "ties", "--lam", "abc",
                                                          "--output", "o.safetensors"]),
    ("weaving import --help", WEAVING + ["import", "--help"]),
    ("weaving demo --help", WEAVING + ["demo", "--help"]),
    ("weaving fit --help", WEAVING + ["fit", "--help"]),
]


def measure(command: list[str], cwd: str) -> tuple[float, float, int]:
    """(CPU seconds of the child, wall seconds, exit status) of one run."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, wall, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cwd:
        for name, command in COMMANDS:
            runs = [measure(command, cwd) for _ in range(args.repeat)]
            rows.append({"command": name, "cpu_s": statistics.median(r[0] for r in runs),
                         "wall_s": statistics.median(r[1] for r in runs), "exit": sorted({r[2] for r in runs})})
    print(f"Python {platform.python_version()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; median of {args.repeat} runs\n")
    print("| command | CPU s (user+sys) | wall s | exit |\n|---|---:|---:|---|")
    for row in rows:
        print(f"| `{row['command']}` | {row['cpu_s']:.2f} | {row['wall_s']:.2f} | {','.join(map(str, row['exit']))} |")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
