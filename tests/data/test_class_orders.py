"""Class orders of the continual splits: MagMax's published orders, its partition rule, seeded orders.

The expected parts are computed here from the recorded published lists (integer arithmetic, positions
C*i//n .. C*(i+1)//n - 1 of the order, sorted), not with the functions under test; the lists themselves are
pinned by their first entries and a hash of the whole list (copied from MagMax's src/datasets/*.py).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from weaving.data import class_orders, get_task
from weaving.data.datamodule import TaskStreamDataModule
from weaving.data.splits import parse_split_name, split_classes
from weaving.data.tasks import split_task


def digest(values) -> str:
    return hashlib.sha256(json.dumps(list(values)).encode()).hexdigest()


def test_recorded_orders_are_the_published_lists():
    cifar = class_orders.MAGMAX_CIFAR100_ORDER
    assert cifar[:12] == (70, 89, 11, 13, 63, 53, 86, 57, 41, 43, 14, 98) and cifar[-3:] == (12, 85, 32)
    assert digest(cifar) == "a1ee5c952c8f68306c35e71a71aa068dd8fcc370e64f8ab91259fbf7f3612bd3"
    shared = class_orders.MAGMAX_IMAGENET_R_CUB200_ORDER
    assert shared[:12] == (186, 157, 67, 59, 117, 1, 122, 14, 131, 40, 66, 199) and shared[-3:] == (189, 2, 27)
    assert digest(shared) == "e92aa031929aafbbffffe9f2c84c1f451ff320a47368bddfd2290755ab89f474"
    names = class_orders.IMAGENET_R_README_NAMES
    assert names[:3] == ("goldfish", "great_white_shark", "hammerhead") and names[-1] == "acorn"
    assert digest(names) == "10fc2660f5fc2e8cd553658eb549be6c5c1a62ff88ab3d106866ac7ee049c58c"
    assert sorted(cifar) == list(range(100)) and sorted(shared) == list(range(200)) and len(set(names)) == 200


def expected_parts(order, n):
    """Independent partition: positions C*i//n .. C*(i+1)//n - 1 of the order, each part sorted."""
    size = len(order)
    return [sorted(order[size * i // n:size * (i + 1) // n]) for i in range(n)]


def magmax_label_names():
    """MagMax's ImageNet-R labels: its ImageFolder over the README-named folders, i.e. sorted names."""
    return sorted(class_orders.IMAGENET_R_README_NAMES)


CASES = [(task, n) for task in ("cifar100", "imagenet_r", "cub200", "stanford_cars", "cars") for n in (5, 10, 20, 50)]


@pytest.mark.parametrize(("task", "n"), CASES)
def test_default_parts_are_magmax_parts(task, n):
    full = get_task(task)
    parts = [get_task(f"{task}_part{i + 1}of{n}") for i in range(n)]
    if task == "imagenet_r":
        # compare by MagMax's folder names: ours are labelled by WordNet id, MagMax's by sorted README name
        ours = [[class_orders.IMAGENET_R_README_NAMES[full.classnames.index(c)] for c in p.classnames] for p in parts]
        published = [sorted(magmax_label_names()[k] for k in part)
                     for part in expected_parts(class_orders.MAGMAX_IMAGENET_R_CUB200_ORDER, n)]
        assert [sorted(p) for p in ours] == published
    else:
        order = {"cifar100": class_orders.MAGMAX_CIFAR100_ORDER, "cub200": class_orders.MAGMAX_IMAGENET_R_CUB200_ORDER}
        published = expected_parts(order.get(task, list(range(full.num_classes))), n)  # cars: sorted (no order)
        assert [list(p.classnames) for p in parts] == [[full.classnames[k] for k in part] for part in published]
    assert sum(p.num_classes for p in parts) == full.num_classes


def test_cifar100_first_parts_by_hand():
    # CIFAR100 in 5 parts: positions 0..19 of MagMax's order, sorted
    assert split_classes(100, 5, 0, class_orders.MAGMAX_CIFAR100_ORDER) == sorted(
        [70, 89, 11, 13, 63, 53, 86, 57, 41, 43, 14, 98, 52, 73, 95, 96, 33, 16, 39, 74])
    assert get_task("cifar100_part10of10").classnames[-1] == "wardrobe"  # label 94, in the last part
    assert get_task("cifar100_part10of10_sorted").classnames[-1] == "worm"


def test_sorted_and_seeded_orders():
    assert class_orders.class_order("digits", 10) == tuple(range(10))
    assert class_orders.class_order("cifar100", 100, "sorted") == tuple(range(100))
    assert class_orders.class_order("digits", 10, 3) == tuple(np.random.RandomState(3).permutation(10).tolist())
    part = split_task("digits", 5, 0, 3)
    assert part.name == "digits_part1of5_seed3"
    first_two = sorted(np.random.RandomState(3).permutation(10)[:2].tolist())
    assert part.classnames == tuple(str(k) for k in first_two)
    assert get_task("digits_part1of5_seed3").classnames == part.classnames


def test_names_say_non_default_orders():
    assert split_task("cifar100", 10, 0, "magmax").name == "cifar100_part1of10"
    assert split_task("cifar100", 10, 0, "sorted").name == "cifar100_part1of10_sorted"
    assert split_task("digits", 5, 0, "sorted").name == "digits_part1of5"
    assert parse_split_name("cifar100_part3of10_seed7") == ("cifar100", 10, 2, 7)
    assert parse_split_name("cifar100_part3of10") == ("cifar100", 10, 2, None)


@pytest.mark.parametrize(("order", "message"), [("magmax", "MagMax publishes no class order for 'digits'"),
                                                ("random", "class_order='random' is unknown"),
                                                (-1, "class_order=-1 is unknown")])
def test_bad_orders_are_one_line_errors(order, message):
    with pytest.raises(ValueError, match=message):
        split_task("digits", 5, 0, order)


def test_stream_datamodule_names_its_parts_by_order():
    data = TaskStreamDataModule(["digits"], splits=5, class_order=3)
    assert data.task_names == [f"digits_part{i}of5_seed3" for i in range(1, 6)]
    assert TaskStreamDataModule(["cifar100"], splits=5).task_names[0] == "cifar100_part1of5"
    with pytest.raises(ValueError, match="needs splits"):
        TaskStreamDataModule(["digits"], class_order="sorted")
