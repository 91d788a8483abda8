"""`validate_seen_tasks`: after each task of a stream, the accuracy of the model being trained on the tasks
seen so far; it fills the sequential model's accuracy matrix while training (docs/training.md).

For a class-incremental stream (`splits=n`) the score is task-agnostic, as in the continual evaluation:
the head over all classes on the full test set, tallied per part (one pass scores every part, so the row
holds the parts not seen yet too). For a stream of separate tasks each seen task is scored with its own
head. Rows go to `<run dir>/seen_tasks.json` (written atomically, one row per finished task).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

SEEN_TASKS_FILE = "seen_tasks.json"


@torch.no_grad()
def _class_counts(encoder: nn.Module, head: nn.Module, loader, device: torch.device, num_classes: int) -> torch.Tensor:
    """Per-class [correct, total] over a test loader, with the evaluation's one counting path
    (`weaving.evaluation.evaluate.class_counts`)."""
    from weaving.evaluation.evaluate import class_counts

    counts = torch.zeros(num_classes, 2, dtype=torch.long, device=device)
    for images, targets in loader:
        preds = head(encoder(images.to(device))).argmax(dim=-1)
        counts += class_counts(preds, torch.as_tensor(targets).to(device), num_classes)
    return counts.cpu()


def _accuracy(counts: torch.Tensor, column) -> float | None:
    """The column's accuracy from the per-class counts (exactly what the evaluation reports); None without samples."""
    from weaving.evaluation.evaluate import column_tally

    tally = column_tally(counts, column)
    return tally.accuracy if tally.total else None


def seen_tasks_row(encoder: nn.Module, heads: list[nn.Module], base_head: nn.Module | None, datamodule: Any,
                   task: int, device: torch.device) -> list[float | None]:
    """Accuracy after task `task` (0-based) on each task of the stream; None for tasks not scored."""
    from weaving.evaluation.setups import Column, part_classes

    names = list(datamodule.task_names)
    was_training = encoder.training
    encoder.eval()
    try:
        if datamodule.base_task is not None:  # class-incremental: task-agnostic, every part in one pass
            base = datamodule.base_task
            test = datamodule.loader(datamodule.dataset(base, "test"), train=False)
            counts = _class_counts(encoder, base_head, test, device, base.num_classes)
            return [_accuracy(counts, Column(name, base.name, part_classes(base.name, name))) for name in names]
        row: list[float | None] = [None] * len(names)
        for j in range(task + 1):
            spec = datamodule.get_task(j)
            test = datamodule.loader(datamodule.dataset(spec, "test"), train=False)
            row[j] = _accuracy(_class_counts(encoder, heads[j], test, device, spec.num_classes), Column(spec.name, spec.name))
        return row
    finally:
        encoder.train(was_training)


def record_row(run_dir: str | Path, names: list[str], task: int, row: list[float | None], task_agnostic: bool) -> Path:
    """Store `row` as row `task` of the matrix in `<run_dir>/seen_tasks.json` (other rows kept)."""
    from weaving.io.publish import atomic_write_text

    path = Path(run_dir) / SEEN_TASKS_FILE
    matrix: list[list[float | None] | None] = [None] * len(names)
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
            if previous.get("tasks") == names:
                matrix = previous["accuracy_matrix"]
        except (json.JSONDecodeError, KeyError, AttributeError):
            pass  # an unreadable file is rebuilt from this run's rows
    matrix[task] = row
    payload = {"tasks": names, "task_agnostic": task_agnostic, "accuracy_matrix": matrix,
               "note": "row i: accuracy after task i (0-based) on each task; null: not scored (yet)"}
    return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
