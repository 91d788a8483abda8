"""DARE-TIES (Yu et al., 2024, "Language Models are Super Mario", on TIES-Merging by Yadav et al., 2023):
DARE's random drop and rescale of each task vector, then TIES' sign election and disjoint mean.

The composition mergekit offers as `dare_ties`; see docs/methods.md for the exact rule and how it differs
from mergekit's defaults (a mergekit file runs mergekit's own rules: `mergekit_dare_ties`).
"""

from __future__ import annotations

import torch

from weaving.merging.methods.dare import check_dare, drop_and_rescale
from weaving.merging.registry import register_method
from weaving.merging.tensor_ops import sign_consensus


@register_method("dare_ties", prepare=check_dare, random=True)
def dare_ties(tensors: list[torch.Tensor], *, key: str, stats: None, seed: int, p: float = 0.1,
              rescale: bool = True) -> torch.Tensor:
    return sign_consensus([drop_and_rescale(value, task, seed, p, rescale) for task, value in enumerate(tensors)])
