"""mergekit's task-arithmetic family with mergekit's rules (https://github.com/arcee-ai/mergekit,
`merge_methods/generalized_task_arithmetic.py` and `sparsify.py`), for mergekit files run as they are.

Each method is a composition of one sparsifier per task tensor (`magnitude`, `random`, `magnitude_outliers`
or none), an optional L1 rescale, per-task weights, and either a weighted sum or mergekit's sign consensus
(`weaving.merging.tensor_ops.sign_consensus`); everything is per tensor. Per-task parameters are lists, one
number per task vector in order (empty: mergekit's default for every task). docs/methods.md, "mergekit's
methods", states the rules; the methods named without `mergekit_` are the authors' rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from weaving.merging.methods.dare import keep_mask
from weaving.merging.registry import register_method
from weaving.merging.tensor_ops import sign_consensus

DEFAULT_GAMMA = 0.01  # mergekit's default removed top fraction of `magnitude_outliers`
RESCALE_EPS = 1e-7  # below this L1 norm (before or after masking) mergekit does not rescale

Mask = Callable[[int, torch.Tensor, float], torch.Tensor]  # (task, flat tensor, density) -> keep mask


def per_task(values: Sequence[float], num_tasks: int, default: float) -> list[float]:
    return list(values) if values else [default] * num_tasks


COMPUTE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                  "float64": torch.float64}


def prepare_generalized(task_set, **hparams) -> dict[str, torch.dtype]:
    """Check the per-task lists (one number per task vector; densities and gammas in [0, 1]) and return the
    dtype each tensor is merged in: `compute_dtype`, or with "inputs" the dtype the models store it in, as
    mergekit computes (its `dtype`, else the inputs' own)."""
    for name in ("weights", "densities", "gammas"):
        values = hparams.get(name, ())
        if values and len(values) != task_set.num_tasks:
            raise ValueError(f"{name} holds {len(values)} numbers for {task_set.num_tasks} task vectors; give one per "
                             "task vector, in order")
    if not all(0.0 <= d <= 1.0 for d in hparams.get("densities", ())):
        raise ValueError(f"densities are kept fractions and must be in [0, 1], got {list(hparams['densities'])}")
    if not all(0.0 <= g <= 1.0 for g in hparams.get("gammas", ())):
        raise ValueError(f"gammas are removed top fractions and must be in [0, 1], got {list(hparams['gammas'])}")
    name = hparams["compute_dtype"]
    if name != "inputs" and name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be 'inputs' or one of {', '.join(COMPUTE_DTYPES)}, got {name!r}")
    return {key: task_set.stored_dtype(key) if name == "inputs" else COMPUTE_DTYPES[name] for key in task_set.keys}


def magnitudes(flat: torch.Tensor) -> torch.Tensor:
    """The abs values mergekit sorts: in float32 on the CPU (its `w.float()`), in their own dtype elsewhere."""
    values = flat.abs()
    return values.float() if values.device.type == "cpu" else values


def magnitude_mask(flat: torch.Tensor, density: float) -> torch.Tensor:
    """mergekit's `magnitude`: the max(1, int(density*n)) entries of largest abs value (none at density 0),
    chosen by the same `torch.argsort` call as mergekit, so equal abs values at the threshold go the way
    mergekit's go (that sort is not stable: with the same torch, on the same device)."""
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if density > 0:
        keep[torch.argsort(magnitudes(flat), descending=True)[:max(1, int(density * flat.numel()))]] = True
    return keep


def outliers_mask(flat: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """mergekit's `magnitude_outliers`: in ascending abs order (mergekit's `torch.sort`), skip the
    n - int(density*n) - int(gamma*n) smallest (at least 0) and keep the next int(density*n): the
    int(gamma*n) largest are dropped, fewer where the density needs them."""
    n = flat.numel()
    keep_count = int(density * n)
    bottom = max(0, n - keep_count - int(gamma * n))
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.sort(magnitudes(flat), descending=False).indices[bottom:bottom + keep_count]] = True
    return keep


def sparsified(value: torch.Tensor, mask: torch.Tensor | None, rescale: bool) -> torch.Tensor:
    """value * mask; with `rescale`, times |value|_1 / |masked|_1 (mergekit's L1 rescale), unless either
    norm is below 1e-7. No mask: the value unchanged (a density of 1)."""
    if mask is None:
        return value
    masked = value * mask.view(value.shape)
    if not rescale:
        return masked
    before, after = value.abs().sum(), masked.abs().sum()
    return masked if before < RESCALE_EPS or after < RESCALE_EPS else masked * (before / after)


def generalized(tensors: list[torch.Tensor], mask: Mask | None, *, work: torch.dtype, weights: Sequence[float],
                densities: Sequence[float], consensus: bool, normalize: bool, rescale: bool,
                scale: float) -> torch.Tensor:
    """Sparsify each task tensor (`mask`, skipped at density 1), weight, and combine: the weighted sum (divided
    by the sum of the weights with `normalize`, unless that is below 1e-8) or the sign consensus; times
    `scale` (mergekit's `lambda`). Every step runs in `work`, each operation rounded to it as mergekit's own
    arithmetic in its dtype; the result comes back in the tensors' dtype."""
    dtype = tensors[0].dtype
    tensors = [value.to(work) for value in tensors]
    weights = per_task(weights, len(tensors), 1.0)
    densities = per_task(densities, len(tensors), 1.0)
    deltas = [sparsified(value, None if mask is None or density >= 1.0 else mask(task, value.reshape(-1), density),
                         rescale) for task, (value, density) in enumerate(zip(tensors, densities))]
    if consensus:
        merged = sign_consensus(deltas, weights, normalize)
    else:
        stacked = torch.stack(deltas)
        column = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device).view(
            (-1,) + (1,) * (stacked.dim() - 1))
        merged = (stacked * column).sum(dim=0)
        total = column.sum(dim=0)  # in the tensors' dtype, as mergekit
        if normalize and abs(float(total)) >= 1e-8:
            merged = merged / total
    return (merged if scale == 1.0 else merged * scale).to(dtype)


