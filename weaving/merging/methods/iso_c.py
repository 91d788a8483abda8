"""Iso-C (Marczak et al., 2025): task arithmetic with a flat (isotropic) singular spectrum."""

from __future__ import annotations

import torch

from weaving.merging.registry import register_method
from weaving.merging.tensor_ops import is_svd_matrix, running_mean, sequential_sum


@register_method("iso_c")
def iso_c(tensors: list[torch.Tensor], *, key: str, stats: None) -> torch.Tensor:
    if not is_svd_matrix(key, tensors[0]):
        return running_mean(tensors)
    u, s, vh = torch.linalg.svd(sequential_sum(tensors), full_matrices=False)
    return (u * s.mean()) @ vh
