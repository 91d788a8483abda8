"""Model Breadcrumbs (Davari & Belilovsky, 2024): drop the largest and the smallest entries per row."""

from __future__ import annotations

import torch

from weaving.merging.registry import register_method


def check_breadcrumbs(task_set, *, beta: float, gamma: float) -> None:
    if not (0.0 <= beta <= 1.0 and 0.0 <= gamma <= 1.0):
        raise ValueError(f"method 'breadcrumbs': beta and gamma must be in [0, 1], got beta={beta}, gamma={gamma}")


def breadcrumbs_mask(value: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """Keep, along the last dimension, the entries ranked int(n*gamma) .. int(n*gamma)+int(n*beta)-1 by
    descending abs value (the top int(n*gamma) are outliers). Equal abs values rank in index order."""
    n = value.shape[-1]
    top, keep = int(n * gamma), int(n * beta)
    order = torch.sort(value.abs(), dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(n, device=value.device).expand_as(order)
    ranks.scatter_(-1, order, positions)
    return (ranks >= top) & (ranks < top + keep)


@register_method("breadcrumbs", prepare=check_breadcrumbs)
def breadcrumbs(tensors: list[torch.Tensor], *, key: str, stats: None, beta: float = 0.2, gamma: float = 0.1) -> torch.Tensor:
    merged = torch.zeros_like(tensors[0])
    for value in tensors:
        if value.dim() == 0:
            merged += value
        else:
            merged += value * breadcrumbs_mask(value, beta, gamma)
    return merged
