"""Decoded test sets: each test set is decoded and preprocessed once, stored on disk as uint8, and read back
as memory-mapped batches for every later evaluation.

A model's eval transform (open_clip: resize, center crop, RGB, to-tensor, normalize) is split at its
to-tensor step: the part before it (the expensive one: JPEG decoding, resize, crop) runs once into the
cache as uint8 [N, 3, H, W]; the normalization runs on the device, on every batch, and gives the same
float tensor as the full transform (to-tensor is x / 255, then (x - mean) / std, the same operations).

An entry is keyed by the task, split, dataset root, the transform's description, the input size and the
subset of samples; it is a folder `<cache_dir>/<task>-<split>-<key>/` holding `images.u8`, `labels.i64`
and `meta.json` (shapes and SHA-256 of both files). It is built in a temporary folder and renamed into
place, so an interrupted build leaves nothing behind; an entry whose files do not match `meta.json`
(truncated, corrupt) is rebuilt. A transform that cannot be split (no to-tensor step, or one producing
other than RGB uint8 images) is not cached: `open_test_set` then streams it through a DataLoader.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from weaving.io.publish import publish_folder

CACHE_FORMAT = "weaving.decoded/1"
CACHE_ENV = "WEAVING_CACHE_DIR"
_HASH_BLOCK = 1 << 24


def default_cache_dir() -> Path:
    """$WEAVING_CACHE_DIR, else ~/.cache/weaving/test_sets."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "weaving" / "test_sets"


# ------------------------------------------------------------------------------------- the transform split
def describe(step: Any) -> str:
    """A stable text for one transform step (no memory addresses), used in cache keys."""
    kind = type(step)
    if callable(step) and kind.__name__ == "function":
        return f"{step.__module__}.{step.__qualname__}"
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(step))
    simple = {k: v for k, v in sorted(vars(step).items()) if isinstance(v, (int, float, str, bool, tuple, type(None)))} \
        if hasattr(step, "__dict__") else {}
    return f"{kind.__module__}.{kind.__qualname__}:{text}:{simple}"


@dataclass(frozen=True)
class SplitTransform:
    """An eval transform split at its to-tensor step: `prepare` (PIL -> PIL, cached) and the normalization."""

    prepare: tuple[Callable, ...]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    description: str

    def __call__(self, image: Any) -> Tensor:
        """PIL image -> uint8 tensor [3, H, W] (the cached form)."""
        for step in self.prepare:
            image = step(image)
        if getattr(image, "mode", None) != "RGB":
            raise ValueError(f"the cached part of the transform must give RGB PIL images, got {type(image).__name__} "
                             f"mode {getattr(image, 'mode', None)!r}")
        return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def split_transform(transform: Callable) -> SplitTransform | None:
    """Split a torchvision `Compose([... PIL steps, ToTensor, Normalize?])` (open_clip's eval transform).

    None when the transform does not have that form (it is then not cached).
    """
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", [transform]))
    at = [i for i, step in enumerate(steps) if isinstance(step, T.ToTensor)]
    if len(at) != 1:
        return None
    prepare, rest = steps[: at[0]], steps[at[0] + 1:]
    if any(isinstance(step, (Tensor, T.Normalize)) for step in prepare):
        return None
    mean = std = None
    if rest:
        if len(rest) != 1 or not isinstance(rest[0], T.Normalize) or rest[0].inplace:
            return None
        mean, std = tuple(float(v) for v in rest[0].mean), tuple(float(v) for v in rest[0].std)
    text = " | ".join(describe(step) for step in prepare)
    return SplitTransform(tuple(prepare), mean, std, f"{text} | to_tensor | normalize(mean={mean}, std={std})")


