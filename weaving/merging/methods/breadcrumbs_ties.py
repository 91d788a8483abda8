"""Breadcrumbs-TIES (Davari & Belilovsky, 2024, on TIES-Merging by Yadav et al., 2023): Model
Breadcrumbs' mask of each task vector (drop the largest and the smallest entries per row, or per tensor),
then TIES' sign election and disjoint mean. The composition mergekit offers as `breadcrumbs_ties` (see
docs/methods.md; a mergekit file runs mergekit's own rules: `mergekit_breadcrumbs_ties`).
"""

from __future__ import annotations

import torch

from weaving.merging.methods.breadcrumbs import breadcrumbs_sparsify, check_breadcrumbs
from weaving.merging.registry import register_method
from weaving.merging.tensor_ops import sign_consensus


@register_method("breadcrumbs_ties", prepare=check_breadcrumbs)
def breadcrumbs_ties(tensors: list[torch.Tensor], *, key: str, stats: None, beta: float = 0.15,
                     gamma: float = 0.006, per_tensor: bool = False) -> torch.Tensor:
    return sign_consensus([breadcrumbs_sparsify(value, beta, gamma, per_tensor) for value in tensors])
