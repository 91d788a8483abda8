"""Staged reading of task vectors: the next tensors are read and copied to the device while the current
ones are merged (double buffering).

On CUDA, host tensors go through pinned (page-locked) buffers, safetensors files are read straight into
them (`TensorSource.read_into`), and the host-to-device copies run on a side stream, so the copy engine
works while the merge kernels run. On the CPU the same code path runs (background reads, the same look-ahead), without pinning
or streams. The staged values are the bytes the plain path reads, so results are bit-identical.

`WEAVING_STAGING` switches it: `auto` (default: staged on CUDA, plain on the CPU), `1` (always), `0`
(never). On the CPU, staging helps merges with little work per tensor over inputs read from files (a
background read overlaps the merge on another core) and slows those with statistics passes.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from weaving.io.source import TensorSource, check_finite
from weaving.merging.sources import LastReadSource
from weaving.merging.task_set import TaskVectorSet

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
        self._last: tuple[int, str] | None = None
        self._tasks_first = False
        self.misses = 0  # requests that were not staged ahead (read on the spot)

    # -- reading one tensor (runs on the staging thread) ---------------------------------------------
    def _host(self, task: int, key: str) -> torch.Tensor:
        source = self.sources[task]
        if source.reads_into:  # a file: its bytes go straight into the (pinned) buffer
            buffer = torch.empty(source.shape(key), dtype=source.dtype(key), pin_memory=self.pin)
            return source.read_into(key, buffer)
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
