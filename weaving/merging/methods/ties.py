"""TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint mean.

The trim threshold is taken over each whole task vector (the authors' rule), or with `per_tensor` from
each tensor alone (mergekit's rule: exactly max(1, int(n*k)) entries of each tensor are kept).

`zero_entries` counts extra zero-delta entries in each task vector's population, as if appended to it:
the official CLIP harnesses flatten the whole ImageEncoder, whose text-side tensors never change
(docs/methods.md, "The threshold population"). Only the trim threshold's index moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weaving.merging.registry import register_method
from weaving.merging.task_set import TaskVectorSet
from weaving.merging.tensor_ops import StackedBlocks, magnitude_rank_mask, task_column


@dataclass
class TiesStats:
    thresholds: list[torch.Tensor | None]  # per task; None keeps everything (k = 1.0)
    majority_sign: float


def check_zero_entries(method: str, zero_entries: object) -> int:
    """`zero_entries` must be a whole number >= 0 (it counts entries); returns it."""
    if isinstance(zero_entries, bool) or not isinstance(zero_entries, int) or zero_entries < 0:
        raise ValueError(f"method {method!r}: zero_entries counts zero-delta entries added to every task vector's "
                         f"population and must be a whole number >= 0, got {zero_entries!r}")
    return zero_entries


def trim_thresholds(task_set: TaskVectorSet, k: float, zero_entries: int = 0) -> list[torch.Tensor | None]:
    """Per task vector, the (d - int(d*k))-th smallest abs value over all its d entries (original TIES
    rule), d counting `zero_entries` extra zeros: all T selections in the same passes over the tensors,
    without flattening a task vector (and across ranks for a distributed set). None: k keeps everything."""
    d = task_set.numel() + zero_entries
    kth = d - int(d * k)
    if kth < 1:
        return [None] * task_set.num_tasks
    chosen = task_set.select_sorted_rows(task_set.rows, [[kth - 1]] * task_set.num_tasks, absolute=True,
                                         zeros=zero_entries)
    return [row[0] for row in chosen]


def prepare_ties(task_set: TaskVectorSet, *, k: float, zero_entries: int = 0, per_tensor: bool = False) -> TiesStats:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"method 'ties': k is the kept fraction and must be in (0, 1], got {k}")
    check_zero_entries("ties", zero_entries)
    if per_tensor and zero_entries:
        raise ValueError("method 'ties': zero_entries counts entries of a whole task vector's threshold population; "
                         "with per_tensor each tensor is its own population: give one of them")
    # One task vector flattened at a time: never a dense T x d matrix. (A threshold of 0 keeps everything,
    # as the appended zeros would in the original: abs(x) >= 0; they add nothing to any sum or sign.)
    thresholds = [None] * task_set.num_tasks if per_tensor else trim_thresholds(task_set, k, zero_entries)
    # Where the elected sign is 0, the original code uses the sign of the sum of all elected signs.
    total = 0
    for key in task_set.keys:
        tensors = per_tensor_trim(task_set.tensors(key), k) if per_tensor else task_set.tensors(key)
        columns = threshold_column(thresholds, tensors[0])
        stacked_blocks = StackedBlocks(tensors, scratch=1)
        for _, stacked in stacked_blocks:
            total += int(torch.sign(trim_(stacked, columns, stacked_blocks.scratch(0)).sum(dim=0)).sum())
    total = task_set.all_sum(total)
    return TiesStats(thresholds, float((total > 0) - (total < 0)))


def threshold_column(thresholds: list[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
    """The per-task thresholds as a (T, 1) column; 0 where a task keeps everything (no abs value is below 0)."""
    return task_column([torch.zeros(()) if t is None else t for t in thresholds], like)


def per_tensor_trim(tensors: list[torch.Tensor], k: float) -> list[torch.Tensor]:
    """Each task's tensor (n entries) keeping its max(1, int(n*k)) entries of largest abs value, zero
    elsewhere; among equal abs values at the threshold the earlier entries are kept (`magnitude_rank_mask`)."""
    return [value * magnitude_rank_mask(value.reshape(-1), 0, max(1, int(value.numel() * k))).view(value.shape)
            for value in tensors]


def trim_(stacked: torch.Tensor, thresholds: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Zero, in place, the entries of the stacked (T, n) block below their task's threshold."""
    keep = torch.ge(torch.abs(stacked, out=scratch), thresholds, out=scratch)  # 0/1 in the values' dtype
    return stacked.mul_(keep)  # a trimmed negative entry becomes -0.0, which counts and sums as 0


@register_method("ties", prepare=prepare_ties)
def ties(tensors: list[torch.Tensor], *, key: str, stats: TiesStats, k: float = 0.2,
         zero_entries: int = 0, per_tensor: bool = False) -> torch.Tensor:
    if per_tensor:
        tensors = per_tensor_trim(tensors, k)  # the thresholds are then all None: nothing more is trimmed
    columns = threshold_column(stats.thresholds, tensors[0])
    merged = torch.empty(tensors[0].numel(), dtype=tensors[0].dtype, device=tensors[0].device)
    stacked_blocks = StackedBlocks(tensors, scratch=1)
    for block, stacked in stacked_blocks:
        trim_(stacked, columns, scratch := stacked_blocks.scratch(0))
        sign = torch.sign(stacked.sum(dim=0))
        sign.add_(sign == 0, alpha=stats.majority_sign)  # the elected sign is never 0
        # x * sign > 0 exactly where x is non-zero with the elected sign; those entries' sum is the sum of
        # their magnitudes times the sign (negation is exact, so this is the same float sum).
        aligned = torch.mul(stacked, sign, out=stacked)
        count = torch.gt(aligned, 0, out=scratch).sum(dim=0).clamp_(min=1)  # exact in floats
        total = aligned.clamp_(min=0).sum(dim=0).mul_(sign)
        torch.div(total, count, out=merged[block]).add_(0.0)  # add 0.0: -0.0 (nothing elected) becomes 0.0
    return merged.view(tensors[0].shape)
