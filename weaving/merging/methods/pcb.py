"""PCB-Merging (Du et al., 2024): parameter competition balancing with intra- and inter-task scores.

Follows the reference implementation's quantile conventions (docs/methods.md), but computes every
statistic per task vector, streamed over tensors, instead of on one dense T x d matrix. The elementwise
passes run over cache-sized blocks of the T stacked tensors (`weaving.merging.tensor_ops.blocks`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from weaving.merging.registry import register_method
from weaving.merging.task_set import TaskVectorSet
from weaving.merging.tensor_ops import blocks

CLIP_RATIO = 1e-4  # fraction clipped at both ends of |x_t| (fixed in the reference code)


@dataclass
class PcbStats:
    lo: list[torch.Tensor]    # per task: clip bounds of |x_t|
    hi: list[torch.Tensor]
    low: list[torch.Tensor]   # per task: clip bounds of the score (the top `ratio` fraction survives)
    high: list[torch.Tensor]


def column(values: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Per-task scalars as a (T, 1) column on `like`'s device and dtype."""
    return torch.stack([v.to("cpu", like.dtype) for v in values]).to(like.device).unsqueeze(1)


def minmax_(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(values - lo) / (hi - lo) in place, row by row with (T, 1) bounds (0 on rows where hi == lo)."""
    span = hi - lo
    flat = span == 0
    values.sub_(lo).div_(torch.where(flat, torch.ones_like(span), span))
    return values.mul_(~flat) if bool(flat.any()) else values


def scores(stacked: torch.Tensor, total: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """intra * inter for T stacked tasks (T, n): exp(T * minmax(clip|x_t|)^2) * tanh(x_t * sum_j x_j)."""
    intra = minmax_(stacked.abs().clamp_(lo, hi), lo, hi).square_().mul_(stacked.shape[0]).exp_()
    return intra.mul_(torch.mul(stacked, total).tanh_())


# Entries per task in one block of scores handed to the selection: each block's scores feed 65536-bin
# histograms, which cost as much as a cache-sized block; this size keeps them a small part of the pass.
SELECTION_BLOCK = 1 << 20


def stacked_blocks(tensors: list[torch.Tensor], start: int = 0, stop: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """(block, the T flattened tensors' entries in it stacked (T, n)) over cache-sized blocks of the
    entries start..stop."""
    flat = [value.reshape(-1) for value in tensors]
    stop = flat[0].numel() if stop is None else stop
    for block in blocks(stop - start, flat[0].device):
        block = slice(block.start + start, block.stop + start)
        yield block, torch.stack([value[block] for value in flat])


def prepare_pcb(task_set: TaskVectorSet, *, ratio: float) -> PcbStats:
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"method 'pcb': ratio is the kept fraction and must be in (0, 1], got {ratio}")
    n = task_set.num_tasks
    d = task_set.numel()
    totals = {key: torch.stack(task_set.tensors(key)).sum(dim=0).reshape(-1) for key in task_set.keys}  # sum_j x_j
    clips = task_set.select_sorted_rows(task_set.rows, [[int(d * CLIP_RATIO), int(d * (1 - CLIP_RATIO)) - 1]] * n,
                                        absolute=True)
    lo, hi = [row[0] for row in clips], [row[1] for row in clips]

    def score_blocks(key: str) -> Iterator[torch.Tensor]:
        """The T tasks' scores of `key` in (T, n) blocks of SELECTION_BLOCK entries, each computed in
        cache-sized pieces into one reused buffer."""
        tensors = task_set.tensors(key)
        lo_column, hi_column = column(lo, tensors[0]), column(hi, tensors[0])
        total = totals[key]
        buffer = torch.empty(n, min(total.numel(), SELECTION_BLOCK), dtype=total.dtype, device=total.device)
        for outer in blocks(total.numel(), total.device, SELECTION_BLOCK):
            out = buffer[:, : outer.stop - outer.start]
            for block, stacked in stacked_blocks(tensors, start=outer.start, stop=outer.stop):
                out[:, block.start - outer.start: block.stop - outer.start] = scores(stacked, total[block], lo_column, hi_column)
            yield out

    bounds = task_set.select_sorted_rows(score_blocks, [[int(d * (1 - ratio)), int(d * (1 - 0)) - 1]] * n)
    return PcbStats(lo, hi, [row[0] for row in bounds], [row[1] for row in bounds])


@register_method("pcb", prepare=prepare_pcb)
def pcb(tensors: list[torch.Tensor], *, key: str, stats: PcbStats, ratio: float = 0.1) -> torch.Tensor:
    like = tensors[0]
    lo, hi, low, high = (column(values, like) for values in (stats.lo, stats.hi, stats.low, stats.high))
    merged = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
    for block, stacked in stacked_blocks(tensors):
        s = minmax_(scores(stacked, stacked.sum(dim=0), lo, hi).clamp_(low, high), low, high)
        clipped = stacked.abs().clamp_(lo, hi).mul_(torch.sign(stacked))
        torch.div(s.mul(clipped).sum(dim=0), s.sum(dim=0).clamp_(min=1e-12), out=merged[block])
    return merged.view(like.shape)
