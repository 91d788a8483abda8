"""Batched factorizations for the SVD-based merge methods (tsv, iso_cts), pure tensor functions.

All T task matrices of one layer are factored in one batched call, and only the singular triplets a
method keeps are formed: the top r triplets of an m x n matrix come from the eigendecomposition of its
smaller Gram matrix (min(m, n) squared), which costs a fraction of a full SVD when r is small.
"""

from __future__ import annotations

import torch


def top_singular_triplets(stack: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top `rank` singular triplets of each matrix of a (T, m, n) batch, largest first.

    Returns U (T, m, r), S (T, r) and Vh (T, r, n) with A_t ~ U_t diag(S_t) Vh_t on the top-r subspace.
    The singular vectors of the smaller side are eigenvectors of the Gram matrix; those of the other side
    are A v / ||A v||, and the singular values are ||A v|| (not square roots of eigenvalues, which lose
    half the digits of small values). Signs may differ from `torch.linalg.svd`'s; products U S Vh do not.
    """
    tall = stack.shape[-2] >= stack.shape[-1]
    matrices = stack if tall else stack.mT
    _, vectors = torch.linalg.eigh(matrices.mT @ matrices)  # ascending eigenvalues
    right = vectors[..., -rank:].flip(-1) if rank > 0 else vectors[..., :0]
    left = matrices @ right
    values = torch.linalg.vector_norm(left, dim=-2)
    left = left / torch.where(values > 0, values, torch.ones_like(values)).unsqueeze(-2)
    if tall:
        return left, values, right.mT
    return right, values, left.mT


def polar_factors(*matrices: torch.Tensor) -> list[torch.Tensor]:
    """The orthogonal polar factor P Q^T of each matrix = P S Q^T; matrices of one shape share one batched SVD."""
    result: list[torch.Tensor | None] = [None] * len(matrices)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, matrix in enumerate(matrices):
        by_shape.setdefault(tuple(matrix.shape), []).append(i)
    for indices in by_shape.values():
        left, _, right = torch.linalg.svd(torch.stack([matrices[i] for i in indices]), full_matrices=False)
        for i, factor in zip(indices, left @ right):
            result[i] = factor
    return result
