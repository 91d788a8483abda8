"""Embedded digits tasks: four domains, shared deterministic stratified splits, fixed transforms."""

from __future__ import annotations

import numpy as np
import pytest

from weaving.data import get_task
from weaving.data import digits as D

DOMAINS = ("digits", "digits_rot90", "digits_inverted", "digits_mirrored")


def test_four_domain_tasks_with_own_templates():
    tasks = [get_task(name) for name in DOMAINS]
    assert all(t.classnames == tuple(str(k) for k in range(10)) for t in tasks)
    assert len({t.templates for t in tasks}) == 4  # each domain has its own prompts
    assert "rotated" in " ".join(get_task("digits_rot90").templates)


def test_splits_are_70_10_20_disjoint_stratified_and_cover_everything():
    splits = D.digits_split_indices()
    _, labels = D.load_digits_arrays()
    total = len(labels)
    assert total == 1797
    sizes = {name: len(idx) for name, idx in splits.items()}
    assert sizes == {"train": 1257, "val": 180, "test": 360}
    together = np.concatenate(list(splits.values()))
    assert len(np.unique(together)) == total  # disjoint and covering
    for indices in splits.values():
        counts = np.bincount(labels[indices], minlength=10)
        share = counts / counts.sum()
        assert np.all(np.abs(share - 0.1) < 0.02)  # stratified: every class near 10%


def test_splits_are_deterministic():
    first = {k: v.copy() for k, v in D.digits_split_indices().items()}
    D.digits_split_indices.cache_clear()
    second = D.digits_split_indices()
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_domains_share_split_indices_and_labels():
    datasets = [get_task(name).dataset("ignored", "test") for name in DOMAINS]
    assert all(np.array_equal(d.indices, datasets[0].indices) for d in datasets)
    assert all(d.targets == datasets[0].targets for d in datasets)


@pytest.mark.parametrize(
    ("domain", "transform"),
    [
        ("digits", lambda a: a),
        ("digits_rot90", np.rot90),
        ("digits_inverted", lambda a: 16.0 - a),
        ("digits_mirrored", np.fliplr),
    ],
)
def test_domain_images_are_fixed_transforms_of_the_original(domain, transform):
    data = get_task(domain).dataset("ignored", "train")
    images, labels = D.load_digits_arrays()
    image, label = data[3]
    source = data.indices[3]
    assert label == labels[source]
    assert image.mode == "RGB" and image.size == (D.IMAGE_SIZE, D.IMAGE_SIZE)
    assert list(image.getdata()) == list(D.to_pil(transform(images[source])).getdata())


def test_domains_differ_from_each_other():
    pixels = [np.asarray(get_task(name).dataset("ignored", "train")[0][0]) for name in DOMAINS]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.array_equal(pixels[a], pixels[b])


def test_load_digits_runs_once_per_process():
    D.load_digits_arrays()
    before = D.load_digits_arrays.cache_info()
    get_task("digits_mirrored").dataset("ignored", "val")[0]
    after = D.load_digits_arrays.cache_info()
    assert after.misses == before.misses and after.hits > before.hits


def test_transform_is_applied():
    data = get_task("digits").dataset("ignored", "val", transform=lambda image: np.asarray(image).shape)
    assert data[0][0] == (D.IMAGE_SIZE, D.IMAGE_SIZE, 3)
