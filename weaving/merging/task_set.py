"""The set of task vectors a method merges, read lazily tensor by tensor onto one device and dtype."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from weaving.merging.selection import radix_select
from weaving.merging.task_vectors import TensorSource, check_finite
from weaving.merging.tensor_ops import select_sorted

# Above this many entries per task vector, global selections stream the tensors in passes (exact radix
# selection) instead of holding one whole task vector; both give the same values.
IN_MEMORY_SELECTION = 2**26


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are merged in float32; float32 and float64 keep their precision."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class TaskVectorSet:
    """T task vectors with the same keys; `tensors(key)` gives the T tensors of one parameter."""

    def __init__(self, sources: Sequence[TensorSource], keys: Sequence[str], device: torch.device):
        self.sources = list(sources)
        self.keys = list(keys)
        self.device = device

    @property
    def num_tasks(self) -> int:
        return len(self.sources)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.sources[0].shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return compute_dtype(self.sources[0].dtype(key))

    def tensor(self, task: int, key: str) -> torch.Tensor:
        source = self.sources[task]
        value = source.get(key).to(device=self.device, dtype=self.dtype(key))
        return check_finite(value, source.label, key)

    def tensors(self, key: str) -> list[torch.Tensor]:
        return [self.tensor(t, key) for t in range(self.num_tasks)]

    def flat(self, task: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """All tensors of one task vector flattened into one vector (for global per-task statistics)."""
        parts = [self.tensor(task, key).reshape(-1) for key in self.keys]
        if dtype is None:
            dtype = torch.float64 if any(p.dtype == torch.float64 for p in parts) else torch.float32
        return torch.cat([p.to(dtype) for p in parts])

    # Statistics over whole task vectors go through these three, so that a distributed set
    # (weaving.merging.distributed) can reduce them over every process's tensors.
    def numel(self) -> int:
        """Entries of one task vector (all its tensors)."""
        total = 0
        for key in self.keys:
            count = 1
            for size in self.shape(key):
                count *= size
            total += count
        return total

    def all_sum(self, value: Any) -> Any:
        """A statistic summed over every process holding part of the tensors (here: one process)."""
        return value

    def select_sorted(self, values_of: Callable[[str], torch.Tensor], indices: list[int],
                      absolute: bool = False) -> list[torch.Tensor]:
        """[sorted(v)[i] for i in indices], v = the entries of `values_of(key)` over every key (their abs
        values when `absolute`); Python index rules."""
        if self.numel() <= IN_MEMORY_SELECTION:
            return select_sorted([values_of(key) for key in self.keys], indices, absolute)
        dtype = torch.float64 if any(self.dtype(key) == torch.float64 for key in self.keys) else torch.float32

        def parts():
            for key in self.keys:
                value = values_of(key)
                yield value.abs() if absolute else value

        return [v.to(self.device) for v in radix_select(parts, indices, self.numel(), dtype)]
