"""Class-incremental splits of a task, and deterministic validation / hold-out splits of a dataset.

Class-incremental rule (used by the continual setup), as MagMax builds its splits: a task's classes follow a
fixed class order (`weaving.data.class_orders`: MagMax's published order for CIFAR100, ImageNet-R, CUB200 and
StanfordCars, sorted labels for the others, or a seeded permutation), part i of n (0-based) holds the
classes at positions floor(C/n*i) .. floor(C/n*(i+1))-1 of that order, sorted by label. The parts are
disjoint, cover every class, and differ in size by at most one class.

Names: "<task>_part<i>of<n>" (i from 1) is part i in the task's default order; "<task>_part<i>of<n>_sorted",
"..._magmax" and "..._seed<k>" name another order explicitly, so task vectors of different orders never
share a name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset, Subset

from weaving.data.class_orders import check_class_order, default_class_order, part_bounds, part_of_order

VAL_FRACTION = 0.1
MAX_VAL_SIZE = 5000
SPLIT_NAME = re.compile(r"^(?P<base>.+)_part(?P<i>\d+)of(?P<n>\d+)(?:_(?P<order>sorted|magmax|seed\d+))?$")


class SplitName(NamedTuple):
    """A parsed "<task>_part<i>of<n>[_<order>]": i is 0-based; order is None (the task's default) or explicit."""

    base: str
    n: int
    i: int
    order: str | int | None = None


def split_classes(num_classes: int, n: int, i: int, order: Sequence[int] | None = None) -> list[int]:
    """The labels of part `i` (0-based) of `n` class-incremental parts of `num_classes` classes in `order`
    (default: sorted labels), sorted by label."""
    if order is not None and sorted(order) != list(range(num_classes)):
        raise ValueError(f"split_classes: the class order must hold each of the {num_classes} labels once")
    part_bounds(num_classes, n, i)  # checks n and i
    return part_of_order(list(range(num_classes)) if order is None else list(order), n, i)


def split_name(task: str, n: int, i: int, class_order: str | int | None = None) -> str:
    """f"{task}_part{i+1}of{n}", with "_<order>" when `class_order` is not the task's default order."""
    order = check_class_order(class_order)
    if order is None or order == default_class_order(task):
        return f"{task}_part{i + 1}of{n}"
    return f"{task}_part{i + 1}of{n}_{order if isinstance(order, str) else f'seed{order}'}"


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


def parse_split_name(name: str) -> SplitName | None:
    """SplitName("cifar100", 5, 2, None) for "cifar100_part3of5" (i 0-based), order "sorted", "magmax" or a
    seed for "..._sorted", "..._magmax", "..._seed<k>"; None for a name without a part suffix."""
    match = SPLIT_NAME.match(name)
    if match is None:
        return None
    order = match["order"]
    return SplitName(match["base"], int(match["n"]), int(match["i"]) - 1, check_class_order(order))


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
