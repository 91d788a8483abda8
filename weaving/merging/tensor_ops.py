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


def sorted_values(values: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
    """[sorted(values)[i] for i in indices] for a 1-D tensor (Python index rules, negative wraps).

    On the CPU, `kthvalue` selects each one without sorting. On a GPU, `kthvalue` works on one slice with
    one thread block and takes seconds for a whole task vector, while one device-wide sort takes
    milliseconds and serves every index; both give the same values.
    """
    d = values.numel()
    if values.device.type == "cpu":
        return [torch.kthvalue(values, i % d + 1).values for i in indices]
    ordered = torch.sort(values).values
    return [ordered[i % d] for i in indices]


def sorted_value(values: torch.Tensor, index: int) -> torch.Tensor:
    """sorted(values)[index] for a 1-D tensor (Python index rules, negative wraps)."""
    return sorted_values(values, [index])[0]


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest entry (1-based) of a 1-D tensor."""
    return sorted_value(values, k - 1)
