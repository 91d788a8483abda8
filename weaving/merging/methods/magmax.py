"""MagMax (Marczak et al., 2024): per element, the task value of largest magnitude."""

from __future__ import annotations

import torch

from weaving.merging.registry import register_method
from weaving.merging.tensor_ops import max_magnitude


@register_method("magmax")
def magmax(tensors: list[torch.Tensor], *, key: str, stats: None) -> torch.Tensor:
    return max_magnitude(tensors)
