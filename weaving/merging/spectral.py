"""Batched factorizations for the SVD-based merge methods (tsv, iso_c, iso_cts), pure tensor functions.

All T task matrices of one layer are factored in one batched call, and only the singular triplets a
method keeps are formed: the top r triplets of an m x n matrix come from the eigendecomposition of its
smaller Gram matrix (min(m, n) squared), which costs a fraction of a full SVD when r is small.

Directions of zero singular value carry nothing and are dropped everywhere: a rank-deficient matrix
(a LoRA-style delta, a zero task vector) has no singular vectors there, only an arbitrary completion, and
that completion must not leak into an orthogonalization. "Zero" is the numerical rank rule of
`torch.linalg.matrix_rank`: at most max(m, n) * eps(dtype) * the largest singular value.
"""

from __future__ import annotations

import torch


def nonzero_singular_values(values: torch.Tensor, shape: torch.Size | tuple[int, ...],
                            scale: torch.Tensor | None = None) -> torch.Tensor:
    """Which singular values (..., k), largest first along the last dimension, of matrices of `shape`
    are numerically non-zero (a boolean mask of the same shape). Zero is measured against `scale` (...,),
    by default each matrix's largest singular value."""
    largest = (values[..., :1] if values.shape[-1] else values) if scale is None else scale.unsqueeze(-1)
    tolerance = largest * max(shape[-2:]) * torch.finfo(values.dtype).eps
    return values > tolerance


def top_singular_triplets(stack: torch.Tensor, rank: int,
                          scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top `rank` singular triplets of each matrix of a (T, m, n) batch, largest first.

    Returns U (T, m, r), S (T, r) and Vh (T, r, n) with A_t ~ U_t diag(S_t) Vh_t on the top-r subspace.
    The singular vectors of the smaller side are eigenvectors of the Gram matrix; those of the other side
    are A v / ||A v||, and the singular values are ||A v|| (not square roots of eigenvalues, which lose
    half the digits of small values). Signs may differ from `torch.linalg.svd`'s; products U S Vh do not.
    Triplets of zero singular value (a matrix of rank below `rank`) are all zero: A v is then rounding
    noise, and normalizing it would invent a direction. `scale` (T,) measures zero for matrices that are
    what is left of larger ones (a projection), whose own largest value may itself be rounding noise.
    """
    tall = stack.shape[-2] >= stack.shape[-1]
    matrices = stack if tall else stack.mT
    _, vectors = torch.linalg.eigh(matrices.mT @ matrices)  # ascending eigenvalues
    right = vectors[..., -rank:].flip(-1) if rank > 0 else vectors[..., :0]
    left = matrices @ right
    values = torch.linalg.vector_norm(left, dim=-2)
    keep = nonzero_singular_values(values, stack.shape, scale)
    values = values * keep
    left = left * (keep / torch.where(keep, values, torch.ones_like(values))).unsqueeze(-2)
    right = right * keep.unsqueeze(-2)
    if tall:
        return left, values, right.mT
    return right, values, left.mT


def polar_factors(*matrices: torch.Tensor) -> list[torch.Tensor]:
    """The orthogonal polar factor P Q^T of each matrix = P S Q^T, over its non-zero singular values only
    (a matrix with zero or dependent columns keeps them zero or shared, not completed by arbitrary
    directions); matrices of one shape share one batched SVD."""
    result: list[torch.Tensor | None] = [None] * len(matrices)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, matrix in enumerate(matrices):
        by_shape.setdefault(tuple(matrix.shape), []).append(i)
    for shape, indices in by_shape.items():
        left, values, right = torch.linalg.svd(torch.stack([matrices[i] for i in indices]), full_matrices=False)
        left = left * nonzero_singular_values(values, shape).unsqueeze(-2)
        for i, factor in zip(indices, left @ right):
            result[i] = factor
    return result


def isotropic(matrix: torch.Tensor) -> torch.Tensor:
    """mean(S) * U V^T of matrix = U S V^T over its non-zero singular values (zero for a zero matrix):
    the spectrum flattened to its mean, as Iso-C does, on the matrix's own column and row spaces."""
    left, values, right = torch.linalg.svd(matrix, full_matrices=False)
    keep = nonzero_singular_values(values, matrix.shape)
    count = int(keep.sum())
    if count == 0:
        return torch.zeros_like(matrix)
    return (left[:, :count] * values[:count].mean()) @ right[:count]
