"""Lazy task vectors derived from other sources, one tensor at a time: `finetuned - pretrained`, and a
task vector scaled by a per-model weight (recipes). Nothing is computed before a tensor is asked for."""

from __future__ import annotations

import torch

from weaving.merging.task_set import compute_dtype
from weaving.merging.task_vectors import TensorSource, check_finite


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
        self._tensors, self._file, self.metadata = None, None, {}
        self._checked: set[str] = set()  # keys whose inputs were checked for NaN / Inf (read again by later passes)

    def get(self, key: str) -> torch.Tensor:
        tuned, base = self.finetuned.get(key), self.pretrained.get(key)
        if key not in self._checked:
            check_finite(tuned, self.finetuned.label, key)
            check_finite(base, self.pretrained.label, key)
            self._checked.add(key)
        # One subtraction in the compute dtype (half-precision inputs are widened inside the kernel, exactly).
        return torch.sub(tuned.to(self._dtypes[key]), base)


class ScaledSource(TensorSource):
    """A task vector multiplied by a weight when read (a recipe's per-model `weight`)."""

    def __init__(self, source: TensorSource, weight: float):
        self.source, self.weight = source, float(weight)
        self.label = f"{source.label} (weight {weight})"
        self._shapes = {key: source.shape(key) for key in source.keys()}
        self._dtypes = {key: compute_dtype(source.dtype(key)) if source.dtype(key).is_floating_point else source.dtype(key)
                        for key in source.keys()}
        self._tensors, self._file, self.metadata = None, None, dict(source.metadata)

    def get(self, key: str) -> torch.Tensor:
        value = self.source.get(key)
        if not value.is_floating_point():
            return value
        return value.to(self._dtypes[key]) * self.weight


class LastReadSource(TensorSource):
    """A source that keeps the last tensor it read: the pretrained checkpoint is read once per key, not
    once per fine-tuned model that subtracts it and once more for the output (read-only use)."""

    def __init__(self, source: TensorSource):
        self.source = source
        self.label, self.metadata = source.label, source.metadata
        self.path = getattr(source, "path", None)
        self._shapes = {key: source.shape(key) for key in source.keys()}
        self._dtypes = {key: source.dtype(key) for key in source.keys()}
        self._tensors, self._file = None, None
        self._last: tuple[str, torch.Tensor] | None = None

    def get(self, key: str) -> torch.Tensor:
        if self._last is None or self._last[0] != key:
            self._last = (key, self.source.get(key))
        return self._last[1]
