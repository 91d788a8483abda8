"""Breadcrumbs-TIES (Davari & Belilovsky, 2024, on TIES-Merging by Yadav et al., 2023): Model
Breadcrumbs' mask of each task vector (drop the largest and the smallest entries per row), then TIES' sign
election and disjoint mean. The composition mergekit offers as `breadcrumbs_ties` (see docs/methods.md).
"""

from __future__ import annotations

import torch

from weaving.merging.methods.breadcrumbs import breadcrumbs_mask, check_breadcrumbs
from weaving.merging.methods.dare_ties import elect_disjoint_mean
from weaving.merging.registry import register_method


@register_method("breadcrumbs_ties", prepare=check_breadcrumbs)
def breadcrumbs_ties(tensors: list[torch.Tensor], *, key: str, stats: None, beta: float = 0.15,
                     gamma: float = 0.006) -> torch.Tensor:
    sparse = [value if value.dim() == 0 else value * breadcrumbs_mask(value, beta, gamma) for value in tensors]
    return elect_disjoint_mean(sparse)
