"""Scoring a CLIP image encoder with zero-shot heads, many weight sets per pass over the data.

The one scoring path of `weaving validate` (`MergeModule`) and of the comparison runner (`Evaluator`):
- a `WeightBank` keeps theta_pre and the merged tensors on the device and builds any weight set into the
  model in place: theta_pre + lam * g is one fused op per tensor (`torch.add(pre, g, alpha=lam, out=w)`),
  so a lambda sweep never merges again and never copies weights from the host;
- `score_batch` scores one batch, already on the device, with every weight set that needs it, and adds
  the per-column correct/total counts (`column_counts`) to device tensors (no sync per batch);
- forward passes run under bf16 autocast on CUDA (`precision="auto"`), float32 on the CPU.

The `Evaluator` reads each test set from the decoded cache (`weaving.data.cache`): decoded once, ever,
then memory-mapped uint8 batches normalized on the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from weaving.evaluation.setups import Column, Tally, mean_accuracy

__all__ = ["Evaluator", "Request", "Tally", "WeightBank", "WeightSet", "column_mask", "column_tally",
           "mean_accuracy", "predict", "score_batch"]

PRECISIONS = ("auto", "32", "bf16")


def predict(clip_model: nn.Module, head: nn.Module, images: Tensor) -> Tensor:
    """Predicted class indices for a batch: argmax of head(image features)."""
    from weaving.models.clip import encode_images

    return head(encode_images(clip_model, images)).argmax(dim=-1)


def column_mask(labels: Tensor, column: Column) -> Tensor:
    """Boolean mask of the samples a column scores (all of them, or those whose label is in column.classes)."""
    if column.classes is None:
        return torch.ones_like(labels, dtype=torch.bool)
    classes = torch.as_tensor(column.classes, device=labels.device, dtype=labels.dtype)
    return torch.isin(labels, classes)


def column_counts(preds: Tensor, labels: Tensor, column: Column) -> Tensor:
    """[correct, total] (int64, on the predictions' device) of one column over a batch."""
    mask = column_mask(labels, column)
    return torch.stack([(mask & (preds == labels)).sum(), mask.sum()])


def column_tally(preds: Tensor, labels: Tensor, column: Column) -> Tally:
    """Correct/total of one column over a whole test set's predictions."""
    correct, total = column_counts(preds, labels, column).tolist()
    return Tally(int(correct), int(total))


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


# ------------------------------------------------------------------------------------------ weight sets
@dataclass(frozen=True)
class WeightSet:
    """Visual weights to score: theta_pre (`stored` None), theta_pre + scale * a stored delta, or stored
    full weights (`WeightBank.add(..., full=True)`; `scale` is then ignored)."""

    stored: str | None = None
    scale: float = 1.0


@dataclass(frozen=True)
class Request:
    """Score `weights` on `columns`."""

    weights: WeightSet
    columns: tuple[Column, ...]


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


def score_batch(clip_model: nn.Module, head: nn.Module, bank: WeightBank, images: Tensor, labels: Tensor,
                requests: Iterable[tuple[WeightSet, Sequence[Column], Tensor]], precision: str = "auto") -> None:
    """Score one batch (on the device) with each weight set of `requests` and add its [correct, total] per
    column to the request's counts tensor ([len(columns), 2], int64, on the device)."""
    with autocast_for(images.device, precision):
        for weights, columns, counts in requests:
            bank.load(weights)
            preds = predict(clip_model, head, images)
            for i, column in enumerate(columns):
                counts[i] += column_counts(preds, labels, column)


# ------------------------------------------------------------------------------------------- evaluator
class Evaluator:
    """One CLIP model, the heads and test sets of `tasks`, and a `WeightBank`: scores many weight sets per
    pass over each test set.

    Test sets come from the decoded cache (`cache_dir`, default $WEAVING_CACHE_DIR or
    ~/.cache/weaving/test_sets; `cache=False` streams them through a DataLoader instead). `max_samples`
    scores a fixed, evenly spaced subset of each test set (quick runs only; None: all). `precision`:
    "auto" (bf16 autocast on CUDA, float32 on the CPU), "bf16" or "32".
    """

    def __init__(
        self,
        clip,
        tasks: Sequence[str],
        *,
        root: str = "data",
        split: str = "test",
        batch_size: int | None = None,
        num_workers: int | None = None,
        device: torch.device | str | None = None,
        head_cache_dir: str | None = None,
        download: bool = False,
        max_samples: int | None = None,
        cache_dir: str | None = None,
        cache: bool = True,
        precision: str = "auto",
        progress: bool = True,
    ) -> None:
        from weaving.data.cache import open_test_set
        from weaving.data.tasks import get_task
        from weaving.models.heads import build_head

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        autocast_for(self.device, precision)  # checks the name
        self.precision = precision
        self.batch_size = batch_size or (1024 if self.device.type == "cuda" else 256)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.clip = clip
        self.model = clip.model.to(self.device).eval()
        self.bank = WeightBank(self.model)
        self.progress = progress
        self.heads: dict[str, nn.Module] = {}
        self.test_sets = {}
        size = getattr(self.model.visual, "image_size", None)
        for name in dict.fromkeys(tasks):
            task = get_task(name)
            head = build_head(clip, task.classnames, task.templates, cache_dir=head_cache_dir, task=task.name)
            self.heads[name] = head.to(self.device).eval()
            subset = None
            if max_samples is not None:
                n = len(task.dataset(root, split, None, download=download))
                subset = evenly_spaced(n, max_samples) if n > max_samples else None
            self.test_sets[name] = open_test_set(name, root=root, split=split, transform=clip.eval_transform,
                                                 image_size=size, cache_dir=cache_dir, cache=cache, download=download,
                                                 subset=subset, num_workers=num_workers, progress=progress)
            if not len(self.test_sets[name]):
                raise ValueError(f"the test set of {name!r} is empty; check the dataset root and split")

    @property
    def pretrained(self) -> dict[str, Tensor]:
        """theta_pre's visual weights (CPU copies)."""
        return {key: value.cpu() for key, value in self.bank.pretrained.items()}

    @torch.inference_mode()
    def score(self, requests: Sequence[Request], desc: str = "scoring") -> list[dict[str, Tally]]:
        """Tallies of every request's columns: one pass over each needed test set, each batch moved to the
        device once and scored by every request that needs it."""
        counts = [torch.zeros(len(r.columns), 2, dtype=torch.long, device=self.device) for r in requests]
        tasks = list(dict.fromkeys(c.task for r in requests for c in r.columns))
        unknown = [t for t in tasks if t not in self.test_sets]
        if unknown:
            raise ValueError(f"tasks {unknown} were not loaded by this Evaluator; it has {list(self.test_sets)}")
        total = sum(len(self.test_sets[t]) * sum(any(c.task == t for c in r.columns) for r in requests) for t in tasks)
        with tqdm(total=total, desc=desc, unit="img", leave=False, disable=not self.progress) as bar:
            for task in tasks:
                needs, where = [], []
                for request, count in zip(requests, counts):
                    index = [i for i, c in enumerate(request.columns) if c.task == task]
                    if index:
                        sub = torch.zeros(len(index), 2, dtype=torch.long, device=self.device)
                        needs.append((request.weights, [request.columns[i] for i in index], sub))
                        where.append((count, index, sub))
                for images, labels in self.test_sets[task].batches(self.batch_size, self.device):
                    score_batch(self.model, self.heads[task], self.bank, images, labels, needs, self.precision)
                    bar.update(len(labels) * len(needs))
                for count, index, sub in where:
                    count[index] += sub
        out = []
        for request, count in zip(requests, counts):
            rows = count.tolist()
            out.append({c.name: Tally(int(rows[i][0]), int(rows[i][1])) for i, c in enumerate(request.columns)})
        return out

    def evaluate(self, columns: Sequence[Column], state: Mapping[str, Tensor] | None = None) -> dict[str, Tally]:
        """Tally of every column for one set of full visual weights (None: theta_pre)."""
        if state is None:
            return self.score([Request(WeightSet(), tuple(columns))])[0]
        self.bank.add("_evaluate", state, full=True)
        try:
            return self.score([Request(WeightSet("_evaluate"), tuple(columns))])[0]
        finally:
            self.bank.remove("_evaluate")
