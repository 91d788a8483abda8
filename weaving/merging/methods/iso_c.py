"""Iso-C (Marczak et al., 2025): task arithmetic with a flat (isotropic) singular spectrum."""

from __future__ import annotations

import torch

from weaving.merging.registry import register_method
from weaving.merging.spectral import isotropic
from weaving.merging.tensor_ops import is_svd_matrix, running_mean, sequential_sum


@register_method("iso_c")
def iso_c(tensors: list[torch.Tensor], *, key: str, stats: None) -> torch.Tensor:
    """2-D tensors: the sum of the task matrices with its spectrum flattened to its mean (directions of zero
    singular value stay zero, so a low-rank sum stays low-rank); others: mean over tasks."""
    if not is_svd_matrix(key, tensors[0]):
        return running_mean(tensors)
    return isotropic(sequential_sum(tensors))
