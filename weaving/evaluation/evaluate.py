"""Scoring a CLIP image encoder with zero-shot heads: the one counting path, weights built in place, and the
test sets each rank reads.

- `class_counts`: per class, [correct, total] of a batch (torchmetrics' `MulticlassStatScores(average=None)`
  true positives and support). Every number the project reports follows from these counts: a column's
  accuracy is the sum over its classes (all of them, or a continual part's), and both mean rules of
  `weaving.evaluation.setups.mean_accuracy` follow from the column tallies (`column_tally`). The comparison
  (`weaving.evaluation.comparison.ComparisonModule`, with its presets `MergeModule` and `CheckpointModule`)
  and the fine-tuner's seen-task matrix (`weaving.training.seen_tasks`) count with it.
- a `WeightBank` keeps theta_pre and the merged tensors on the device and builds any weight set into the
  model in place: theta_pre + lam * g is one fused op per tensor (`torch.add(pre, g, alpha=lam, out=w)`),
  so a lambda sweep never merges again and never copies weights from the host;
- `EvalSet` + `ShardSampler`: a test set from the decoded cache (`weaving.data.cache`: decoded once, ever,
  then memory-mapped uint8 batches normalized on the device), split across ranks into equal shards whose
  padding is marked, so no sample is dropped or counted twice;
- forward passes run under bf16 autocast on CUDA (`precision="auto"`), float32 on the CPU.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from weaving.evaluation.setups import Column, Tally

__all__ = ["EvalSet", "ShardSampler", "Tally", "WeightBank", "WeightSet", "autocast_for", "class_counts",
           "column_tally", "evenly_spaced", "padding_mask", "predict"]

PRECISIONS = ("auto", "32", "bf16")


def predict(clip_model: nn.Module, head: nn.Module, images: Tensor) -> Tensor:
    """Predicted class indices for a batch: argmax of head(image features)."""
    from weaving.models.clip import encode_images

    return head(encode_images(clip_model, images)).argmax(dim=-1)


# ------------------------------------------------------------------------------------------- counting
def class_counts(preds: Tensor, labels: Tensor, num_classes: int, valid: Tensor | None = None) -> Tensor:
    """[num_classes, 2] int64 on the labels' device: per true class, [correct predictions, samples].

    `valid` (bool per sample) leaves out the samples it marks False (a rank's padding)."""
    labels = labels.long()
    if valid is not None:
        preds, labels = preds[valid], labels[valid]
    total = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels[preds == labels], minlength=num_classes)
    if len(total) > num_classes:
        raise ValueError(f"a label {int(labels.max())} is outside the head's {num_classes} classes")
    return torch.stack([correct, total], dim=1)


def column_tally(counts: Tensor | Sequence[Sequence[int]], column: Column) -> Tally:
    """The tally of one column from its task's per-class counts: all classes, or those of `column.classes`."""
    rows = counts.tolist() if isinstance(counts, Tensor) else counts
    classes = range(len(rows)) if column.classes is None else column.classes
    return Tally(int(sum(rows[c][0] for c in classes)), int(sum(rows[c][1] for c in classes)))


def evenly_spaced(n: int, k: int) -> list[int]:
    """k distinct indices spread evenly over range(n) (deterministic subsets of a test set)."""
    if k < 1:
        raise ValueError(f"max_samples must be at least 1, got {k}")
    return sorted({int(i) for i in torch.linspace(0, n - 1, min(k, n)).round().long()})


