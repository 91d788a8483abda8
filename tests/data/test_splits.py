"""Class-incremental splits (the floor rule), split tasks via get_task, and validation splits."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from weaving.data import ClassSubset, dataset_targets, get_task, split_classes, split_task, validation_split


def parts(num_classes: int, n: int) -> list[list[int]]:
    return [split_classes(num_classes, n, i) for i in range(n)]


def test_floor_rule_on_ten_classes_in_three_parts():
    assert parts(10, 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_floor_rule_on_hundred_classes_in_seven_parts():
    bounds = [0, 14, 28, 42, 57, 71, 85, 100]  # floor(100 * i / 7)
    assert parts(100, 7) == [list(range(bounds[i], bounds[i + 1])) for i in range(7)]
    assert [len(p) for p in parts(100, 7)] == [14, 14, 14, 15, 14, 14, 15]


@pytest.mark.parametrize(("num_classes", "n"), [(10, 1), (10, 10), (100, 50), (200, 20), (196, 10), (7, 3)])
def test_parts_are_disjoint_cover_all_and_balanced(num_classes, n):
    every = [c for part in parts(num_classes, n) for c in part]
    assert every == list(range(num_classes))  # disjoint, in order, covering every class
    sizes = [len(part) for part in parts(num_classes, n)]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


@pytest.mark.parametrize(
    ("num_classes", "n", "i", "match"),
    [(10, 0, 0, "n=0"), (10, 11, 0, "n=11"), (10, 3, 3, "i=3"), (10, 3, -1, "i=-1"), (0, 1, 0, "num_classes")],
)
def test_bad_split_counts_raise(num_classes, n, i, match):
    with pytest.raises(ValueError, match=match):
        split_classes(num_classes, n, i)


def test_split_task_keeps_its_classes_and_remaps_labels():
    base = get_task("digits")
    part = split_task(base, 3, 1)
    assert part.name == "digits_part2of3"
    assert part.classnames == ("3", "4", "5") and part.templates == base.templates
    data = part.dataset("unused", "test")
    full = base.dataset("unused", "test")
    assert sorted(set(dataset_targets(data))) == [0, 1, 2]
    assert len(data) == sum(1 for y in dataset_targets(full) if y in (3, 4, 5))
    image, label = data[0]
    source = full[data.indices[0]]
    assert label == source[1] - 3 and list(image.getdata()) == list(source[0].getdata())


def test_get_task_resolves_every_digits_part():
    names = [f"digits_part{i}of5" for i in range(1, 6)]
    tasks = [get_task(name) for name in names]
    assert [t.name for t in tasks] == names
    assert [c for t in tasks for c in t.classnames] == list(get_task("digits").classnames)
    sizes = [len(t.dataset("unused", "train")) for t in tasks]
    assert sum(sizes) == len(get_task("digits").dataset("unused", "train"))


@pytest.mark.parametrize("name", ["digits_part0of5", "digits_part6of5", "digits_part1of11", "digits_part1of0"])
def test_get_task_rejects_bad_parts(name):
    with pytest.raises(ValueError, match=name):
        get_task(name)


def test_split_task_by_name_and_bad_count():
    assert split_task("cifar100", 10, 9, "sorted").classnames[-1] == "worm"
    with pytest.raises(ValueError, match="n=101"):
        split_task("cifar100", 101, 0)


def dataset_of(size: int) -> TensorDataset:
    return TensorDataset(torch.arange(size), torch.arange(size) % 7)


@pytest.mark.parametrize(("size", "val_size"), [(100, 10), (59, 5), (60000, 5000), (2, 1), (9, 1)])
def test_validation_split_sizes(size, val_size):
    train, val = validation_split(dataset_of(size))
    assert len(val) == val_size and len(train) == size - val_size
    assert sorted(train.indices + val.indices) == list(range(size))


def test_validation_split_is_deterministic_and_seeded():
    first = validation_split(dataset_of(1000))
    second = validation_split(dataset_of(1000))
    other = validation_split(dataset_of(1000), seed=1)
    assert first[1].indices == second[1].indices and first[0].indices == second[0].indices
    assert first[1].indices != other[1].indices


def test_validation_split_needs_two_items():
    with pytest.raises(ValueError, match="at least 2"):
        validation_split(dataset_of(1))


def test_dataset_targets_follow_nested_subsets_and_class_subsets():
    data = dataset_of(30)
    nested = Subset(Subset(data, list(range(10, 30))), [0, 5, 7])
    data.targets = [int(y) for y in data.tensors[1]]
    assert dataset_targets(nested) == [data.targets[10], data.targets[15], data.targets[17]]
    subset = ClassSubset(data, [6, 2])
    assert set(subset.targets) == {0, 1}
    assert all(data.targets[j] == [6, 2][subset.targets[k]] for k, j in enumerate(subset.indices))


def test_dataset_targets_falls_back_to_reading_items():
    data = dataset_of(5)  # no targets attribute: labels come from the items
    assert dataset_targets(data) == [0, 1, 2, 3, 4]
