"""Rewrite the demo's numbers in README.md and docs/evaluation.md from a `weaving demo` output folder.

    weaving demo --output weaving_demo
    python docs/demo_numbers.py weaving_demo            # rewrite the generated blocks
    python docs/demo_numbers.py weaving_demo --check    # exit 1 when the docs differ from that output

The generated blocks sit between `<!-- demo-numbers:NAME -->` and `<!-- /demo-numbers:NAME -->` lines
(README.md: `summary`; docs/evaluation.md: `table`, `summary`). Everything in them comes from the output
folder's files: the summary table is summary.md's, copied as it is; every number and every comparison in
the sentences (which rows beat zero-shot, which averages weaving raises) is computed from the setups'
results.json, so the docs cannot drift from what the demo prints. The environment line names the
versions results.json records and the CPU of the machine running this script (run it where the demo ran).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETUPS = ("multi_task", "continual", "domain_generalization")
SETUP_NAMES = {"multi_task": "multi-task", "continual": "the continual setup",
               "domain_generalization": "domain generalization"}
TARGETS = {"README.md": ("summary",), "docs/evaluation.md": ("table", "summary")}
NAMES = {"task_arithmetic": "task arithmetic", "dare": "DARE", "ties": "TIES", "breadcrumbs": "Breadcrumbs",
         "magmax": "MagMax", "pcb": "PCB", "tsv": "TSV", "iso_c": "ISO-C", "iso_cts": "ISO-CTS",
         "dare_ties": "DARE-TIES", "breadcrumbs_ties": "Breadcrumbs-TIES"}


def load(folder: Path) -> dict[str, dict[str, Any]]:
    """results.json of every setup the demo wrote, by setup name (a one-line error when none)."""
    found = {s: json.loads((folder / s / "results.json").read_text()) for s in SETUPS
             if (folder / s / "results.json").is_file()}
    if not found:
        raise SystemExit(f"{folder}: no <setup>/results.json; give the folder `weaving demo --output` wrote")
    return found


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(results: dict[str, dict[str, Any]]) -> str:
    job = next(iter(results.values())).get("job", {})
    versions = job.get("versions", {})
    python = versions.get("python") or platform.python_version()
    parts = [f"Python {python}", f"torch {versions.get('torch', '?')}"]
    parts += [f"{name} {versions[name]}" for name in ("lightning", "open_clip") if versions.get(name)]
    device = job.get("device") or "cpu"
    return f"{', '.join(parts)}; device {device}, CPU {cpu_name()} ({os.cpu_count()} cores)"


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def label(method: str) -> str:
    return NAMES.get(method, method)


def series(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def rows_by(results: dict[str, Any]) -> dict[tuple[str, str], float]:
    """(method, variant) -> mean; the weaving row is the mean-pooling one."""
    out = {}
    for row in results["rows"]:
        if row["variant"] == "weave" and row.get("pooling") != "mean":
            continue
        out[(row["method"], row["variant"])] = row["mean"]
    return out


def averages(results: dict[str, dict[str, Any]]) -> dict[tuple[str, str], float]:
    """(method, variant) -> the mean over the setups that have that row in every setup."""
    tables = [rows_by(r) for r in results.values()]
    keys = set.intersection(*(set(t) for t in tables))
    return {key: sum(t[key] for t in tables) / len(tables) for key in keys}


def methods_of(results: dict[str, dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(row["method"] for r in results.values() for row in r["rows"]))


def weaving_sentence(results: dict[str, dict[str, Any]]) -> str:
    avg = averages(results)
    methods = [m for m in methods_of(results) if (m, "lam") in avg and (m, "weave") in avg]
    raised = [m for m in methods if avg[(m, "weave")] > avg[(m, "lam")]]
    lowered = [m for m in methods if m not in raised]
    over = "the three setups" if len(results) == 3 else f"{len(results)} setups"

    def change(m):
        return f"{label(m)} {pct(avg[(m, 'lam')])} -> {pct(avg[(m, 'weave')])}"

    if not lowered:
        text = f"With the defaults, weaving (mean pooling) raises every method's data-free average over {over}"
    else:
        text = (f"With the defaults, weaving (mean pooling) raises the data-free average over {over} of "
                f"{len(raised)} of {len(methods)} methods")
    text += f" ({', '.join(change(m) for m in raised)})" if raised else ""
    if lowered:
        text += f" and lowers it for {series([change(m) for m in lowered])}"
    text += "."
    below = [m for m in methods if (m, "recommended") in avg and avg[(m, "weave")] < avg[(m, "recommended")]]
    if below:
        behind = [f"{label(m)} ({pct(avg[(m, 'weave')])} against {pct(avg[(m, 'recommended')])})" for m in below]
        text += (f" It stays below the authors' recommended lambda, which was tuned on evaluation data, for "
                 f"{series(behind)}.")
    return text


def zeroshot_sentences(results: dict[str, dict[str, Any]]) -> str:
    """Per setup: zero-shot, and which data-free rows fall below it (or that none does)."""
    parts = []
    for setup, r in results.items():
        zero = r["zeroshot_mean"]
        means = rows_by(r)
        text = f"In {SETUP_NAMES.get(setup, setup)}, zero-shot (theta_pre) scores {pct(zero)}"
        if "sequential" in r:
            seq = r["sequential"]["mean"]
            text += f"; the sequential model (Seq-FT) ends at {pct(seq)}, {'below' if seq < zero else 'not below'} it"
        clauses = []
        for variant, words in (("lam", "at lambda = 1"), ("recommended", "at the recommended lambda"),
                               ("weave", "with weaving")):
            rows = {m: v for (m, var), v in means.items() if var == variant}
            if not rows:
                continue
            under = [m for m in rows if rows[m] < zero]
            if not under:
                clauses.append(f"no method {words} is below it")
            elif len(under) == len(rows):
                low, high = pct(min(rows.values())), pct(max(rows.values()))
                clauses.append(f"every method {words} is below it ({low if low == high else f'{low} to {high}'})")
            else:
                clauses.append(f"{words}, {series([f'{label(m)} ({pct(rows[m])})' for m in under])} "
                               f"{'is' if len(under) == 1 else 'are'} below it")
        parts.append(text + "; " + "; ".join(clauses) + ".")
    return " ".join(parts)


def summary_table(folder: Path) -> str:
    """The first Markdown table of summary.md, as the demo wrote it."""
    path = folder / "summary.md"
    if not path.is_file():
        raise SystemExit(f"{folder}: no summary.md; give the folder `weaving demo --output` wrote")
    lines, table = path.read_text().splitlines(), []
    for line in lines:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    if not table:
        raise SystemExit(f"{path}: no table")
    return "\n".join(table)


def blocks(folder: Path) -> dict[str, str]:
    results = load(folder)
    env = f"Measured with `weaving demo` (default options) on {environment(results)}."
    return {
        "table": f"{env}\n\n{summary_table(folder)}",
        "summary": f"{env} {weaving_sentence(results)} {zeroshot_sentences(results)}",
    }


def rewrite(text: str, generated: dict[str, str], names: tuple[str, ...], where: str) -> str:
    for name in names:
        pattern = re.compile(rf"(<!-- demo-numbers:{name} -->\n)(.*?)(\n<!-- /demo-numbers:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{where}: no <!-- demo-numbers:{name} --> ... <!-- /demo-numbers:{name} --> block")
        text = pattern.sub(lambda m: m.group(1) + generated[name] + m.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a `weaving demo --output` folder")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a doc differs")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    generated = blocks(args.folder)
    stale = []
    for relative, names in TARGETS.items():
        path = args.root / relative
        old = path.read_text()
        new = rewrite(old, generated, names, relative)
        if new != old:
            stale.append(relative)
            if not args.check:
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(new)
                tmp.replace(path)  # atomic: a crash leaves the old file
    if args.check and stale:
        print(f"demo numbers differ from {args.folder} in: {', '.join(stale)}", file=sys.stderr)
        return 1
    print(("rewrote " + ", ".join(stale)) if stale and not args.check else "up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
