"""Task Singular Vectors merging (TSV-M, Gargiulo et al., 2025)."""

from __future__ import annotations

import torch

from weaving.merging.registry import register_method
from weaving.merging.tensor_ops import is_svd_matrix, polar_factor, running_mean


@register_method("tsv")
def tsv(tensors: list[torch.Tensor], *, key: str, stats: None) -> torch.Tensor:
    if not is_svd_matrix(key, tensors[0]):
        return running_mean(tensors)
    num_tasks = len(tensors)
    m, n = tensors[0].shape
    k = min(m, n)
    rank = int(k * (1 / num_tasks))  # the reference code's int(k * sv_reduction), sv_reduction = 1/T
    u_cat = tensors[0].new_zeros(m, k)
    s_cat = tensors[0].new_zeros(k)
    v_cat = tensors[0].new_zeros(k, n)
    for i, value in enumerate(tensors):
        u, s, vh = torch.linalg.svd(value, full_matrices=False)
        block = slice(i * rank, (i + 1) * rank)
        u_cat[:, block] = u[:, :rank]
        s_cat[block] = s[:rank]
        v_cat[block, :] = vh[:rank, :]
    return (polar_factor(u_cat) * s_cat) @ polar_factor(v_cat)
