"""Task arithmetic straight from the checkpoints, in cache-sized blocks: the CPU fast path of methods whose
merge is the plain sum of the task vectors.

Tensor by tensor, `theta + lam * sum_t w_t (theta_t - theta)` streams every tensor through memory a dozen
times (widen each input, subtract, scale, add, add theta, narrow), and on a laptop that costs more than
reading the checkpoints. Here each of those steps runs over one block that stays in cache. The steps and
their order per entry are the plain path's, so the output is bit-identical; any input this path cannot
see through, and any non-finite result, goes back to the plain path (which names the culprit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from weaving.io.source import TensorSource
from weaving.merging.sources import DifferenceSource, ScaledSource
from weaving.merging.task_set import TaskVectorSet, compute_dtype

# Entries per block: the inputs' block (half precision), theta's, the running sum's and one term's
# (float32) stay in a core's L2 cache, and torch still splits a block over two threads.
SUM_BLOCK = 1 << 17


@dataclass(frozen=True)
class Term:
    """One task vector as `weight * (stored - theta)`: `minus_theta` False when `stored` is the task
    vector itself, `weight` None when unscaled."""

    stored: TensorSource
    minus_theta: bool
    weight: float | None


def term_of(source: TensorSource, theta: TensorSource) -> Term | None:
    """How to compute `source` from stored tensors, or None when it is not a (scaled) stored tensor or a
    (scaled) difference from `theta`."""
    weight = None
    if isinstance(source, ScaledSource):
        weight, source = source.weight, source.source
    if isinstance(source, ScaledSource):
        return None
    if isinstance(source, DifferenceSource):
        return Term(source.finetuned, True, weight) if source.pretrained is theta else None
    return Term(source, False, weight)


def sum_into(out: torch.Tensor, theta: torch.Tensor, stored: Sequence[torch.Tensor], minus_theta: Sequence[bool],
             weights: Sequence[float | None], lam: float, dtype: torch.dtype, block: int = SUM_BLOCK) -> bool:
    """out = theta + lam * sum_t w_t (stored_t [- theta]) in `dtype`, block by block, with the plain path's
    operations in its order (sum in list order); False when the result holds NaN or Inf.

    The tensors are contiguous CPU tensors of one shape; `out` may have any floating dtype.
    """
    numel = out.numel()
    out_flat, theta_flat = out.view(-1), theta.reshape(-1)
    stored_flat = [value.reshape(-1) for value in stored]
    size = min(block, max(numel, 1))
    theta_block, total, term = (torch.empty(size, dtype=dtype) for _ in range(3))
    finite = True
    for start in range(0, numel, size):
        stop = min(start + size, numel)
        width = stop - start
        base, acc, one = theta_block[:width], total[:width], term[:width]
        base.copy_(theta_flat[start:stop])
        for t, (value, minus, weight) in enumerate(zip(stored_flat, minus_theta, weights)):
            if t > 0 and not minus and weight is None:
                acc.add_(value[start:stop])  # widened exactly to `dtype` inside the add, as a separate copy would
                continue
            target = acc if t == 0 else one
            if minus:
                torch.sub(value[start:stop], base, out=target)
            else:
                target.copy_(value[start:stop])
            if weight is not None:
                target.mul_(weight)
            if t > 0:
                acc.add_(one)
        if lam != 1.0:
            acc.mul_(lam)
        acc.add_(base)
        finite = finite and bool(torch.isfinite(acc.sum()))
        out_flat[start:stop].copy_(acc)
    return finite


def summed_merger(base: TensorSource, task_set: TaskVectorSet, lam: float) -> Callable[[str, torch.dtype], torch.Tensor | None] | None:
    """`merged(key, out_dtype)`: theta + lam * (sum of the task vectors) computed by `sum_into` from the
    stored tensors, or None for a key it does not cover. None when the set is not on the CPU or holds a
    task vector it cannot see through."""
    if task_set.device.type != "cpu":
        return None
    terms = [term_of(source, base) for source in task_set.sources]
    if any(term is None for term in terms):
        return None

    def merged(key: str, out_dtype: torch.dtype) -> torch.Tensor | None:
        dtype = task_set.dtype(key)
        if compute_dtype(base.dtype(key)) != dtype or any(compute_dtype(t.stored.dtype(key)) != dtype for t in terms):
            return None
        theta = base.view(key)  # memory maps where the checkpoints are files: each entry is read once, here
        out = torch.empty(theta.shape, dtype=out_dtype)
        stored = [t.stored.view(key) for t in terms]
        if not sum_into(out, theta, stored, [t.minus_theta for t in terms], [t.weight for t in terms], lam, dtype):
            return None  # the plain path names the input with NaN / Inf (or gives the same overflowed sum)
        return out

    return merged
