"""Generate random-content JPEG image folders at the real datasets' sizes, in their real layouts.

For measuring data pipelines without downloading anything: every folder is laid out as the real dataset is
shipped, so `weaving.data.get_task(name).dataset(root, split, transform)` reads it with the same loaders
(torchvision SUN397 / EuroSAT / DTD, ImageFolder for RESISC45 / ImageNet-R / CUB-200). Image content is
smooth random colour fields with noise (decodes like a photo, not like white noise); image counts and
sizes follow the real datasets (`--scale` takes a fraction of the count, keeping every class).

    python benchmarks/jpeg_folders.py /tmp/jpeg-data --scale 0.02              # all six, 2% of the images
    python benchmarks/jpeg_folders.py /tmp/jpeg-data --datasets sun397 --scale 1
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

# name: (images in the real dataset, candidate (width, height) sizes of its images)
DATASETS = {
    "sun397": (108_754, [(500, 375), (640, 480), (375, 500), (800, 600), (500, 333)]),
    "resisc45": (31_500, [(256, 256)]),
    "eurosat": (27_000, [(64, 64)]),
    "dtd": (5_640, [(300, 300), (480, 480), (640, 480), (640, 640), (500, 375)]),
    "imagenet_r": (30_000, [(400, 300), (500, 500), (600, 450), (300, 400), (800, 600)]),
    "cub200": (11_788, [(500, 375), (500, 333), (375, 500), (500, 400)]),
}
EUROSAT_FOLDERS = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake"]


def folder_name(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower() or "x"


def random_image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A smooth random colour field (a coarse grid upsampled) plus mild noise."""
    width, height = size
    coarse = rng.integers(0, 256, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def save(path: Path, rng: np.random.Generator, sizes: list[tuple[int, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    random_image(rng, sizes[int(rng.integers(len(sizes)))]).save(path, quality=90)


def per_class(total: int, classes: int, scale: float) -> int:
    return max(1, round(total * scale / classes))


def generate(name: str, root: Path, scale: float, seed: int = 0) -> int:
    """Write one dataset under `root`; returns the number of images."""
    from weaving.data import get_task

    rng = np.random.default_rng(seed)
    total, sizes = DATASETS[name]
    classes = list(get_task(name).classnames)
    count = per_class(total, len(classes), scale)
    written = 0
    if name == "sun397":
        base = root / "SUN397"
        lines = []
        for cls in classes:
            folder = folder_name(cls)
            lines.append(f"/{folder[0]}/{folder}")
            for i in range(count):
                save(base / folder[0] / folder / f"sun_{written:08d}.jpg", rng, sizes)
                written += 1
        (base / "ClassName.txt").write_text("".join(f"{line}\n" for line in lines))
    elif name == "eurosat":
        for folder in EUROSAT_FOLDERS:
            for i in range(count):
                save(root / "eurosat" / "2750" / folder / f"{folder}_{i + 1}.jpg", rng, sizes)
                written += 1
    elif name == "resisc45":
        for cls in classes:
            folder = folder_name(cls)
            for i in range(count):
                save(root / "NWPU-RESISC45" / folder / f"{folder}_{i + 1:03d}.jpg", rng, sizes)
                written += 1
    elif name == "imagenet_r":
        for c in range(len(classes)):
            for i in range(count):
                save(root / "imagenet-r" / f"n{c:08d}" / f"image_{i}.jpg", rng, sizes)
                written += 1
    elif name == "dtd":
        base = root / "dtd" / "dtd"
        splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for cls in classes:
            folder = folder_name(cls)
            for i in range(count):
                file = f"{folder}_{i + 1:04d}.jpg"
                save(base / "images" / folder / file, rng, sizes)
                splits[("train", "val", "test")[i % 3]].append(f"{folder}/{file}")
                written += 1
        (base / "labels").mkdir(parents=True, exist_ok=True)
        for split, files in splits.items():
            (base / "labels" / f"{split}1.txt").write_text("".join(f"{file}\n" for file in files))
    elif name == "cub200":
        base = root / "CUB_200_2011"
        images, flags = [], []
        for c, cls in enumerate(classes):
            folder = f"{c + 1:03d}.{cls.replace(' ', '_')}"
            for i in range(count):
                relative = f"{folder}/{folder.split('.', 1)[1]}_{i + 1:04d}.jpg"
                save(base / "images" / relative, rng, sizes)
                written += 1
                images.append(f"{written} {relative}")
                flags.append(f"{written} {written % 2}")
        (base / "images.txt").write_text("\n".join(images) + "\n")
        (base / "train_test_split.txt").write_text("\n".join(flags) + "\n")
    else:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="data root to write into (the datasets' own folders are created under it)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real image count (every class kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 < args.scale <= 1:
        sys.exit("jpeg_folders: error: --scale must be in (0, 1]")
    root = Path(args.root)
    for index, name in enumerate(args.datasets):
        start = time.perf_counter()
        written = generate(name, root, args.scale, seed=args.seed + index)
        print(f"{name}: {written} images in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
