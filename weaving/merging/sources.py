"""Lazy task vectors derived from other sources, one tensor at a time: `finetuned - pretrained`, and a
task vector scaled by a per-model weight (recipes). Nothing is computed before a tensor is asked for."""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from weaving.io.source import TensorSource, check_finite
from weaving.merging.task_set import compute_dtype


class DifferenceSource(TensorSource):
    """theta_t - theta_pre for every floating tensor of a fine-tuned checkpoint, computed when read.

    Half-precision checkpoints are subtracted in float32 (the engine merges in float32 anyway), so the
    difference of two bf16 weights is not rounded back to bf16.
    """

    def __init__(self, finetuned: TensorSource, pretrained: TensorSource):
        keys = [key for key in finetuned.keys() if finetuned.dtype(key).is_floating_point]
        if not keys:
            raise ValueError(f"{finetuned.label}: holds no floating-point tensors")
        for key in keys:
            if key not in pretrained.keys():
                raise ValueError(f"{pretrained.label}: has no tensor {key!r}, which {finetuned.label} has")
            if pretrained.shape(key) != finetuned.shape(key):
                raise ValueError(f"{finetuned.label}: tensor {key!r} has shape {list(finetuned.shape(key))} but "
                                 f"{pretrained.label} has {list(pretrained.shape(key))}")
        self.finetuned, self.pretrained = finetuned, pretrained
        self.label = finetuned.label
        self._shapes = {key: finetuned.shape(key) for key in keys}
        self._dtypes = {key: compute_dtype(finetuned.dtype(key)) for key in keys}
        self.metadata = {}

    def stored_dtype(self, key: str) -> torch.dtype:
        """The fine-tuned and pretrained tensors' dtypes promoted together (bfloat16 for two bf16 models)."""
        return torch.promote_types(self.finetuned.stored_dtype(key), self.pretrained.stored_dtype(key))

    def get(self, key: str) -> torch.Tensor:
        # A NaN or Inf in the fine-tuned tensor makes the difference non-finite, which the task-vector set
        # reports under the fine-tuned model's name; the pretrained one is checked here, once per key.
        dtype = self._dtypes[key]
        tuned = self.finetuned.view(key)  # only read: a memory map of a file's tensor saves a copy
        base = self.pretrained.get_as(key, dtype)  # a LastReadSource does this once for every fine-tune
        return tuned.to(dtype).sub_(base) if tuned.dtype != dtype else tuned - base


class ScaledSource(TensorSource):
    """A task vector multiplied by a weight when read (a recipe's per-model `weight`)."""

    def __init__(self, source: TensorSource, weight: float):
        self.source, self.weight = source, float(weight)
        self.label = f"{source.label} (weight {weight})"
        self._shapes = {key: source.shape(key) for key in source.keys()}
        self._dtypes = {key: compute_dtype(source.dtype(key)) if source.dtype(key).is_floating_point else source.dtype(key)
                        for key in source.keys()}
        self.metadata = dict(source.metadata)

    def stored_dtype(self, key: str) -> torch.dtype:
        return self.source.stored_dtype(key)

    def get(self, key: str) -> torch.Tensor:
        value = self.source.get(key)
        if not value.is_floating_point():
            return value
        return value.to(self._dtypes[key]) * self.weight


class LastReadSource(TensorSource):
    """A source that keeps the tensors of the last key it read (and their conversions): the pretrained
    checkpoint is read, widened and checked once per key, not once per fine-tuned model that subtracts it.
    A staged read (weaving.merging.staging) works one key ahead of the merge on another thread: it sets
    `kept` to 2, and a lock serializes the two threads. Read-only use."""

    def __init__(self, source: TensorSource):
        self.kept = 1
        self.source = source
        self.label, self.metadata = source.label, source.metadata
        self._shapes = {key: source.shape(key) for key in source.keys()}
        self._dtypes = {key: source.dtype(key) for key in source.keys()}
        self._kept: OrderedDict[str, dict[torch.dtype | None, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def _values(self, key: str) -> dict[torch.dtype | None, torch.Tensor]:
        if key not in self._kept:
            self._kept[key] = {None: self.source.get(key)}
            while len(self._kept) > self.kept:
                self._kept.popitem(last=False)
        return self._kept[key]

    def get(self, key: str) -> torch.Tensor:
        with self._lock:
            return self._values(key)[None]

    def view(self, key: str) -> torch.Tensor:
        return self.source.view(key)  # nothing to keep: a view costs no read

    @property
    def reads_into(self) -> bool:  # staged reads go straight to the file, like the source's own reads
        return self.source.reads_into

    def read_into(self, key: str, buffer: torch.Tensor) -> torch.Tensor:
        return self.source.read_into(key, buffer)

    def get_as(self, key: str, dtype: torch.dtype) -> torch.Tensor:
        with self._lock:
            values = self._values(key)
            if dtype not in values:
                values[dtype] = check_finite(values[None].to(dtype), self.label, key)
            return values[dtype]
