"""docs/demo_numbers.py: the docs' demo numbers rewritten from a demo output folder, sentences from numbers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("demo_numbers", ROOT / "docs" / "demo_numbers.py")
demo_numbers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_numbers)

# per setup: zero-shot mean, and (method, variant) -> mean
MEANS = {
    "multi_task": (0.40, {("ties", "lam"): 0.50, ("ties", "weave"): 0.55, ("magmax", "lam"): 0.30,
                          ("magmax", "recommended"): 0.52, ("magmax", "weave"): 0.45}),
    "continual": (0.30, {("ties", "lam"): 0.20, ("ties", "weave"): 0.35, ("magmax", "lam"): 0.10,
                         ("magmax", "recommended"): 0.25, ("magmax", "weave"): 0.20}),
    "domain_generalization": (0.40, {("ties", "lam"): 0.30, ("ties", "weave"): 0.20, ("magmax", "lam"): 0.10,
                                     ("magmax", "recommended"): 0.30, ("magmax", "weave"): 0.35}),
}


def demo_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "demo"
    for setup, (zero, rows) in MEANS.items():
        results = {"setup": setup, "zeroshot_mean": zero,
                   "job": {"versions": {"torch": "9.9.9", "python": "3.11.2"}, "device": "cpu"},
                   "rows": [{"method": m, "variant": v, "pooling": "mean" if v == "weave" else None, "mean": x}
                            for (m, v), x in rows.items()]}
        results["rows"].append({"method": "ties", "variant": "weave", "pooling": "random", "mean": 0.99})
        if setup == "continual":
            results["sequential"] = {"mean": 0.128}
        (folder / setup).mkdir(parents=True)
        (folder / setup / "results.json").write_text(json.dumps(results))
    (folder / "summary.md").write_text("# Summary\n\n| Method | Avg |\n|---|---|\n| ties | 12.34 |\n\nafter\n")
    return folder


def docs_root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    block = "<!-- demo-numbers:{0} -->\nold numbers\n<!-- /demo-numbers:{0} -->"
    (root / "README.md").write_text("intro\n" + block.format("summary") + "\nrest\n")
    (root / "docs" / "evaluation.md").write_text(block.format("table") + "\n\n" + block.format("summary") + "\n")
    return root


def test_rewrites_the_blocks_from_the_output_and_check_detects_drift(tmp_path, capsys):
    folder, root = demo_folder(tmp_path), docs_root(tmp_path)
    assert demo_numbers.main([str(folder), "--root", str(root), "--check"]) == 1
    assert demo_numbers.main([str(folder), "--root", str(root)]) == 0
    readme = (root / "README.md").read_text()
    evaluation = (root / "docs" / "evaluation.md").read_text()
    assert readme.startswith("intro\n<!-- demo-numbers:summary -->\n") and readme.endswith("\nrest\n")
    assert "old numbers" not in readme + evaluation
    assert "| Method | Avg |\n|---|---|\n| ties | 12.34 |" in evaluation  # summary.md's table as written
    assert "Python 3.11.2, torch 9.9.9; device cpu, CPU " in readme
    assert demo_numbers.main([str(folder), "--root", str(root), "--check"]) == 0
    (root / "README.md").write_text(readme.replace("-> 36.7%", "-> 40.0%"))
    assert demo_numbers.main([str(folder), "--root", str(root), "--check"]) == 1


def test_sentences_follow_the_numbers(tmp_path):
    text = demo_numbers.blocks(demo_folder(tmp_path))["summary"]
    # averages over the setups: ties 33.3% -> 36.7% (raised), magmax 16.7% -> 33.3% (raised); the random
    # pooling row is not weaving's mean row
    assert "raises every method's data-free average over the three setups (TIES 33.3% -> 36.7%, " \
           "MagMax 16.7% -> 33.3%)." in text
    assert "stays below the authors' recommended lambda" in text and "MagMax (33.3% against 35.7%)" in text
    assert "the sequential model (Seq-FT) ends at 12.8%, below it" in text
    # multi-task (zero-shot 40%): only magmax at lambda = 1 is below; nothing with weaving
    assert ("In multi-task, zero-shot (theta_pre) scores 40.0%; at lambda = 1, MagMax (30.0%) is below it; "
            "no method at the recommended lambda is below it; no method with weaving is below it.") in text
    assert "every method at lambda = 1 is below it (10.0% to 20.0%)" in text  # continual
    assert ("every method at the recommended lambda is below it (30.0%); every method with weaving is below "
            "it (20.0% to 35.0%).") in text  # domain generalization


def test_a_lowered_average_is_said(tmp_path):
    folder = demo_folder(tmp_path)
    path = folder / "domain_generalization" / "results.json"
    results = json.loads(path.read_text())
    for row in results["rows"]:
        if row["method"] == "ties" and row["variant"] == "weave" and row["pooling"] == "mean":
            row["mean"] = 0.0
    path.write_text(json.dumps(results))
    text = demo_numbers.blocks(folder)["summary"]
    assert "raises the data-free average over the three setups of 1 of 2 methods (MagMax" in text
    assert "and lowers it for TIES 33.3% -> 30.0%." in text


def test_a_folder_without_results_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="no <setup>/results.json"):
        demo_numbers.main([str(tmp_path), "--root", str(docs_root(tmp_path))])
