"""Staged reading of task vectors: the next tensors are read and copied to the device while the current
ones are merged (double buffering).

On CUDA, host tensors go through pinned (page-locked) buffers, safetensors files are read straight into
them, and the host-to-device copies run on a side stream, so the copy engine works while the merge
kernels run. On the CPU the same code path runs (background reads, the same look-ahead), without pinning
or streams. The staged values are the bytes the plain path reads, so results are bit-identical.

`WEAVING_STAGING` switches it: `auto` (default: staged on CUDA, plain on the CPU), `1` (always), `0`
(never). On the CPU, staging helps merges with little work per tensor over inputs read from files (a
background read overlaps the merge on another core) and slows those with statistics passes.
"""

from __future__ import annotations

import json
import os
import struct
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from weaving.merging.sources import LastReadSource
from weaving.merging.task_set import TaskVectorSet
from weaving.merging.task_vectors import _DTYPES, TensorSource, check_finite

ENVIRONMENT = "WEAVING_STAGING"


def staging_enabled(device: torch.device) -> bool:
    """Whether to stage for `device`, from WEAVING_STAGING (auto: only on CUDA)."""
    value = os.environ.get(ENVIRONMENT, "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        raise ValueError(f"{ENVIRONMENT}={value!r}: use auto, 1 or 0")
    return device.type == "cuda" if value == "auto" else value == "1"


def make_task_set(sources: Sequence[TensorSource], keys: Sequence[str], device: torch.device) -> TaskVectorSet:
    """The engine's task-vector set: staged (see module docstring) or plain."""
    if staging_enabled(device):
        return StagedTaskVectorSet(sources, keys, device)
    return TaskVectorSet(sources, keys, device)


def safetensors_layout(path: str | os.PathLike) -> tuple[int, dict[str, tuple[torch.dtype, tuple[int, ...], int, int]]]:
    """(data start, {name: (dtype, shape, begin, end)}) from a safetensors header; offsets in bytes."""
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    layout = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which cannot be staged")
        begin, end = entry["data_offsets"]
        layout[name] = (dtype, tuple(entry["shape"]), begin, end)
    return 8 + size, layout


def read_into(path: str | os.PathLike, start: int, begin: int, end: int, buffer: torch.Tensor) -> None:
    """Read bytes [begin, end) of a safetensors data section straight into `buffer` (contiguous, CPU)."""
    target = memoryview(buffer.reshape(-1).view(torch.uint8).numpy()).cast("B")
    with open(path, "rb", buffering=0) as handle:
        handle.seek(start + begin)
        done = 0
        while done < end - begin:
            count = handle.readinto(target[done:])
            if not count:
                raise OSError(f"file ends {end - begin - done} bytes early")
            done += count


class StagedTaskVectorSet(TaskVectorSet):
    """A TaskVectorSet whose reads are prefetched one step ahead on a background thread.

    `tensors(key)` returns the T tensors of `key` and starts staging all T tensors of the next key;
    `tensor(task, key)` (the statistics passes) stages the request it predicts next: the next task of the
    same key, or the next key of the same task, following the order of the last two requests.
    """

    def __init__(self, sources: Sequence[TensorSource], keys: Sequence[str], device: torch.device):
        super().__init__(sources, keys, device)
        for source in self.sources:  # a pretrained shared by difference sources is read one key ahead too
            if isinstance(getattr(source, "pretrained", None), LastReadSource):
                source.pretrained.kept = max(source.pretrained.kept, 2)
        self.pin = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weaving-staging")
        weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        self._pending: OrderedDict[tuple[int, str], Future] = OrderedDict()
        self._position = {key: i for i, key in enumerate(self.keys)}
        self._layouts: dict[int, tuple[int, dict] | None] = {}
        self._last: tuple[int, str] | None = None
        self._tasks_first = False
        self.misses = 0  # requests that were not staged ahead (read on the spot)

    # -- reading one tensor (runs on the staging thread) ---------------------------------------------
    def _host(self, task: int, key: str) -> torch.Tensor:
        source = self.sources[task]
        path = getattr(source, "path", None)
        if path is not None and task not in self._layouts:
            try:
                self._layouts[task] = safetensors_layout(path)
            except (OSError, ValueError, KeyError, TypeError):
                self._layouts[task] = None  # let the source's own reader report the problem
        layout = self._layouts.get(task)
        if layout is not None and key in layout[1]:
            dtype, shape, begin, end = layout[1][key]
            buffer = torch.empty(shape, dtype=dtype, pin_memory=self.pin)
            try:
                read_into(path, layout[0], begin, end, buffer)
            except OSError as error:
                raise ValueError(f"{source.label}: cannot read tensor {key!r} ({error})") from None
            return buffer
        value = source.get(key)
        if not self.pin:
            return value
        buffer = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
        return buffer.copy_(value)

    def _load(self, task: int, key: str):
        host = self._host(task, key)
        if self.stream is None:
            return host.to(dtype=self.dtype(key)), None, host
        with torch.cuda.stream(self.stream):
            value = host.to(self.device, non_blocking=True).to(self.dtype(key))
            event = torch.cuda.Event()
            event.record(self.stream)
        return value, event, host

    # -- scheduling ----------------------------------------------------------------------------------
    def _prefetch(self, task: int, key: str) -> None:
        if (task, key) in self._pending:
            return
        self._pending[(task, key)] = self._pool.submit(self._load, task, key)
        while len(self._pending) > 2 * self.num_tasks + 2:  # drop stale predictions
            self._pending.popitem(last=False)

    def _take(self, task: int, key: str) -> torch.Tensor:
        future = self._pending.pop((task, key), None)
        if future is None:
            self.misses += 1
        value, event, _host = future.result() if future is not None else self._load(task, key)
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            value.record_stream(current)
        return check_finite(value, self.sources[task].label, key)

    def _next_key(self, key: str) -> str | None:
        position = self._position[key] + 1
        return self.keys[position] if position < len(self.keys) else None

    def tensor(self, task: int, key: str) -> torch.Tensor:
        value = self._take(task, key)
        last, self._last = self._last, (task, key)
        if last is not None and last[1] == key and task == last[0] + 1:
            self._tasks_first = True  # walking the tasks of one key
        elif last is not None and last[0] == task:
            self._tasks_first = False  # walking the keys of one task
        following = self._next_key(key)
        if self._tasks_first:
            if task + 1 < self.num_tasks:
                self._prefetch(task + 1, key)
            elif following is not None:
                self._prefetch(0, following)
        elif following is not None:
            self._prefetch(task, following)
        elif task + 1 < self.num_tasks:
            self._prefetch(task + 1, self.keys[0])
        return value

    def tensors(self, key: str) -> list[torch.Tensor]:
        values = [self._take(task, key) for task in range(self.num_tasks)]
        self._last = None
        following = self._next_key(key)
        if following is not None:
            for task in range(self.num_tasks):
                self._prefetch(task, following)
        return values
