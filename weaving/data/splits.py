"""Class-incremental splits of a task, and deterministic validation / hold-out splits of a dataset.

Class-incremental rule (used by the continual setup): a task's classes keep a fixed order, the sorted class
indices 0..C-1, and part i of n (0-based) holds the classes at positions floor(C*i/n) .. floor(C*(i+1)/n)-1.
The parts are disjoint, cover every class, and differ in size by at most one class.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.utils.data import Dataset, Subset

if TYPE_CHECKING:
    from weaving.data.tasks import Task

VAL_FRACTION = 0.1
MAX_VAL_SIZE = 5000
SPLIT_NAME = re.compile(r"^(?P<base>.+)_part(?P<i>\d+)of(?P<n>\d+)$")


def split_classes(num_classes: int, n: int, i: int) -> list[int]:
    """The class indices of part `i` (0-based) of `n` class-incremental parts of `num_classes` classes."""
    if num_classes < 1:
        raise ValueError(f"split_classes: num_classes must be >= 1, got {num_classes}")
    if not 1 <= n <= num_classes:
        raise ValueError(f"split count n={n} is invalid for {num_classes} classes: use 1 <= n <= {num_classes}")
    if not 0 <= i < n:
        raise ValueError(f"split index i={i} is out of range for n={n} parts: use 0 <= i < {n} (part {i + 1} of {n})")
    return list(range(num_classes * i // n, num_classes * (i + 1) // n))


def dataset_targets(dataset: Dataset) -> list[int]:
    """Integer labels of every item, read from the dataset's metadata without loading images when possible.

    Knows torchvision's attributes (`targets`, `labels`, `_labels`, `_samples`) and `Subset`; anything else
    is read item by item (slow: it loads and transforms every image).
    """
    if isinstance(dataset, Subset):
        parent = dataset_targets(dataset.dataset)
        return [parent[j] for j in dataset.indices]
    for attribute in ("targets", "labels", "_labels"):
        values = getattr(dataset, attribute, None)
        if values is not None:
            return [int(v) for v in values]
    samples = getattr(dataset, "_samples", None)
    if samples is not None:
        return [int(label) for _, label in samples]
    return [int(dataset[j][1]) for j in range(len(dataset))]  # type: ignore[arg-type]


class ClassSubset(Dataset):
    """The items of `dataset` whose label is in `classes`, with labels remapped to positions 0..k-1 in `classes`."""

    def __init__(self, dataset: Dataset, classes: Sequence[int]) -> None:
        self.dataset = dataset
        self.classes = list(classes)
        self.remap = {c: k for k, c in enumerate(self.classes)}
        parent = dataset_targets(dataset)
        self.indices = [j for j, label in enumerate(parent) if label in self.remap]
        self.targets = [self.remap[parent[j]] for j in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, _ = self.dataset[self.indices[index]]
        return image, self.targets[index]


@lru_cache(maxsize=8)
def _cached_dataset(base: Task, root: Any, split: str, transform: Callable | None, download: bool) -> Dataset:
    return base.dataset(root, split, transform, download)


def _split_factory(
    base: Task, classes: tuple[int, ...], root: Any, split: str, transform: Callable | None, download: bool
) -> Dataset:
    # The n parts of a task share one loaded base dataset (CIFAR-100 in 50 parts must not load 50 copies).
    try:
        dataset = _cached_dataset(base, root, split, transform, download)
    except TypeError:  # an unhashable transform: build it uncached
        dataset = base.dataset(root, split, transform, download)
    return ClassSubset(dataset, classes)


def split_task(task: Task | str, n: int, i: int) -> Task:
    """Part `i` (0-based) of `n` class-incremental parts of `task`, named f"{task}_part{i+1}of{n}".

    The part keeps the classes `split_classes(C, n, i)` (labels remapped to 0..k-1, class names subset in
    the same order) and the task's templates; its datasets hold only the images of those classes.
    """
    from weaving.data.tasks import get_task

    base = get_task(task) if isinstance(task, str) else task
    classes = tuple(split_classes(len(base.classnames), n, i))
    return replace(
        base,
        name=f"{base.name}_part{i + 1}of{n}",
        classnames=tuple(base.classnames[c] for c in classes),
        factory=partial(_split_factory, base, classes),
    )


def parse_split_name(name: str) -> tuple[str, int, int] | None:
    """("cifar100", 2, 5) for "cifar100_part3of5" (i returned 0-based), None for a name without a part suffix."""
    match = SPLIT_NAME.match(name)
    if match is None:
        return None
    return match["base"], int(match["n"]), int(match["i"]) - 1


def holdout_split(dataset: Dataset, fraction: float, *, seed: int = 0, cap: int | None = None) -> tuple[Subset, Subset]:
    """Split `dataset` into (kept, held_out) at random with a fixed seed; held_out has int(len*fraction) items.

    Same rule as the task-vectors code (torch.randperm with a seeded generator, held-out part last), so the
    same dataset and seed always give the same split. At least one item is held out when there are two or more.
    """
    total = len(dataset)  # type: ignore[arg-type]
    if total < 2:
        raise ValueError(f"cannot split a dataset of {total} item(s): it needs at least 2")
    held = max(1, int(total * fraction))
    if cap is not None:
        held = min(held, cap)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[: total - held]), Subset(dataset, order[total - held :])


def validation_split(dataset: Dataset, seed: int = 0) -> tuple[Subset, Subset]:
    """(train_subset, val_subset) of a training set without its own validation split: 10% held out, at most 5000."""
    return holdout_split(dataset, VAL_FRACTION, seed=seed, cap=MAX_VAL_SIZE)
