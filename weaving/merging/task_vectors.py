"""Read, write and validate task vectors and state dicts stored as safetensors.

A `TensorSource` gives lazy, per-tensor access to one state dict (an in-memory mapping or a safetensors
file), so the merge engine never holds more than the tensors it is working on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import torch
from safetensors import SafetensorError, safe_open

from weaving.atomic import atomic_save_safetensors, atomic_write_text

StateDictLike = Union[Mapping[str, torch.Tensor], str, os.PathLike]

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class TensorSource:
    """Lazy view of one state dict: names, shapes and dtypes up front, tensor data on demand."""

    def __init__(self, source: StateDictLike, label: str | None = None):
        if isinstance(source, Mapping):
            for key, value in source.items():
                if not isinstance(value, torch.Tensor):
                    raise ValueError(f"{label or 'state dict'}: key {key!r} is a {type(value).__name__}, not a tensor")
            self._tensors: Mapping[str, torch.Tensor] | None = source
            self._file = None
            self.path: Path | None = None  # a safetensors file's path (staged reads go straight to it)
            self.label = label or "state dict"
            self._shapes = {k: tuple(v.shape) for k, v in source.items()}
            self._dtypes = {k: v.dtype for k, v in source.items()}
            self.metadata: dict[str, str] = {}
            return
        path = Path(source)
        self.path = path
        self.label = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected a safetensors state dict)")
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
            keys = list(handle.keys())
            self._shapes, self._dtypes = {}, {}
            for key in keys:
                sl = handle.get_slice(key)
                self._shapes[key] = tuple(sl.get_shape())
                self._dtypes[key] = _DTYPES.get(sl.get_dtype()) or torch.uint8
            self.metadata = dict(handle.metadata() or {})
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
        self._tensors = None
        self._file = handle

    def keys(self) -> list[str]:
        return list(self._shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def dtype(self, key: str) -> torch.dtype:
        return self._dtypes[key]

    def numel(self) -> int:
        total = 0
        for shape in self._shapes.values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    def get(self, key: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[key]
        try:
            return self._file.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as error:
            raise ValueError(f"{self.label}: cannot read tensor {key!r} ({error})") from None

    def view(self, key: str) -> torch.Tensor:
        """`get(key)` without a copy where the storage allows it (a memory map of a file): for reading only."""
        return self.get(key)

    def get_as(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        """`get(key)` converted to `dtype` and checked for NaN / Inf (a one-line ValueError)."""
        return check_finite(self.get(key).to(dtype), self.label, key)


def as_source(source: StateDictLike | TensorSource, label: str) -> TensorSource:
    return source if isinstance(source, TensorSource) else TensorSource(source, label)


def check_finite(tensor: torch.Tensor, label: str, key: str) -> torch.Tensor:
    """Raise a one-line ValueError when a tensor holds NaN or Inf."""
    # One fast reduction: a NaN or Inf anywhere makes the sum non-finite. Only then (or on an overflowing
    # sum of huge finite values) pay for the elementwise check.
    if bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all()):
        return tensor
    raise ValueError(f"{label}: tensor {key!r} contains NaN or Inf values; fix or drop that checkpoint")


def validate_inputs(pretrained: TensorSource, task_vectors: Sequence[TensorSource]) -> list[str]:
    """Check that all task vectors share keys, shapes and floating dtypes with each other and the base.

    Returns the merged keys (those of the task vectors, in the first one's order). Keys present only in
    `pretrained` pass through the merge unchanged.
    """
    if len(task_vectors) == 0:
        raise ValueError("no task vectors given: pass at least one task vector or fine-tuned checkpoint")
    first = task_vectors[0]
    keys = first.keys()
    if not keys:
        raise ValueError(f"{first.label}: holds no tensors")
    key_set = set(keys)
    for tv in task_vectors[1:]:
        other = set(tv.keys())
        if other != key_set:
            missing = sorted(key_set - other)
            extra = sorted(other - key_set)
            detail = f"missing key {missing[0]!r}" if missing else f"unexpected key {extra[0]!r}"
            raise ValueError(
                f"{tv.label}: {detail} (compared with {first.label}); all task vectors must have the same keys"
            )
    for key in keys:
        shape = first.shape(key)
        for tv in task_vectors:
            if not tv.dtype(key).is_floating_point:
                raise ValueError(f"{tv.label}: tensor {key!r} has dtype {tv.dtype(key)}; task vectors must be floating point")
            if tv.shape(key) != shape:
                raise ValueError(
                    f"{tv.label}: tensor {key!r} has shape {list(tv.shape(key))} but {first.label} has {list(shape)}"
                )
        if key not in pretrained.keys():
            raise ValueError(f"{pretrained.label}: has no tensor {key!r}, which the task vectors change")
        if pretrained.shape(key) != shape:
            raise ValueError(
                f"{pretrained.label}: tensor {key!r} has shape {list(pretrained.shape(key))} but the task vectors have {list(shape)}"
            )
        if not pretrained.dtype(key).is_floating_point:
            raise ValueError(f"{pretrained.label}: tensor {key!r} has dtype {pretrained.dtype(key)}; merged tensors must be floating point")
    return keys


def save_state_dict(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write tensors to a safetensors file atomically (temporary file in the same folder, then rename)."""
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    text_metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_save_safetensors(path, contiguous, text_metadata)


def save_task_vector(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write one task vector (theta_t - theta_pre) with its metadata, atomically."""
    return save_state_dict(path, tensors, metadata)


def load_task_vector(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a whole task vector (or any safetensors state dict) into memory."""
    source = TensorSource(path)
    return {key: source.get(key) for key in source.keys()}


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header."""
    return dict(TensorSource(path).metadata)


def task_vector_from_finetuned(pretrained: StateDictLike, finetuned: StateDictLike) -> dict[str, torch.Tensor]:
    """theta_t - theta_pre for every floating tensor of the fine-tuned checkpoint."""
    base = as_source(pretrained, "pretrained")
    tuned = as_source(finetuned, "finetuned")
    delta = {}
    for key in tuned.keys():
        if not tuned.dtype(key).is_floating_point:
            continue
        if key not in base.keys():
            raise ValueError(f"{base.label}: has no tensor {key!r}, which {tuned.label} has")
        if base.shape(key) != tuned.shape(key):
            raise ValueError(
                f"{tuned.label}: tensor {key!r} has shape {list(tuned.shape(key))} but {base.label} has {list(base.shape(key))}"
            )
        a = check_finite(tuned.get(key), tuned.label, key)
        b = check_finite(base.get(key), base.label, key)
        delta[key] = a - b.to(a.dtype)
    if not delta:
        raise ValueError(f"{tuned.label}: holds no floating-point tensors")
    return delta


def write_json_atomic(path: str | os.PathLike, payload: object) -> Path:
    """Write JSON atomically (used for index files next to task vectors)."""
    return atomic_write_text(path, json.dumps(payload, indent=2))
