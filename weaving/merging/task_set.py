"""The set of task vectors a method merges, read lazily tensor by tensor onto one device and dtype."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from weaving.io.source import TensorSource, check_finite
from weaving.merging.selection import select_rows
from weaving.merging import tensor_ops
from weaving.merging.tensor_ops import select_sorted

# On a GPU, task vectors up to this many entries are sorted at once for global selections; larger ones,
# and all on the CPU, stream the tensors in passes (exact radix selection). Both give the same values.
IN_MEMORY_SELECTION = 2**26


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are merged in float32; float32 and float64 keep their precision."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class TaskVectorSet:
    """T task vectors with the same keys; `tensors(key)` gives the T tensors of one parameter."""

    partial = False  # True when other processes hold the rest of the tensors (weaving.merging.distributed)

    def __init__(self, sources: Sequence[TensorSource], keys: Sequence[str], device: torch.device):
        self.sources = list(sources)
        self.keys = list(keys)
        self.device = device
        self._checked: set[tuple[int, str]] = set()  # (task, key) pairs already checked for NaN / Inf

    @property
    def num_tasks(self) -> int:
        return len(self.sources)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.sources[0].shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return compute_dtype(self.sources[0].dtype(key))

    def stored_dtype(self, key: str) -> torch.dtype:
        """The dtype the first task vector's inputs hold `key` in, before half precision is widened."""
        return self.sources[0].stored_dtype(key)

    def tensor(self, task: int, key: str) -> torch.Tensor:
        source = self.sources[task]
        value = source.get(key).to(device=self.device, dtype=self.dtype(key))
        if (task, key) not in self._checked:  # statistics passes read a tensor several times: check it once
            check_finite(value, source.label, key)
            self._checked.add((task, key))
        return value

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
        return self.select_sorted_rows(lambda key: [[values_of(key)]], [indices], absolute)[0]

    def select_sorted_rows(self, blocks_of: Callable[[str], Iterable[torch.Tensor]], indices: list[list[int]],
                           absolute: bool = False, zeros: int = 0,
                           reused_blocks: bool = False) -> list[list[torch.Tensor]]:
        """Several selections at once: `blocks_of(key)` yields blocks of R tensors (lists, or (R, ...)
        tensors) of that key's entries, the r-th belonging to stream r; the result's row r is [sorted(v_r)[i] for i in indices[r]] over all of
        stream r's entries (abs values when `absolute`). Every stream holds one task vector's numel() entries
        and `zeros` more equal to 0.0 that no tensor holds (a merge method's `zero_entries`).

        Streamed radix selection (two passes over the keys for float32, `weaving.merging.selection`): only
        one key's blocks at a time are held. On a GPU, task vectors that fit (at most IN_MEMORY_SELECTION
        entries) are sorted at once instead: one device-wide sort takes milliseconds. That path keeps every
        block until the sort, so a `blocks_of` that refills one buffer must say so (`reused_blocks`): its
        blocks are then copied as they come.
        """
        dtype = self.selection_dtype()
        count = self.numel()
        if self.device.type not in tensor_ops.RADIX_DEVICES and count <= IN_MEMORY_SELECTION and not self.partial:
            streams: list[list[torch.Tensor]] = [[] for _ in indices]
            for key in self.keys:
                for block in blocks_of(key):
                    for stream, values in zip(streams, block):
                        stream.append(values.to(dtype, copy=reused_blocks))
            return [select_sorted(stream, list(wanted), absolute, zeros) for stream, wanted in zip(streams, indices)]

        def parts():
            for key in self.keys:
                yield from blocks_of(key)

        chosen = select_rows(parts, indices, count, dtype, self.reduce_counts, absolute=absolute, zeros=zeros)
        return [[v.to(self.device) for v in row] for row in chosen]

    def rows(self, key: str) -> Iterator[list[torch.Tensor]]:
        """`key`'s T task tensors as one block of T streams (for `select_sorted_rows`)."""
        yield self.tensors(key)

    def selection_dtype(self) -> torch.dtype:
        """float64 when any tensor is float64, else float32: the dtype selections are exact in."""
        return torch.float64 if any(self.dtype(key) == torch.float64 for key in self.keys) else torch.float32

    def reduce_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Histogram counts summed over every process holding part of the tensors (here: one process)."""
        return counts
