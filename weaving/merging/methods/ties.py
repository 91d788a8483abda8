"""TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint mean."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weaving.merging.registry import register_method
from weaving.merging.task_set import TaskVectorSet
from weaving.merging.tensor_ops import blocks


@dataclass
class TiesStats:
    thresholds: list[torch.Tensor | None]  # per task; None keeps everything (k = 1.0)
    majority_sign: float


def trim_thresholds(task_set: TaskVectorSet, k: float) -> list[torch.Tensor | None]:
    """Per task vector, the (d - int(d*k))-th smallest abs value over all its d entries (original TIES
    rule): all T selections in the same passes over the tensors, without flattening a task vector (and
    across ranks for a distributed set). None: k keeps everything."""
    d = task_set.numel()
    kth = d - int(d * k)
    if kth < 1:
        return [None] * task_set.num_tasks
    chosen = task_set.select_sorted_rows(task_set.rows, [[kth - 1]] * task_set.num_tasks, absolute=True)
    return [row[0] for row in chosen]


def prepare_ties(task_set: TaskVectorSet, *, k: float) -> TiesStats:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"method 'ties': k is the kept fraction and must be in (0, 1], got {k}")
    # One task vector flattened at a time: never a dense T x d matrix.
    thresholds = trim_thresholds(task_set, k)
    # Where the elected sign is 0, the original code uses the sign of the sum of all elected signs.
    total = 0
    for key in task_set.keys:
        tensors = task_set.tensors(key)
        space = Workspace(tensors, thresholds)
        for block in blocks(tensors[0].numel(), tensors[0].device):
            total += int(torch.sign(space.trimmed_sum(block)).sum())
    total = task_set.all_sum(total)
    return TiesStats(thresholds, float((total > 0) - (total < 0)))


class Workspace:
    """Buffers for one tensor's blocked pass (`blocks`): the T trimmed blocks and their temporaries are
    reused from block to block, so the pass neither allocates nor leaves the CPU cache."""

    def __init__(self, tensors: list[torch.Tensor], thresholds: list[torch.Tensor | None]):
        self.tensors = [value.reshape(-1) for value in tensors]
        like = self.tensors[0]
        size = min(like.numel(), blocks(like.numel(), like.device)[0].stop) * len(tensors)
        self.values = torch.empty(size, dtype=like.dtype, device=like.device)
        self.scratch = torch.empty(size, dtype=like.dtype, device=like.device)
        self.mask = torch.empty(size, dtype=like.dtype, device=like.device)  # 0/1 in the values' dtype
        # 0 where a task keeps everything (k = 1): no abs value is below 0.
        column = [torch.zeros((), dtype=like.dtype) if t is None else t.to("cpu", like.dtype) for t in thresholds]
        self.thresholds = torch.stack(column).to(like.device).unsqueeze(1)

    def view(self, buffer: torch.Tensor, block: slice) -> torch.Tensor:
        return buffer[: len(self.tensors) * (block.stop - block.start)].view(len(self.tensors), -1)

    def trimmed(self, block: slice) -> torch.Tensor:
        """Entries `block` of the T tensors stacked (T, n), those below their task's threshold zeroed."""
        stacked = torch.stack([value[block] for value in self.tensors], out=self.view(self.values, block))
        keep = torch.ge(torch.abs(stacked, out=self.view(self.scratch, block)), self.thresholds,
                        out=self.view(self.mask, block))
        return stacked.mul_(keep)  # a trimmed negative entry becomes -0.0, which counts and sums as 0

    def trimmed_sum(self, block: slice) -> torch.Tensor:
        return self.trimmed(block).sum(dim=0)


@register_method("ties", prepare=prepare_ties)
def ties(tensors: list[torch.Tensor], *, key: str, stats: TiesStats, k: float = 0.2) -> torch.Tensor:
    space = Workspace(tensors, stats.thresholds)
    merged = torch.empty(tensors[0].numel(), dtype=tensors[0].dtype, device=tensors[0].device)
    for block in blocks(merged.numel(), merged.device):
        stacked = space.trimmed(block)
        sign = torch.sign(stacked.sum(dim=0))
        sign.add_(sign == 0, alpha=stats.majority_sign)  # the elected sign is never 0
        # x * sign > 0 exactly where x is non-zero with the elected sign; those entries' sum is the sum of
        # their magnitudes times the sign (negation is exact, so this is the same float sum).
        aligned = torch.mul(stacked, sign, out=space.view(space.scratch, block))
        count = torch.gt(aligned, 0, out=space.view(space.mask, block)).sum(dim=0).clamp_(min=1)  # exact in floats
        total = aligned.clamp_(min=0).sum(dim=0).mul_(sign)
        torch.div(total, count, out=merged[block]).add_(0.0)  # add 0.0: -0.0 (nothing elected) becomes 0.0
    return merged.view(tensors[0].shape)