def normalize(images: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """uint8 [B, 3, H, W] -> float32, the same values as to-tensor then Normalize(mean, std) image by image."""
    out = images.to(torch.float32).div_(255)
    if mean is not None:
        out.sub_(torch.as_tensor(mean, dtype=out.dtype, device=out.device).view(1, -1, 1, 1))
        out.div_(torch.as_tensor(std, dtype=out.dtype, device=out.device).view(1, -1, 1, 1))
    return out


# ------------------------------------------------------------------------------------------- the entries
def cache_key(task: str, split: str, root: str | os.PathLike, transform: str, image_size: Any,
              subset: Sequence[int] | None = None) -> str:
    """The entry name for a test set: "<task>-<split>-<hash of everything that changes its content>"."""
    subset_hash = None if subset is None else hashlib.sha256(np.asarray(subset, dtype=np.int64).tobytes()).hexdigest()
    fields = {"format": CACHE_FORMAT, "task": task, "split": split, "root": str(Path(root).expanduser().resolve()),
              "transform": transform, "image_size": json.loads(json.dumps(image_size)), "subset": subset_hash}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', task)}-{split}-{digest}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _read_entry(folder: Path, key: str) -> dict[str, Any] | None:
    """The entry's meta.json if the entry is complete and its files match it, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        shape = tuple(int(v) for v in meta["shape"])
        images, labels = folder / "images.u8", folder / "labels.i64"
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key or len(shape) != 4:
            return None
        if images.stat().st_size != int(np.prod(shape)) or labels.stat().st_size != 8 * shape[0]:
            return None
        if _sha256(images) != meta["images_sha256"] or _sha256(labels) != meta["labels_sha256"]:
            return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _auto_workers(n: int) -> int:
    return 0 if n < 2048 else min(8, os.cpu_count() or 1)


def _build_entry(folder: Path, key: str, dataset: Dataset, *, num_workers: int | None, progress: bool,
                 desc: str, extra: dict[str, Any]) -> None:
    """Decode `dataset` (items: uint8 [3, H, W], label) into a temporary folder published as `folder`
    (weaving.io.publish: an interrupted build leaves nothing; a corrupt entry, checked by the caller, is
    replaced)."""
    n = len(dataset)
    if n == 0:
        raise ValueError(f"the test set of {desc!r} is empty; check the dataset root and split")
    with publish_folder(folder, overwrite=True) as tmp:
        workers = _auto_workers(n) if num_workers is None else num_workers
        loader = DataLoader(dataset, batch_size=64, shuffle=False, num_workers=workers)
        image_hash, label_hash, images, written = hashlib.sha256(), hashlib.sha256(), None, 0
        with open(tmp / "labels.i64", "wb") as label_file, \
                tqdm(total=n, desc=f"decoding {desc} once (cache)", unit="img", disable=not progress) as bar:
            for batch, labels in loader:
                if batch.dtype != torch.uint8 or batch.ndim != 4:
                    raise ValueError(f"{desc}: the cached transform gave {batch.dtype} {tuple(batch.shape)}, not uint8 images")
                if images is None:
                    images = np.memmap(tmp / "images.u8", dtype=np.uint8, mode="w+", shape=(n, *batch.shape[1:]))
                if tuple(batch.shape[1:]) != images.shape[1:]:
                    raise ValueError(f"{desc}: images of different sizes {tuple(batch.shape[1:])} and "
                                     f"{images.shape[1:]}; the transform must crop to one size to be cached")
                array = batch.numpy()
                images[written: written + len(array)] = array
                image_hash.update(array.tobytes())
                label_bytes = np.asarray(labels, dtype=np.int64).tobytes()
                label_file.write(label_bytes)
                label_hash.update(label_bytes)
                written += len(array)
                bar.update(len(array))
        images.flush()
        del images
        meta = {"format": CACHE_FORMAT, "key": key, "shape": [n, *batch.shape[1:]],
                "images_sha256": image_hash.hexdigest(), "labels_sha256": label_hash.hexdigest(), **extra}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


# ------------------------------------------------------------------------------------------- test sets
class DecodedTestSet:
    """A cached test set: uint8 images [N, 3, H, W] (memory-mapped), int64 labels, and its normalization."""

    def __init__(self, folder: Path, meta: dict[str, Any], mean: Sequence[float] | None, std: Sequence[float] | None):
        self.folder = folder
        shape = tuple(meta["shape"])
        self.images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=shape)
        self.labels = torch.from_numpy(np.fromfile(folder / "labels.i64", dtype=np.int64))
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, device: torch.device | str, *, pin_memory: bool | None = None
                ) -> Iterator[tuple[Tensor, Tensor]]:
        """(normalized float32 images, labels) on `device`, each batch copied to the device once.

        On CUDA the uint8 batch goes through pinned memory with a non-blocking copy (4x fewer bytes than
        float32), the next batch's copy is issued before the current one is used, and it is normalized there.
        """
        device = torch.device(device)
        pin = device.type == "cuda" if pin_memory is None else pin_memory

        def stage(start: int) -> tuple[Tensor, Tensor]:
            chunk = torch.from_numpy(np.array(self.images[start: start + batch_size]))
            labels = self.labels[start: start + batch_size]
            if pin:
                chunk, labels = chunk.pin_memory(), labels.pin_memory()
            return chunk.to(device, non_blocking=pin), labels.to(device, non_blocking=pin)

        starts = range(0, len(self), batch_size)
        staged = stage(0) if len(self) else None
        for i, _ in enumerate(starts):
            images, labels = staged
            staged = stage(starts[i + 1]) if i + 1 < len(starts) else None
            yield normalize(images, self.mean, self.std), labels


class DecodedDataset(Dataset):
    """A `DecodedTestSet` as a map-style Dataset of (normalized float32 [3, H, W], label), for DataLoaders
    (e.g. `MultiTaskDataModule(decoded_cache=True)` under `weaving validate`)."""

    def __init__(self, test_set: DecodedTestSet) -> None:
        self.test_set = test_set

    def __len__(self) -> int:
        return len(self.test_set)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = torch.from_numpy(np.array(self.test_set.images[index]))
        return normalize(image[None], self.test_set.mean, self.test_set.std)[0], int(self.test_set.labels[index])


class StreamedTestSet:
    """A test set that is not cached: decoded and transformed through a DataLoader on every pass."""

    def __init__(self, dataset: Dataset, *, num_workers: int | None = None):
        self.dataset = dataset
        self.num_workers = _auto_workers(len(dataset)) if num_workers is None else num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, batch_size: int, device: torch.device | str, *, pin_memory: bool | None = None
                ) -> Iterator[tuple[Tensor, Tensor]]:
        device = torch.device(device)
        pin = device.type == "cuda" if pin_memory is None else pin_memory
        loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=False, num_workers=self.num_workers,
                            pin_memory=pin, persistent_workers=False)
        for images, labels in loader:
            yield images.to(device, non_blocking=pin), torch.as_tensor(labels).to(device, non_blocking=pin)


def open_test_set(task: str, *, root: str | os.PathLike = "data", split: str = "test", transform: Callable,
                  image_size: Any = None, cache_dir: str | os.PathLike | None = None, cache: bool = True,
                  download: bool = False, subset: Sequence[int] | None = None, num_workers: int | None = None,
                  progress: bool = True) -> DecodedTestSet | StreamedTestSet:
    """A task's test set ready for evaluation: from the decoded cache (built on first use), or streamed.

    `image_size` is the model's input size (part of the key); `subset` keeps those indices of the split.
    """
    from weaving.data.tasks import get_task

    spec = get_task(task)
    parts = split_transform(transform) if cache else None
    if parts is None:
        dataset = spec.dataset(root, split, transform, download=download)
        return StreamedTestSet(Subset(dataset, list(subset)) if subset is not None else dataset, num_workers=num_workers)
    key = cache_key(spec.name, split, root, parts.description, image_size, subset)
    folder = Path(default_cache_dir() if cache_dir is None else cache_dir).expanduser() / key
    meta = _read_entry(folder, key) if folder.exists() else None
    if meta is None:
        dataset = spec.dataset(root, split, parts, download=download)
        if subset is not None:
            dataset = Subset(dataset, list(subset))
        extra = {"task": spec.name, "split": split, "root": str(Path(root).expanduser()), "transform": parts.description,
                 "image_size": json.loads(json.dumps(image_size))}
        _build_entry(folder, key, dataset, num_workers=num_workers, progress=progress, desc=f"{spec.name} {split}",
                     extra=extra)
        meta = _read_entry(folder, key)
        if meta is None:
            raise OSError(f"the decoded cache entry {folder} does not read back; check the disk under {folder.parent}")
    return DecodedTestSet(folder, meta, parts.mean, parts.std)
