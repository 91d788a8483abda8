"""DARE-TIES (Yu et al., 2024, "Language Models are Super Mario", on TIES-Merging by Yadav et al., 2023):
DARE's random drop and rescale of each task vector, then TIES' sign election and disjoint mean.

The composition mergekit offers as `dare_ties`; see docs/methods.md for the exact rule and how it differs
from mergekit's defaults.
"""

from __future__ import annotations

import torch

from weaving.merging.methods.dare import check_dare, drop_and_rescale
from weaving.merging.registry import register_method


def elect_disjoint_mean(sparse: list[torch.Tensor]) -> torch.Tensor:
    """TIES' elect + disjoint mean over already sparsified task tensors.

    s = sign(sum_t x_t) elementwise, +1 where that sum is exactly 0 (mergekit's rule for its composed
    methods, so no statistics pass is needed); mean over tasks of the non-zero entries whose sign is s.
    """
    stacked = torch.stack(sparse)
    sign = torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0).to(stacked.dtype)
    selected = torch.where((torch.sign(stacked) == sign) & (stacked != 0), stacked, torch.zeros_like(stacked))
    count = (selected != 0).sum(dim=0).clamp(min=1)
    return selected.sum(dim=0) / count


@register_method("dare_ties", prepare=check_dare, random=True)
def dare_ties(tensors: list[torch.Tensor], *, key: str, stats: None, seed: int, p: float = 0.1,
              rescale: bool = True) -> torch.Tensor:
    return elect_disjoint_mean([drop_and_rescale(value, task, seed, p, rescale) for task, value in enumerate(tensors)])
