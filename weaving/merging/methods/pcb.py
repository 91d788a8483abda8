"""PCB-Merging (Du et al., 2024): parameter competition balancing with intra- and inter-task scores.

Two variants of the authors' code (docs/methods.md): `generic` is `pcb-merging.py`'s `PCB_merge` (clip
1e-4, inter-score against sum_j x_j); `vision` is `vision_source_code/pcb.py`, the script of their ViT
results (clip 0.01, inter-score against the sum of the signed min-max normalised vectors). Both follow the
reference's quantile conventions, but compute every statistic per task vector, streamed over tensors,
instead of on one dense T x d matrix. The elementwise passes run over cache-sized blocks of the T stacked
tensors (`weaving.merging.tensor_ops.blocks`). `zero_entries` counts extra zero-delta entries in each task
vector's population, as if appended to it (see `weaving.merging.methods.ties`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from weaving.merging.methods.ties import check_zero_entries
from weaving.merging.registry import register_method
from weaving.merging.task_set import TaskVectorSet
from weaving.merging.tensor_ops import StackedBlocks, blocks, task_column

# Fraction clipped at both ends of |x_t|, fixed in each variant's reference code: `clamp(..., min_ratio=
# 0.0001, max_ratio=0.0001)` in pcb-merging.py, `min_ratio=0.01, max_ratio=0.01` in vision_source_code/pcb.py.
CLIP_RATIOS = {"generic": 1e-4, "vision": 0.01}


@dataclass
class PcbStats:
    lo: list[torch.Tensor]    # per task: clip bounds of |x_t|
    hi: list[torch.Tensor]
    low: list[torch.Tensor]   # per task: clip bounds of the score (the top `ratio` fraction survives)
    high: list[torch.Tensor]


@dataclass
class Range:
    """Per-task bounds as (T, 1) columns for clamping and min-max scaling, prepared once per tensor."""

    lo: torch.Tensor
    hi: torch.Tensor
    span: torch.Tensor  # hi - lo; 1 where hi == lo (every clamped value is then lo and scales to 0)

    @classmethod
    def of(cls, lo: list[torch.Tensor], hi: list[torch.Tensor], like: torch.Tensor) -> Range:
        lo_column, hi_column = task_column(lo, like), task_column(hi, like)
        span = hi_column - lo_column
        return cls(lo_column, hi_column, span.masked_fill(span == 0, 1.0))

    def clamp_(self, values: torch.Tensor) -> torch.Tensor:
        """clamp(values, lo, hi) in place, row by row (as two one-sided clamps: several times faster on
        the CPU than a clamp with two tensor bounds, and the same values)."""
        return values.clamp_min_(self.lo).clamp_max_(self.hi)

    def minmax_(self, values: torch.Tensor) -> torch.Tensor:
        """(clamp(values, lo, hi) - lo) / (hi - lo) in place, row by row (0 on rows where hi == lo)."""
        return self.clamp_(values).sub_(self.lo).div_(self.span)


def scores_(stacked: torch.Tensor, total: torch.Tensor, clip: Range, out: torch.Tensor, spare: torch.Tensor) -> torch.Tensor:
    """intra * inter for T stacked tasks (T, n), into `out`: exp(T * minmax(clip|x_t|)^2) * tanh(x_t * total)."""
    intra = clip.minmax_(torch.abs(stacked, out=out)).square_().mul_(stacked.shape[0]).exp_()
    return intra.mul_(torch.mul(stacked, total, out=spare).tanh_())


def inter_total(stacked: torch.Tensor, clip: Range, variant: str, scratch: torch.Tensor) -> torch.Tensor:
    """What the inter-score multiplies x_t by, for T stacked tasks (T, n): sum_j x_j (generic), or sum_j
    sign(x_j) * minmax(clip|x_j|) (vision: `torch.sum(all_checks_normalized, dim=0)`); `scratch` is clobbered."""
    if variant == "generic":
        return stacked.sum(dim=0)
    # copysign is sign(x) * m wherever it matters: m = 0 where x = 0 (|x| clamps to lo, which scales to 0)
    return clip.minmax_(torch.abs(stacked, out=scratch)).copysign_(stacked).sum(dim=0)


# Entries per task in one block of scores handed to the selection: each block's scores feed 65536-bin
# histograms, which cost as much as a cache-sized block; this size keeps them a small part of the pass.
SELECTION_BLOCK = 1 << 20


def check_pcb(ratio: float, zero_entries: int, variant: str) -> None:
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"method 'pcb': ratio is the kept fraction and must be in (0, 1], got {ratio}")
    check_zero_entries("pcb", zero_entries)
    if variant not in CLIP_RATIOS:
        raise ValueError(f"method 'pcb': unknown variant {variant!r}; known variants: {', '.join(CLIP_RATIOS)}")


def prepare_pcb(task_set: TaskVectorSet, *, ratio: float, zero_entries: int = 0, variant: str = "generic") -> PcbStats:
    check_pcb(ratio, zero_entries, variant)
    n = task_set.num_tasks
    d = task_set.numel() + zero_entries  # the appended zeros: |x| = 0 and score 0 (tanh(0 * total) = 0)
    clip_ratio = CLIP_RATIOS[variant]
    clips = task_set.select_sorted_rows(task_set.rows, [[int(d * clip_ratio), int(d * (1 - clip_ratio)) - 1]] * n,
                                        absolute=True, zeros=zero_entries)
    lo, hi = [row[0] for row in clips], [row[1] for row in clips]

    def score_blocks(key: str) -> Iterator[torch.Tensor]:
        """The T tasks' scores of `key` in (T, n) blocks of SELECTION_BLOCK entries, each computed in
        cache-sized pieces into one reused buffer."""
        tensors = task_set.tensors(key)
        clip, numel = Range.of(lo, hi, tensors[0]), tensors[0].numel()
        buffer = torch.empty(n, min(numel, SELECTION_BLOCK), dtype=tensors[0].dtype, device=tensors[0].device)
        for outer in blocks(numel, tensors[0].device, SELECTION_BLOCK):
            out = buffer[:, : outer.stop - outer.start]
            pieces = StackedBlocks(tensors, scratch=2, start=outer.start, stop=outer.stop)
            for block, stacked in pieces:
                total = inter_total(stacked, clip, variant, pieces.scratch(0))
                out[:, block.start - outer.start: block.stop - outer.start] = scores_(
                    stacked, total, clip, pieces.scratch(0), pieces.scratch(1))
            yield out

    bounds = task_set.select_sorted_rows(score_blocks, [[int(d * (1 - ratio)), int(d * (1 - 0)) - 1]] * n,
                                         zeros=zero_entries, reused_blocks=True)
    return PcbStats(lo, hi, [row[0] for row in bounds], [row[1] for row in bounds])


@register_method("pcb", prepare=prepare_pcb)
def pcb(tensors: list[torch.Tensor], *, key: str, stats: PcbStats, ratio: float = 0.1, zero_entries: int = 0,
        variant: str = "generic") -> torch.Tensor:
    like = tensors[0]
    clip, keep = Range.of(stats.lo, stats.hi, like), Range.of(stats.low, stats.high, like)
    merged = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
    stacked_blocks = StackedBlocks(tensors, scratch=3)
    for block, stacked in stacked_blocks:
        s, clipped, spare = (stacked_blocks.scratch(i) for i in range(3))
        total = inter_total(stacked, clip, variant, s)
        keep.minmax_(scores_(stacked, total, clip, s, spare))
        clip.clamp_(torch.abs(stacked, out=clipped)).mul_(torch.sign(stacked, out=spare))
        torch.div(clipped.mul_(s).sum(dim=0), s.sum(dim=0).clamp_(min=1e-12), out=merged[block])
    return merged.view(like.shape)
