"""Model Breadcrumbs (Davari & Belilovsky, ECCV 2024, arXiv:2312.06795): drop the largest and the smallest
entries of each task vector, row by row, then sum over tasks.

`beta` is the kept fraction of each row, `gamma` the removed top (outlier) fraction. Defaults follow the
official code, https://github.com/rezazzr/breadcrumbs (`find_best_hyperparam.py`, method "middle_keep",
`TaskVectorMiddleKeep(top_k_keep=beta, top_k_remove=gamma)` in `src/task_vectors.py`): its CLIP ViT search
over the eight vision tasks starts from beta=0.15, gamma=0.006 and searches beta in [0.05, 0.20] and gamma
in [0.001, 0.01] (the [0.05, 0.4] range in that file is the `topk_*` methods'). (The paper's own numbers could not be checked here; an earlier default gamma=0.1 lay ten
times outside the authors' search range for gamma.) Per row of 768 entries: drop 4, keep the next 115.
"""

from __future__ import annotations

import torch

from weaving.merging.registry import register_method
from weaving.merging.tensor_ops import magnitude_rank_mask


def check_breadcrumbs(task_set, *, beta: float, gamma: float, per_tensor: bool) -> None:
    if not (0.0 <= beta <= 1.0 and 0.0 <= gamma <= 1.0):
        raise ValueError(f"method 'breadcrumbs': beta and gamma must be in [0, 1], got beta={beta}, gamma={gamma}")


def breadcrumbs_mask(value: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """Keep, along the last dimension, the entries ranked int(n*gamma) .. int(n*gamma)+int(n*beta)-1 by
    descending abs value (the top int(n*gamma) are outliers). Equal abs values rank in index order."""
    n = value.shape[-1]
    top = int(n * gamma)
    return magnitude_rank_mask(value, top, top + int(n * beta))


def breadcrumbs_sparsify(value: torch.Tensor, beta: float, gamma: float, per_tensor: bool) -> torch.Tensor:
    """One task's tensor masked per row (the authors' rule) or, with `per_tensor`, over all its entries
    ranked together (mergekit's); 0-dim tensors pass unchanged."""
    if value.dim() == 0:
        return value
    if per_tensor:
        return value * breadcrumbs_mask(value.reshape(-1), beta, gamma).view(value.shape)
    return value * breadcrumbs_mask(value, beta, gamma)


@register_method("breadcrumbs", prepare=check_breadcrumbs)
def breadcrumbs(tensors: list[torch.Tensor], *, key: str, stats: None, beta: float = 0.15, gamma: float = 0.006,
                per_tensor: bool = False) -> torch.Tensor:
    merged = torch.zeros_like(tensors[0])
    for value in tensors:
        merged += breadcrumbs_sparsify(value, beta, gamma, per_tensor)
    return merged
