"""Evaluation: `ComparisonModule` (the comparison as one `weaving validate` job; `MergeModule` and
`CheckpointModule` are its one-row presets), the three setups, tables, plots and the demo.

The names below are imported on first use, so `weaving demo --help` (whose module lives here) does not
import Lightning."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointModule": "weaving.evaluation.checkpoint_module",
    "ComparisonModule": "weaving.evaluation.comparison",
    "run_comparison": "weaving.evaluation.comparison",
    "write_comparison": "weaving.evaluation.comparison",
    "WeightBank": "weaving.evaluation.evaluate",
    "WeightSet": "weaving.evaluation.evaluate",
    "class_counts": "weaving.evaluation.evaluate",
    "column_tally": "weaving.evaluation.evaluate",
    "MergeModule": "weaving.evaluation.merge_module",
    "check_results": "weaving.evaluation.report",
    "format_markdown": "weaving.evaluation.report",
    "format_summary": "weaving.evaluation.report",
    "load_results": "weaving.evaluation.report",
    "write_results": "weaving.evaluation.report",
    "SETUPS": "weaving.merging.search_space",
    "default_search_space": "weaving.merging.search_space",
    "Column": "weaving.evaluation.setups",
    "MergeJob": "weaving.evaluation.setups",
    "Setup": "weaving.evaluation.setups",
    "Tally": "weaving.evaluation.setups",
    "continual": "weaving.evaluation.setups",
    "domain_generalization": "weaving.evaluation.setups",
    "make_setup": "weaving.evaluation.setups",
    "mean_accuracy": "weaving.evaluation.setups",
    "multi_task": "weaving.evaluation.setups",
    "setup_for_loaders": "weaving.evaluation.setups",
}

__all__ = [
    "SETUPS",
    "CheckpointModule",
    "Column",
    "ComparisonModule",
    "MergeJob",
    "MergeModule",
    "Setup",
    "Tally",
    "WeightBank",
    "WeightSet",
    "check_results",
    "class_counts",
    "column_tally",
    "continual",
    "default_search_space",
    "domain_generalization",
    "format_markdown",
    "format_summary",
    "load_results",
    "make_setup",
    "mean_accuracy",
    "multi_task",
    "run_comparison",
    "setup_for_loaders",
    "write_comparison",
    "write_results",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'weaving.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
