"""Embedded offline tasks built from scikit-learn's 8x8 handwritten digits (shipped with scikit-learn).

Four domains of the same 1797 images, each a task with its own name and prompt templates:
"digits" (original), "digits_rot90" (rotated 90 degrees counter-clockwise), "digits_inverted" (colour-inverted)
and "digits_mirrored" (left-right flip). Images are upsampled to 32x32 PIL RGB images (the model transform
resizes them to the model's input size). Every domain uses the same stratified 70/10/20 train/val/test split
(seed 0), so a merged model can be evaluated on the same test images in every domain. No download, no root.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from weaving.data.tasks import Task, register_task

IMAGE_SIZE = 32
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
SPLIT_SEED = 0
CLASSNAMES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")

# A domain: the fixed array transform applied to each 8x8 image (values 0..16) and its prompt templates.
DOMAINS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], tuple[str, ...]]] = {
    "digits": (
        lambda image: image,
        ('a photo of the digit {}.', 'a photo of the number: "{}".', "a handwritten digit {}."),
    ),
    "digits_rot90": (
        lambda image: np.rot90(image),
        ("a rotated photo of the number {}.", "a photo of the digit {}, rotated.", "a rotated handwritten {}."),
    ),
    "digits_inverted": (
        lambda image: 16.0 - image,
        ("a colour-inverted photo of the digit {}.", "a negative photo of the number {}.",
         "a handwritten {} in dark ink on white."),
    ),
    "digits_mirrored": (
        lambda image: np.fliplr(image),
        ("a mirrored photo of the digit {}.", "a photo of the number {} seen in a mirror.",
         "a flipped handwritten {}."),
    ),
}


@lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 8, 8] float in 0..16, labels [N] int64) from scikit-learn, loaded once per process."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@lru_cache(maxsize=1)
def digits_split_indices() -> dict[str, np.ndarray]:
    """Stratified 70/10/20 train/val/test indices (seed 0), shared by every digits domain."""
    from sklearn.model_selection import train_test_split

    _, labels = load_digits_arrays()
    everything = np.arange(len(labels))
    rest, test = train_test_split(
        everything, test_size=SPLIT_FRACTIONS["test"], stratify=labels, random_state=SPLIT_SEED
    )
    val_share = SPLIT_FRACTIONS["val"] / (SPLIT_FRACTIONS["train"] + SPLIT_FRACTIONS["val"])
    train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=SPLIT_SEED)
    splits = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    for indices in splits.values():
        indices.setflags(write=False)
    return splits


def to_pil(image: np.ndarray, size: int = IMAGE_SIZE) -> Image.Image:
    """An 8x8 array with values 0..16 as a size x size RGB PIL image (white strokes on black)."""
    pixels = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels), mode="L").resize((size, size), Image.BILINEAR).convert("RGB")


class DigitsDataset(Dataset):
    """One split of one digits domain: items are (transform(PIL RGB image), int label)."""

    def __init__(self, domain: str, split: str, transform: Callable | None = None, image_size: int = IMAGE_SIZE):
        if domain not in DOMAINS:
            raise ValueError(f"unknown digits domain {domain!r}; known: {', '.join(DOMAINS)}")
        if split not in SPLIT_FRACTIONS:
            raise ValueError(f"unknown split {split!r} for {domain}; use one of: {', '.join(SPLIT_FRACTIONS)}")
        self.domain = domain
        self.split = split
        self.transform = transform
        self.image_size = image_size
        self.indices = digits_split_indices()[split]
        _, labels = load_digits_arrays()
        self.targets = [int(labels[j]) for j in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        images, _ = load_digits_arrays()
        array = DOMAINS[self.domain][0](images[self.indices[index]])
        image = to_pil(array, self.image_size)
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def _digits_factory(domain: str, root: Any, split: str, transform: Callable | None, download: bool) -> Dataset:
    # root and download are ignored: the images ship with scikit-learn.
    return DigitsDataset(domain, split, transform)


def digits_tasks() -> list[Task]:
    """The four digits domain tasks (10 classes each)."""
    return [
        Task(
            name=domain,
            classnames=CLASSNAMES,
            templates=templates,
            factory=partial(_digits_factory, domain),
            source="embedded (scikit-learn load_digits), no download",
        )
        for domain, (_, templates) in DOMAINS.items()
    ]


for _task in digits_tasks():
    register_task(_task)
