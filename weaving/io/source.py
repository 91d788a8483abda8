"""The `TensorSource` protocol: lazy, per-tensor access to one state dict.

Names, shapes and dtypes are known up front; a tensor's data is read when asked for, so the merge engine
never holds more than the tensors it is working on. This class is also the in-memory implementation (a
mapping of tensors); files, sharded folders and derived sources subclass it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Union

import torch

StateDictLike = Union[Mapping[str, torch.Tensor], str, os.PathLike]


class TensorSource:
    """Lazy view of one state dict: names, shapes and dtypes up front, tensor data on demand."""

    path: Path | None = None  # a file read straight from disk (staged reads use its `read_into`)
    reads_into = False  # whether `read_into` reads straight into a caller's buffer (no intermediate copy)

    def __init__(self, tensors: Mapping[str, torch.Tensor], label: str | None = None):
        self.label = label or "state dict"
        for key, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{self.label}: key {key!r} is a {type(value).__name__}, not a tensor")
        self._tensors = tensors
        self._shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        self._dtypes = {k: v.dtype for k, v in tensors.items()}
        self.metadata: dict[str, str] = {}

    def keys(self) -> list[str]:
        return list(self._shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def dtype(self, key: str) -> torch.dtype:
        return self._dtypes[key]

    def stored_dtype(self, key: str) -> torch.dtype:
        """The dtype the inputs hold `key` in: `dtype`, except for a source that widens half precision
        (a task vector computed from fine-tuned weights) or derives from other sources."""
        return self.dtype(key)

    def numel(self) -> int:
        return sum(math.prod(shape) for shape in self._shapes.values())

    def layout(self, dtype: torch.dtype | None = None) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """(name, shape, dtype) of every tensor, in order; `dtype` replaces the floating-point dtypes (an
        output written in another precision)."""
        return [(key, tuple(shape), dtype if dtype is not None and self._dtypes[key].is_floating_point
                 else self._dtypes[key]) for key, shape in self._shapes.items()]

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def view(self, key: str) -> torch.Tensor:
        """`get(key)` without a copy where the storage allows it (a memory map of a file): for reading only."""
        return self.get(key)

    def read_into(self, key: str, buffer: torch.Tensor) -> torch.Tensor:
        """`get(key)` written into `buffer` (same shape and dtype, e.g. pinned host memory); returns it."""
        return buffer.copy_(self.get(key))

    def get_as(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        """`get(key)` converted to `dtype` and checked for NaN / Inf (a one-line ValueError)."""
        return check_finite(self.get(key).to(dtype), self.label, key)


def check_finite(tensor: torch.Tensor, label: str, key: str) -> torch.Tensor:
    """Raise a one-line ValueError when a tensor holds NaN or Inf."""
    # One fast reduction: a NaN or Inf anywhere makes the sum non-finite. Only then (or on an overflowing
    # sum of huge finite values) pay for the elementwise check.
    if bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all()):
        return tensor
    raise ValueError(f"{label}: tensor {key!r} contains NaN or Inf values; fix or drop that checkpoint")
