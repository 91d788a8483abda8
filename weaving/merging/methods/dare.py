"""DARE (Yu et al., 2024): drop each task-vector element with probability p, rescale, then sum."""

from __future__ import annotations

import torch

from weaving.merging.registry import derive_seed, register_method


def check_dare(task_set, *, p: float, rescale: bool) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"method 'dare': p is the drop probability and must be in [0, 1), got {p}")


def keep_mask(value: torch.Tensor, task: int, seed: int, p: float) -> torch.Tensor:
    """True where one task's tensor keeps an element: each dropped with probability p, independently, from
    the task's own seeded stream (the draws depend on the seed, the task and the shape only)."""
    generator = torch.Generator(device=value.device).manual_seed(derive_seed(seed, "dare", task))
    return torch.rand(value.shape, generator=generator, device=value.device, dtype=value.dtype) >= p


def drop_and_rescale(value: torch.Tensor, task: int, seed: int, p: float, rescale: bool) -> torch.Tensor:
    """One task's tensor with each element dropped with probability p (`keep_mask`), the kept ones divided
    by 1 - p when `rescale`."""
    kept = value * keep_mask(value, task, seed, p)
    return kept / (1.0 - p) if rescale else kept


@register_method("dare", prepare=check_dare, random=True)
def dare(tensors: list[torch.Tensor], *, key: str, stats: None, seed: int, p: float = 0.1, rescale: bool = True) -> torch.Tensor:
    merged = torch.zeros_like(tensors[0])
    for task, value in enumerate(tensors):
        merged += drop_and_rescale(value, task, seed, p, rescale)
    return merged
