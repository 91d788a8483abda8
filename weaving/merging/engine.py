"""The merge engine: runs a registered method over a state dict tensor by tensor on one device.

It owns what methods should not care about: reading inputs lazily, validation, the device and dtype,
the statistics pass of methods with global thresholds, seeding, progress bars and the output dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from weaving.merging.distributed import local_task_set
from weaving.merging.registry import MergeMethod, derive_seed, get_method
from weaving.merging.search_space import check_lambda
from weaving.merging.staging import make_task_set
from weaving.merging.summed import summed_merger
from weaving.merging.task_set import TaskVectorSet
from weaving.io.loader import as_source
from weaving.io.source import StateDictLike, TensorSource
from weaving.merging.task_vectors import validate_inputs


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None means CPU; asking for CUDA on a machine without it is a user error, not a silent fallback."""
    if device is None:
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available on this machine; use device='cpu'")
    return resolved


@dataclass
class MergeInputs:
    base: TensorSource
    task_set: TaskVectorSet
    owner: dict[str, int] | None = None  # distributed: the rank that owns each output tensor
    rank: int = 0
    # A faster way to theta + delta in the output dtype, when the method has one (None for a key: the
    # plain path); see weaving.merging.summed.
    merged_for: Callable[[str, torch.dtype], torch.Tensor | None] | None = None


def open_inputs(
    pretrained: StateDictLike | TensorSource,
    task_vectors: Sequence[StateDictLike | TensorSource],
    device: str | torch.device | None,
    distributed: bool = False,
) -> MergeInputs:
    """Check the inputs and open them lazily; `distributed`: keep only this rank's tensors (see
    weaving.merging.distributed), with statistics reduced over every rank."""
    if isinstance(task_vectors, (str, bytes)) or not isinstance(task_vectors, Sequence):
        raise ValueError("task_vectors must be a list of state dicts or safetensors paths")
    base = as_source(pretrained, "pretrained")
    sources = [as_source(tv, f"task_vectors[{i}]") for i, tv in enumerate(task_vectors)]
    merged = set(validate_inputs(base, sources))
    keys = [key for key in base.keys() if key in merged]  # the output's order: staged reads predict it
    if distributed:
        task_set, owner, rank = local_task_set(base, sources, keys, resolve_device(device))
        return MergeInputs(base, task_set, owner=owner, rank=rank)
    return MergeInputs(base, make_task_set(sources, keys, resolve_device(device)))


def method_seed(method: MergeMethod, seed: int, *parts: object) -> dict[str, int]:
    """The `seed` keyword for random methods (one independent stream per tensor and member)."""
    return {"seed": derive_seed(seed, *parts)} if method.random else {}


def prepare_method(method: MergeMethod, task_set: TaskVectorSet, hparams: dict[str, Any]) -> Any:
    return method.prepare(task_set, **hparams) if method.prepare is not None else None


def assemble(inputs: MergeInputs, delta_for: Callable[[str], torch.Tensor], description: str, progress: bool | None) -> dict[str, torch.Tensor]:
    """theta_pre + delta for every merged key (in the pretrained's key order), other keys unchanged.

    Output tensors are on the CPU, in the pretrained tensor's dtype.
    """
    return dict(iter_assemble(inputs, delta_for, description, progress))


