"""Iso-CTS (Marczak et al., 2025): isotropic merging in a common plus task-specific subspaces."""

from __future__ import annotations

import torch

from weaving.merging.registry import register_method
from weaving.merging.spectral import nonzero_singular_values, polar_factors, top_singular_triplets
from weaving.merging.tensor_ops import is_svd_matrix, running_mean, sequential_sum


def check_iso_cts(task_set, *, common_fraction: float) -> None:
    if not 0.0 <= common_fraction <= 1.0:
        raise ValueError(f"method 'iso_cts': common_fraction must be in [0, 1], got {common_fraction}")


def subspace_sizes(k: int, num_tasks: int, common_fraction: float) -> tuple[int, int]:
    """(common directions c, directions per task r) with c + T*r = k, as in the reference code:
    c = int(k*f), then adjusted so that k - c = round((k - c)/T) * T (Python's round)."""
    common = int(k * common_fraction)
    task_total = round((k - common) / num_tasks) * num_tasks
    if task_total > k:  # only for tiny k or f: keep the common size non-negative
        task_total = (k // num_tasks) * num_tasks
    return k - task_total, task_total // num_tasks


@register_method("iso_cts", prepare=check_iso_cts)
def iso_cts(tensors: list[torch.Tensor], *, key: str, stats: None, common_fraction: float = 0.8) -> torch.Tensor:
    if not is_svd_matrix(key, tensors[0]):
        return running_mean(tensors)
    num_tasks = len(tensors)
    m, n = tensors[0].shape
    k = min(m, n)
    common, rank = subspace_sizes(k, num_tasks, common_fraction)
    u, s, vh = torch.linalg.svd(sequential_sum(tensors), full_matrices=False)
    # The common subspace holds the sum's directions of non-zero singular value only (weaving.merging.spectral)
    common = min(common, int(nonzero_singular_values(s, (m, n)).sum()))
    u_common = u[:, :common]
    u_blocks, s_blocks, v_blocks = [], [], []
    if rank > 0:
        stack = torch.stack(tensors)
        scale = torch.linalg.vector_norm(stack, dim=(-2, -1))  # what is left after projecting is zero against this
        if m <= n:  # u is square: the common subspace's complement is spanned by u's other k - c columns
            complement = u[:, common:]
            u_t, s_t, vh_t = top_singular_triplets(complement.T @ stack, rank, scale)
            u_t = complement @ u_t
        else:  # project the common subspace out of each task matrix (all T at once)
            u_t, s_t, vh_t = top_singular_triplets(stack - u_common @ (u_common.T @ stack), rank, scale)
        u_blocks.append(u_t.permute(1, 0, 2).reshape(m, num_tasks * rank))
        s_blocks.append(s_t.reshape(-1))
        v_blocks.append(vh_t.reshape(num_tasks * rank, n))
    u_cat = torch.cat(u_blocks + [u_common], dim=1)  # task blocks first, common block last
    s_cat = torch.cat(s_blocks + [s[:common]])
    v_cat = torch.cat(v_blocks + [vh[:common, :]], dim=0)
    kept = s_cat[s_cat > 0]  # dropped directions (zero singular value) do not lower the mean
    if kept.numel() == 0:
        return torch.zeros_like(tensors[0])
    u_orth, v_orth_t = polar_factors(u_cat, v_cat.T)
    return (u_orth * kept.mean()) @ v_orth_t.T
