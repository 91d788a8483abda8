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
def _predictions(encoder: nn.Module, head: nn.Module, loader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    preds, labels = [], []
    for images, targets in loader:
        preds.append(head(encoder(images.to(device))).argmax(dim=-1).cpu())
        labels.append(torch.as_tensor(targets).cpu())
    return torch.cat(preds), torch.cat(labels)


def _accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Correct / total as Python numbers (exactly what the evaluation's tallies give); None without samples."""
    return int((preds == labels).sum()) / len(labels) if len(labels) else None


def seen_tasks_row(encoder: nn.Module, heads: list[nn.Module], base_head: nn.Module | None, datamodule: Any,
                   task: int, device: torch.device) -> list[float | None]:
    """Accuracy after task `task` (0-based) on each task of the stream; None for tasks not scored."""
    from weaving.evaluation.setups import part_classes

    names = list(datamodule.task_names)
    was_training = encoder.training
    encoder.eval()
    try:
        if datamodule.base_task is not None:  # class-incremental: task-agnostic, every part in one pass
            base = datamodule.base_task
            test = datamodule.loader(datamodule.dataset(base, "test"), train=False)
            preds, labels = _predictions(encoder, base_head, test, device)
            row: list[float | None] = []
            for name in names:
                mask = torch.isin(labels, torch.tensor(part_classes(base.name, name)))
                row.append(_accuracy(preds[mask], labels[mask]))
            return row
        row = [None] * len(names)
        for j in range(task + 1):
            test = datamodule.loader(datamodule.dataset(datamodule.get_task(j), "test"), train=False)
            preds, labels = _predictions(encoder, heads[j], test, device)
            row[j] = _accuracy(preds, labels)
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