def autocast_for(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CUDA for "auto" and "bf16"; float32 (no autocast) otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of: {', '.join(PRECISIONS)}")
    if precision == "32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------ test sets
class ShardSampler(DistributedSampler):
    """Rank `rank`'s share of a test set of `n` samples, in batches: contiguous shards of ceil(n / ranks)
    positions, so every rank runs the same number of batches (its collective calls line up); positions past
    the end are padding, yielded as -1 - index so that `EvalSet` marks them invalid and they are not counted.

    A DistributedSampler subclass, so that Lightning keeps it instead of inserting its own (whose padding
    repeats samples that would then count twice)."""

    def __init__(self, n: int, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.n, self.batch_size, self.num_replicas, self.rank = n, batch_size, num_replicas, rank
        self.per_rank = math.ceil(n / num_replicas) if n else 0
        self.epoch, self.shuffle, self.drop_last, self.seed = 0, False, False, 0

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        start = self.rank * self.per_rank
        positions = range(start, start + self.per_rank)
        for i in range(0, len(positions), self.batch_size):
            yield [p if p < self.n else -1 - (p % self.n) for p in positions[i: i + self.batch_size]]


class EvalSet(Dataset):
    """A test set indexed by whole batches (`ShardSampler`'s lists): (images, labels, valid).

    From the decoded cache, images are the uint8 batch (normalized on the device by `normalize`: 4x fewer
    bytes moved than float32); from a plain dataset (`cache=False`), the transformed float images."""

    def __init__(self, test_set) -> None:
        from weaving.data.cache import DecodedTestSet

        self.test_set = test_set
        self.decoded = isinstance(test_set, DecodedTestSet)
        self.mean, self.std = (test_set.mean, test_set.std) if self.decoded else (None, None)

    def __len__(self) -> int:
        return len(self.test_set)

    def __getitem__(self, batch: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        valid = torch.tensor([i >= 0 for i in batch])
        index = [i if i >= 0 else -1 - i for i in batch]
        if self.decoded:
            images = torch.from_numpy(np.ascontiguousarray(self.test_set.images[np.asarray(index)]))
            labels = self.test_set.labels[index]
        else:
            items = [self.test_set.dataset[i] for i in index]
            images = torch.stack([torch.as_tensor(image) for image, _ in items])
            labels = torch.as_tensor([int(label) for _, label in items])
        return images, labels, valid

    def normalize(self, images: Tensor) -> Tensor:
        """The float32 normalized batch on the images' device (uint8 cache batches; others are unchanged)."""
        if not self.decoded:
            return images
        from weaving.data.cache import normalize

        return normalize(images, self.mean, self.std)


def padding_mask(sampler, start: int, count: int, n: int) -> Tensor | None:
    """For a batch of `count` samples at offset `start` of this rank's share: False where Lightning's
    DistributedSampler (shuffle off) padded the share with a repeated sample (padded position >= n)."""
    if not isinstance(sampler, DistributedSampler) or isinstance(sampler, ShardSampler):
        return None
    if sampler.shuffle:
        raise ValueError("an evaluation dataloader must not be shuffled across ranks (its padding could not be "
                         "told apart from the samples)")
    positions = sampler.rank + sampler.num_replicas * torch.arange(start, start + count)
    return positions < n


# ------------------------------------------------------------------------------------------ weight sets
@dataclass(frozen=True)
class WeightSet:
    """Visual weights to score: theta_pre (`stored` None), theta_pre + scale * a stored delta, or stored
    full weights (`WeightBank.add(..., full=True)`; `scale` is then ignored)."""

    stored: str | None = None
    scale: float = 1.0


class WeightBank:
    """theta_pre and named tensor sets (merged deltas g or full weights) on the model's device.

    `load(WeightSet)` writes a weight set into the model's image encoder in place: one fused op per
    tensor, no allocation, no host copy; loading the weight set already loaded does nothing.
    """

    def __init__(self, clip_model: nn.Module, pretrained: Mapping[str, Tensor] | None = None) -> None:
        from weaving.models.clip import _visual_tensors

        self.targets = _visual_tensors(clip_model)
        source = self.targets if pretrained is None else pretrained
        self.pretrained = {key: source[key].detach().to(value.device, value.dtype, copy=True)
                           for key, value in self.targets.items()}
        self.stored: dict[str, tuple[dict[str, Tensor], bool]] = {}
        self.loaded: WeightSet | None = WeightSet() if pretrained is None else None

    def add(self, name: str, tensors: Mapping[str, Tensor], *, full: bool = False) -> None:
        """Keep `tensors` (a delta, or full weights with `full=True`) on the device under `name`."""
        missing = sorted(set(self.targets) - set(tensors))
        unexpected = sorted(set(tensors) - set(self.targets))
        if missing or unexpected:
            raise ValueError(f"weights {name!r} do not match the image encoder: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}; were they made for another model?")
        kept = {}
        for key, target in self.targets.items():
            value = tensors[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"weights {name!r}: {key!r} has shape {tuple(value.shape)}, the model expects "
                                 f"{tuple(target.shape)}")
            kept[key] = value.detach().to(device=target.device, dtype=target.dtype)
        self.stored[name] = (kept, full)
        if self.loaded is not None and self.loaded.stored == name:
            self.loaded = None

    def delta_between(self, name: str, merged: Mapping[str, Tensor]) -> None:
        """Store g = merged - theta_pre under `name` (on the device), so theta(lam) = theta_pre + lam * g."""
        deltas = {key: merged[key].detach().to(pre.device, pre.dtype) - pre for key, pre in self.pretrained.items()}
        self.add(name, deltas)

    def remove(self, name: str) -> None:
        self.stored.pop(name, None)
        if self.loaded is not None and self.loaded.stored == name:
            self.loaded = None

    def nbytes(self) -> int:
        """Bytes held by the stored sets (theta_pre not counted)."""
        return sum(t.numel() * t.element_size() for tensors, _ in self.stored.values() for t in tensors.values())

    @torch.no_grad()
    def load(self, weights: WeightSet) -> None:
        if weights == self.loaded:
            return
        if weights.stored is None:
            for key, target in self.targets.items():
                target.copy_(self.pretrained[key])
        else:
            if weights.stored not in self.stored:
                raise ValueError(f"no weights stored under {weights.stored!r}; stored: {sorted(self.stored)}")
            tensors, full = self.stored[weights.stored]
            for key, target in self.targets.items():
                if full:
                    target.copy_(tensors[key])
                else:
                    torch.add(self.pretrained[key], tensors[key], alpha=weights.scale, out=target)
        self.loaded = weights
