"""Iso-CTS (Marczak et al., 2025): isotropic merging in a common plus task-specific subspaces."""

from __future__ import annotations

import torch

from weaving.merging.registry import register_method
from weaving.merging.tensor_ops import is_svd_matrix, polar_factor, running_mean, sequential_sum


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
    u_common = u[:, :common]
    u_cat = tensors[0].new_zeros(m, k)
    s_cat = tensors[0].new_zeros(k)
    v_cat = tensors[0].new_zeros(k, n)
    for i, value in enumerate(tensors):
        specific = value - u_common @ (u_common.T @ value)  # project the common subspace out
        u_t, s_t, vh_t = torch.linalg.svd(specific, full_matrices=False)
        block = slice(i * rank, (i + 1) * rank)
        u_cat[:, block] = u_t[:, :rank]
        s_cat[block] = s_t[:rank]
        v_cat[block, :] = vh_t[:rank, :]
    tail = slice(num_tasks * rank, num_tasks * rank + common)  # task blocks first, common block last
    u_cat[:, tail] = u_common
    s_cat[tail] = s[:common]
    v_cat[tail, :] = vh[:common, :]
    return (polar_factor(u_cat) * s_cat.mean()) @ polar_factor(v_cat)
