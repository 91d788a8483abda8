"""TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint mean."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weaving.merging.registry import register_method
from weaving.merging.task_set import TaskVectorSet


@dataclass
class TiesStats:
    thresholds: list[torch.Tensor | None]  # per task; None keeps everything (k = 1.0)
    majority_sign: float


def trim_threshold(task_set: TaskVectorSet, task: int, k: float) -> torch.Tensor | None:
    """The (d - int(d*k))-th smallest abs value over all d entries of one task vector (original TIES rule),
    selected without flattening them into one vector (and across ranks for a distributed set)."""
    d = task_set.numel()
    kth = d - int(d * k)
    if kth < 1:
        return None
    return task_set.select_sorted(lambda key: task_set.tensor(task, key), [kth - 1], absolute=True)[0]


def prepare_ties(task_set: TaskVectorSet, *, k: float) -> TiesStats:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"method 'ties': k is the kept fraction and must be in (0, 1], got {k}")
    # One task vector flattened at a time: never a dense T x d matrix.
    thresholds = [trim_threshold(task_set, t, k) for t in range(task_set.num_tasks)]
    # Where the elected sign is 0, the original code uses the sign of the sum of all elected signs.
    total = 0
    for key in task_set.keys:
        total += int(torch.sign(trimmed_stack(task_set.tensors(key), thresholds).sum(dim=0)).sum().item())
    total = task_set.all_sum(total)
    return TiesStats(thresholds, float((total > 0) - (total < 0)))


def trimmed_stack(tensors: list[torch.Tensor], thresholds: list[torch.Tensor | None]) -> torch.Tensor:
    """The T trimmed tensors stacked (T, ...), trimmed in place in the one stacked copy."""
    stacked = torch.stack(tensors)
    for row, threshold in zip(stacked, thresholds):
        if threshold is not None:
            row.masked_fill_(row.abs() < threshold, 0.0)
    return stacked


@register_method("ties", prepare=prepare_ties)
def ties(tensors: list[torch.Tensor], *, key: str, stats: TiesStats, k: float = 0.2) -> torch.Tensor:
    stacked = trimmed_stack(tensors, stats.thresholds)
    sign = torch.sign(stacked.sum(dim=0))
    sign.masked_fill_(sign == 0, stats.majority_sign)
    agree = torch.sign(stacked) == sign  # the elected sign is never 0, so zero entries never agree
    count = agree.sum(dim=0).clamp_(min=1)
    return stacked.masked_fill_(~agree, 0.0).sum(dim=0) / count
