"""TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint mean."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weaving.merging.registry import register_method
from weaving.merging.task_set import TaskVectorSet
from weaving.merging.tensor_ops import kth_smallest


@dataclass
class TiesStats:
    thresholds: list[torch.Tensor | None]  # per task; None keeps everything (k = 1.0)
    majority_sign: float


def trim(value: torch.Tensor, threshold: torch.Tensor | None) -> torch.Tensor:
    return value if threshold is None else torch.where(value.abs() >= threshold, value, torch.zeros_like(value))


def trim_threshold(flat_abs: torch.Tensor, k: float) -> torch.Tensor | None:
    """The (d - int(d*k))-th smallest abs value over all d entries of one task vector (original TIES rule)."""
    d = flat_abs.numel()
    kth = d - int(d * k)
    if kth < 1:
        return None
    return kth_smallest(flat_abs, kth)


def prepare_ties(task_set: TaskVectorSet, *, k: float) -> TiesStats:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"method 'ties': k is the kept fraction and must be in (0, 1], got {k}")
    # One task vector flattened at a time: never a dense T x d matrix.
    thresholds = [trim_threshold(task_set.flat(t).abs_(), k) for t in range(task_set.num_tasks)]
    # Where the elected sign is 0, the original code uses the sign of the sum of all elected signs.
    total = 0
    for key in task_set.keys:
        trimmed = [trim(v, th) for v, th in zip(task_set.tensors(key), thresholds)]
        total += int(torch.sign(torch.stack(trimmed).sum(dim=0)).sum().item())
    return TiesStats(thresholds, float((total > 0) - (total < 0)))


@register_method("ties", prepare=prepare_ties)
def ties(tensors: list[torch.Tensor], *, key: str, stats: TiesStats, k: float = 0.2) -> torch.Tensor:
    stacked = torch.stack([trim(v, th) for v, th in zip(tensors, stats.thresholds)])
    sign = torch.sign(stacked.sum(dim=0))
    sign = torch.where(sign == 0, torch.full_like(sign, stats.majority_sign), sign)
    selected = torch.where((torch.sign(stacked) == sign) & (stacked != 0), stacked, torch.zeros_like(stacked))
    count = (selected != 0).sum(dim=0).clamp(min=1)
    return selected.sum(dim=0) / count
