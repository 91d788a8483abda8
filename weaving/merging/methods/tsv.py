"""Task Singular Vectors merging (TSV-M, Gargiulo et al., 2025)."""

from __future__ import annotations

import torch

from weaving.merging.registry import register_method
from weaving.merging.spectral import polar_factors, top_singular_triplets
from weaving.merging.tensor_ops import is_svd_matrix, running_mean


@register_method("tsv")
def tsv(tensors: list[torch.Tensor], *, key: str, stats: None) -> torch.Tensor:
    """Each task's top r = int(min(m, n) / T) singular triplets, concatenated task by task; U and V are
    replaced by their polar factors. Slots left unused when T does not divide min(m, n) hold zero singular
    values, so they add nothing and are not formed."""
    if not is_svd_matrix(key, tensors[0]):
        return running_mean(tensors)
    num_tasks = len(tensors)
    m, n = tensors[0].shape
    rank = int(min(m, n) * (1 / num_tasks))  # the reference code's int(k * sv_reduction), sv_reduction = 1/T
    if rank == 0:
        return torch.zeros_like(tensors[0])
    u, s, vh = top_singular_triplets(torch.stack(tensors), rank)  # (T, m, r), (T, r), (T, r, n)
    u_cat = u.permute(1, 0, 2).reshape(m, num_tasks * rank)  # task blocks side by side
    v_cat = vh.reshape(num_tasks * rank, n)
    u_orth, v_orth_t = polar_factors(u_cat, v_cat.T)
    return (u_orth * s.reshape(-1)) @ v_orth_t.T
