"""MagMax (Marczak et al., 2024): per element, the task value of largest magnitude."""

from __future__ import annotations

import torch

from weaving.merging.registry import register_method


def max_magnitude(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise value with the largest abs value; on equal abs values the later tensor wins."""
    best = tensors[0]
    for value in tensors[1:]:
        best = torch.where(value.abs() >= best.abs(), value, best)
    return best


@register_method("magmax")
def magmax(tensors: list[torch.Tensor], *, key: str, stats: None) -> torch.Tensor:
    return max_magnitude(tensors)