def iter_assemble(inputs: MergeInputs, delta_for: Callable[[str], torch.Tensor], description: str,
                  progress: bool | None, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """`assemble` one tensor at a time, so a writer can stream them to disk; `dtype` overrides the output
    dtype of every floating-point tensor (default: the pretrained tensor's)."""
    base, task_set = inputs.base, inputs.task_set
    merged_keys = set(task_set.keys)
    bar = tqdm(total=len(task_set.keys), desc=description, unit="tensor", disable=None if progress is None else not progress)
    try:
        for key in base.keys():
            if inputs.owner is not None and inputs.owner[key] != inputs.rank:
                continue
            if key not in merged_keys:
                value = base.get(key)
                value = value.to(dtype) if dtype is not None and value.is_floating_point() else value.clone()
                yield key, check_finite(key, value, merged=False)
                continue
            with torch.no_grad():
                out_dtype = dtype or base.dtype(key)
                merged = inputs.merged_for(key, out_dtype) if inputs.merged_for is not None else None
                if merged is None:
                    theta = base.get_as(key, task_set.dtype(key)).to(task_set.device)  # a LastReadSource has it already
                    merged = (theta + delta_for(key)).to(device="cpu", dtype=out_dtype)
                    del theta
            bar.update(1)  # before the yield: a writer takes the last tensor and never resumes this generator
            yield key, check_finite(key, merged)
    finally:
        bar.close()


def check_finite(key: str, value: torch.Tensor, merged: bool = True) -> torch.Tensor:
    """`value`, unless it holds Inf or NaN: then a one-line ValueError naming the tensor, its dtype and the
    likely cause. Inputs are checked finite, so a non-finite output overflowed: the output dtype's range
    (float16, bfloat16) or the computation's (a lambda or weight too large). Every output passes here
    before a writer or the Python API sees it, so none is written or returned."""
    if not value.is_floating_point() or bool(torch.isfinite(value).all()):
        return value
    largest = torch.finfo(value.dtype).max
    if not merged:
        cause = f"the pretrained values exceed {value.dtype}'s range (largest {largest:.4g}); write a wider dtype"
    elif value.dtype in (torch.float16, torch.bfloat16):
        cause = (f"the merged values overflow {str(value.dtype).removeprefix('torch.')} (largest {largest:.4g}): "
                 "write a wider dtype (--dtype float32) or use a smaller lambda or weights")
    else:
        cause = f"overflow: a lambda or weight too large for {str(value.dtype).removeprefix('torch.')} (largest {largest:.4g})"
    raise ValueError(f"merged tensor {key!r} ({str(value.dtype).removeprefix('torch.')}) is not finite: {cause}; "
                     "nothing was written")


def output_layout(inputs: MergeInputs, dtype: torch.dtype | None = None) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(name, shape, dtype) of every output tensor, in output order, known before any merging."""
    return inputs.base.layout(dtype)


def merge(
    pretrained: StateDictLike,
    task_vectors: Sequence[StateDictLike],
    method: str,
    lam: float = 1.0,
    *,
    device: str | torch.device | None = None,
    seed: int = 0,
    **hparams: Any,
) -> dict[str, torch.Tensor]:
    """Merge task vectors with `method` and return the full weights `pretrained + lam * g`.

    `pretrained` is a mapping name -> tensor or a safetensors path; `task_vectors` a sequence of such
    (deltas theta_t - theta_pre). `hparams` are the method's hyper-parameters (docs/methods.md).
    """
    return run_merge(pretrained, task_vectors, method, lam, device=device, seed=seed, progress=None, hparams=hparams)


def run_merge(pretrained, task_vectors, method: str, lam: float, *, device, seed: int, progress: bool | None, hparams: dict[str, Any]) -> dict[str, torch.Tensor]:
    inputs, delta_for, description = prepare_merge(pretrained, task_vectors, method, lam, device=device, seed=seed,
                                                   hparams=hparams)
    return assemble(inputs, delta_for, description, progress)


def prepare_merge(pretrained, task_vectors, method: str, lam: float, *, device, seed: int,
                  hparams: dict[str, Any], distributed: bool = False) -> tuple[MergeInputs, Callable[[str], torch.Tensor], str]:
    """Check everything and run the statistics pass; return the inputs and `lam * g` per tensor."""
    spec = get_method(method)
    hparams = spec.resolve(hparams)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise ValueError(f"lam must be a finite number, got {lam!r}")
    lam = check_lambda(lam, torch.float64)
    inputs = open_inputs(pretrained, task_vectors, device, distributed)
    for dtype in {inputs.task_set.dtype(key) for key in inputs.task_set.keys}:
        check_lambda(lam, dtype)
    with torch.no_grad():
        stats = prepare_method(spec, inputs.task_set, hparams)

    def delta_for(key: str) -> torch.Tensor:
        g = spec.merge(inputs.task_set.tensors(key), key=key, stats=stats, **hparams, **method_seed(spec, seed, key))
        return g if lam == 1.0 else lam * g  # 1.0 * g is g, bit for bit

    if spec.sums_tasks:
        inputs.merged_for = summed_merger(inputs.base, inputs.task_set, float(lam))
    return inputs, delta_for, f"merge[{method}]"
