"""PCB-Merging (Du et al., 2024): parameter competition balancing with intra- and inter-task scores.

Follows the reference implementation's quantile conventions (docs/methods.md), but computes every
statistic per task vector, streamed over tensors, instead of on one dense T x d matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from weaving.merging.registry import register_method
from weaving.merging.task_set import TaskVectorSet

CLIP_RATIO = 1e-4  # fraction clipped at both ends of |x_t| (fixed in the reference code)


@dataclass
class PcbStats:
    lo: list[torch.Tensor]    # per task: clip bounds of |x_t|
    hi: list[torch.Tensor]
    low: list[torch.Tensor]   # per task: clip bounds of the score (the top `ratio` fraction survives)
    high: list[torch.Tensor]


def _minmax_(value: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(value - lo) / (hi - lo) in place (0 where hi == lo)."""
    span = hi - lo
    if float(span) == 0.0:
        return value.zero_()
    return value.sub_(lo).div_(span)


def score(x: torch.Tensor, total: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    """intra * inter for one task's tensor: exp(n * minmax(clip|x|)^2) * tanh(x * sum_j x_j)."""
    intra = _minmax_(x.abs().clamp_(lo, hi), lo, hi).square_().mul_(n).exp_()
    return intra.mul_(torch.mul(x, total).tanh_())


def prepare_pcb(task_set: TaskVectorSet, *, ratio: float) -> PcbStats:
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"method 'pcb': ratio is the kept fraction and must be in (0, 1], got {ratio}")
    n = task_set.num_tasks
    stats = PcbStats([], [], [], [])
    totals = {key: torch.stack(task_set.tensors(key)).sum(dim=0) for key in task_set.keys}  # sum_j x_j, one model's size
    d = task_set.numel()
    for t in range(n):
        lo, hi = task_set.select_sorted(lambda key: task_set.tensor(t, key),
                                        [int(d * CLIP_RATIO), int(d * (1 - CLIP_RATIO)) - 1], absolute=True)
        stats.lo.append(lo)
        stats.hi.append(hi)
        low, high = task_set.select_sorted(lambda key: score(task_set.tensor(t, key), totals[key], lo, hi, n),
                                           [int(d * (1 - ratio)), int(d * (1 - 0)) - 1])
        stats.low.append(low)
        stats.high.append(high)
    return stats


@register_method("pcb", prepare=prepare_pcb)
def pcb(tensors: list[torch.Tensor], *, key: str, stats: PcbStats, ratio: float = 0.1) -> torch.Tensor:
    n = len(tensors)
    total = torch.stack(tensors).sum(dim=0)
    numerator = torch.zeros_like(total)
    denominator = torch.zeros_like(total)
    for t, x in enumerate(tensors):
        lo, hi = stats.lo[t], stats.hi[t]
        s = _minmax_(score(x, total, lo, hi, n).clamp_(stats.low[t], stats.high[t]), stats.low[t], stats.high[t])
        denominator += s
        numerator += s.mul_(x.abs().clamp_(lo, hi).mul_(torch.sign(x)))
    return numerator / denominator.clamp_(min=1e-12)
