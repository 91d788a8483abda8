"""Evaluation: `ComparisonModule` (the comparison as one `weaving validate` job; `MergeModule` and
`CheckpointModule` are its one-row presets), the three setups, tables, plots and the demo."""

from weaving.evaluation.checkpoint_module import CheckpointModule
from weaving.evaluation.comparison import ComparisonModule, run_comparison, write_comparison
from weaving.evaluation.evaluate import WeightBank, WeightSet, class_counts, column_tally
from weaving.evaluation.merge_module import MergeModule
from weaving.evaluation.report import check_results, format_markdown, format_summary, load_results, write_results
from weaving.merging.search_space import SETUPS, default_search_space
from weaving.evaluation.setups import (
    Column,
    MergeJob,
    Setup,
    Tally,
    continual,
    domain_generalization,
    make_setup,
    mean_accuracy,
    multi_task,
    setup_for_loaders,
)

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
