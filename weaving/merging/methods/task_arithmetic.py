"""Task Arithmetic (Ilharco et al., 2023): the sum of the task vectors."""

from __future__ import annotations

import torch

from weaving.merging.registry import register_method
from weaving.merging.tensor_ops import sequential_sum


@register_method("task_arithmetic", sums_tasks=True)
def task_arithmetic(tensors: list[torch.Tensor], *, key: str, stats: None) -> torch.Tensor:
    return sequential_sum(tensors)
