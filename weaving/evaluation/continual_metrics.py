"""Continual-learning metrics on an accuracy matrix, parts weighted equally.

`matrix[i][j]` (0-based) is the task-agnostic accuracy on part j's test samples of the model after task i
(the sequential model theta_pre + tau_i, or a merge of the task vectors 1..i+1). With T tasks and 1-based
i, j as usually written:

- average accuracy             = mean_j a[T][j]
- average incremental accuracy = mean_i ( mean_{j<=i} a[i][j] )
- forgetting                   = mean_{j<T} ( max_{j<=i<T} a[i][j] - a[T][j] )   (0 when T = 1)

Entries above the diagonal (parts not yet seen) may be present; the metrics never read them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Matrix = Sequence[Sequence[float]]


def check_matrix(matrix: Matrix) -> list[list[float]]:
    """The matrix as lists of floats; a one-line ValueError unless it is T x T (T >= 1) with every
    entry on and below the diagonal a number in [0, 1]."""
    rows = [list(map(float, row)) for row in matrix]
    size = len(rows)
    if size == 0:
        raise ValueError("accuracy matrix is empty: it needs one row per task")
    for i, row in enumerate(rows):
        if len(row) != size:
            raise ValueError(f"accuracy matrix must be square ({size} x {size}); row {i} has {len(row)} entries")
        for j in range(i + 1):
            if math.isnan(row[j]) or not 0.0 <= row[j] <= 1.0:
                raise ValueError(f"accuracy matrix[{i}][{j}] = {row[j]} is not an accuracy in [0, 1]")
    return rows


def average_accuracy(matrix: Matrix) -> float:
    """Mean accuracy over all parts after the last task."""
    rows = check_matrix(matrix)
    return sum(rows[-1]) / len(rows)


def average_incremental_accuracy(matrix: Matrix) -> float:
    """Mean over tasks i of the mean accuracy on the parts seen so far (j <= i)."""
    rows = check_matrix(matrix)
    return sum(sum(row[: i + 1]) / (i + 1) for i, row in enumerate(rows)) / len(rows)


def forgetting(matrix: Matrix) -> float:
    """Mean over the parts before the last of (best accuracy on the part before the last task - final)."""
    rows = check_matrix(matrix)
    last = len(rows) - 1
    if last == 0:
        return 0.0
    drops = [max(rows[i][j] for i in range(j, last)) - rows[last][j] for j in range(last)]
    return sum(drops) / last


def continual_metrics(matrix: Matrix) -> dict[str, Any]:
    """{"accuracy_matrix", "average_accuracy", "average_incremental_accuracy", "forgetting"} of `matrix`."""
    rows = check_matrix(matrix)
    return {
        "accuracy_matrix": rows,
        "average_accuracy": average_accuracy(rows),
        "average_incremental_accuracy": average_incremental_accuracy(rows),
        "forgetting": forgetting(rows),
    }