def _magnitude(task: int, flat: torch.Tensor, density: float) -> torch.Tensor:
    return magnitude_mask(flat, density)


@register_method("mergekit_task_arithmetic", prepare=prepare_generalized, compared=False)
def mergekit_task_arithmetic(tensors: list[torch.Tensor], *, key: str, stats: dict, weights: tuple = (),
                             normalize: bool = False, scale: float = 1.0, compute_dtype: str = "inputs") -> torch.Tensor:
    return generalized(tensors, None, work=stats[key], weights=weights, densities=(), consensus=False,
                       normalize=normalize, rescale=False, scale=scale)


@register_method("mergekit_ties", prepare=prepare_generalized, compared=False)
def mergekit_ties(tensors: list[torch.Tensor], *, key: str, stats: dict, weights: tuple = (), densities: tuple = (),
                  normalize: bool = True, rescale: bool = False, scale: float = 1.0,
                  compute_dtype: str = "inputs") -> torch.Tensor:
    return generalized(tensors, _magnitude, work=stats[key], weights=weights, densities=densities, consensus=True,
                       normalize=normalize, rescale=rescale, scale=scale)


@register_method("mergekit_dare_ties", prepare=prepare_generalized, random=True, compared=False)
def mergekit_dare_ties(tensors: list[torch.Tensor], *, key: str, stats: dict, seed: int, weights: tuple = (),
                       densities: tuple = (), normalize: bool = False, rescale: bool = True, scale: float = 1.0,
                       compute_dtype: str = "inputs") -> torch.Tensor:
    # DARE's own seeded draws (`weaving.merging.methods.dare.keep_mask`), each entry kept with probability density
    return generalized(tensors, lambda task, flat, density: keep_mask(flat, task, seed, 1.0 - density),
                       work=stats[key], weights=weights, densities=densities, consensus=True, normalize=normalize,
                       rescale=rescale, scale=scale)


def _breadcrumbs(tensors: list[torch.Tensor], gammas: Sequence[float], **settings) -> torch.Tensor:
    """mergekit's breadcrumbs methods: `magnitude_outliers` with each task's gamma."""
    gammas = per_task(gammas, len(tensors), DEFAULT_GAMMA)
    return generalized(tensors, lambda task, flat, density: outliers_mask(flat, density, gammas[task]), **settings)


@register_method("mergekit_breadcrumbs", prepare=prepare_generalized, compared=False)
def mergekit_breadcrumbs(tensors: list[torch.Tensor], *, key: str, stats: dict, weights: tuple = (),
                         densities: tuple = (), gammas: tuple = (), normalize: bool = False, rescale: bool = False,
                         scale: float = 1.0, compute_dtype: str = "inputs") -> torch.Tensor:
    return _breadcrumbs(tensors, gammas, work=stats[key], weights=weights, densities=densities, consensus=False,
                        normalize=normalize, rescale=rescale, scale=scale)


@register_method("mergekit_breadcrumbs_ties", prepare=prepare_generalized, compared=False)
def mergekit_breadcrumbs_ties(tensors: list[torch.Tensor], *, key: str, stats: dict, weights: tuple = (),
                              densities: tuple = (), gammas: tuple = (), normalize: bool = False,
                              rescale: bool = False, scale: float = 1.0, compute_dtype: str = "inputs") -> torch.Tensor:
    return _breadcrumbs(tensors, gammas, work=stats[key], weights=weights, densities=densities, consensus=True,
                        normalize=normalize, rescale=rescale, scale=scale)
