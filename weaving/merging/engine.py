"""The merge engine: runs a registered method over a state dict tensor by tensor on one device.

It owns what methods should not care about: reading inputs lazily, validation, the device and dtype,
the statistics pass of methods with global thresholds, seeding, progress bars and the output dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from weaving.merging.registry import MergeMethod, derive_seed, get_method
from weaving.merging.staging import make_task_set
from weaving.merging.task_set import TaskVectorSet
from weaving.merging.task_vectors import StateDictLike, TensorSource, as_source, check_finite, validate_inputs


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


def open_inputs(
    pretrained: StateDictLike | TensorSource,
    task_vectors: Sequence[StateDictLike | TensorSource],
    device: str | torch.device | None,
) -> MergeInputs:
    if isinstance(task_vectors, (str, bytes)) or not isinstance(task_vectors, Sequence):
        raise ValueError("task_vectors must be a list of state dicts or safetensors paths")
    base = as_source(pretrained, "pretrained")
    sources = [as_source(tv, f"task_vectors[{i}]") for i, tv in enumerate(task_vectors)]
    keys = validate_inputs(base, sources)
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
    base, task_set = inputs.base, inputs.task_set
    merged_keys = set(task_set.keys)
    output: dict[str, torch.Tensor] = {}
    bar = tqdm(total=len(task_set.keys), desc=description, unit="tensor", disable=None if progress is None else not progress)
    with torch.no_grad():
        for key in base.keys():
            value = base.get(key)
            if key not in merged_keys:
                output[key] = value.clone()
                continue
            theta = check_finite(value.to(task_set.device, task_set.dtype(key)), base.label, key)
            output[key] = (theta + delta_for(key)).to(device="cpu", dtype=value.dtype)
            bar.update(1)
    bar.close()
    return output


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
    spec = get_method(method)
    hparams = spec.resolve(hparams)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not torch.isfinite(torch.tensor(float(lam))):
        raise ValueError(f"lam must be a finite number, got {lam!r}")
    inputs = open_inputs(pretrained, task_vectors, device)
    with torch.no_grad():
        stats = prepare_method(spec, inputs.task_set, hparams)

    def delta_for(key: str) -> torch.Tensor:
        g = spec.merge(inputs.task_set.tensors(key), key=key, stats=stats, **hparams, **method_seed(spec, seed, key))
        return lam * g

    return assemble(inputs, delta_for, f"merge[{method}]", progress)
