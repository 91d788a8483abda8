"""Small tensor helpers shared by merge methods (pure functions, any device and dtype)."""

from __future__ import annotations

import torch


def sequential_sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    """tau_1 + tau_2 + ... in list order (the order the original implementations add in)."""
    total = tensors[0].clone()
    for value in tensors[1:]:
        total += value
    return total


def running_mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Mean over tasks, accumulated as m += (x - m) / (i + 1) like the TSV and ISO reference code."""
    mean = tensors[0].clone()
    for i, value in enumerate(tensors[1:], start=1):
        mean += (value - mean) / (i + 1)
    return mean


def is_svd_matrix(key: str, value: torch.Tensor) -> bool:
    """Tensors merged through their SVD by tsv / iso_c / iso_cts: 2-D, and not a text projection."""
    return value.dim() == 2 and "text_projection" not in key


def polar_factor(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor P Q^T of matrix = P S Q^T."""
    left, _, right = torch.linalg.svd(matrix, full_matrices=False)
    return left @ right


def sorted_value(values: torch.Tensor, index: int) -> torch.Tensor:
    """sorted(values)[index] for a 1-D tensor (Python index rules, negative wraps), without a full sort."""
    d = values.numel()
    return torch.kthvalue(values, index % d + 1).values
