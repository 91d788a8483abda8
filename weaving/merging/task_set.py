"""The set of task vectors a method merges, read lazily tensor by tensor onto one device and dtype."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from weaving.merging.task_vectors import TensorSource, check_finite


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
