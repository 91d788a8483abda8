"""Training data pipeline throughput on JPEG image folders (make them with benchmarks/jpeg_folders.py).

Measures, on one task's training split read by weaving's own loaders:
- decode: open + decode + RGB conversion only, one process;
- decode + train transform: open_clip's training preprocessing of the model (random resized crop,
  to tensor, normalize), one process; the same with the evaluation transform;
- DataLoader: images/s over --epochs epochs for each --workers count, with persistent workers off and on,
  and pinned memory on when CUDA is present (the settings the DataModules use).

    python benchmarks/jpeg_folders.py /tmp/jpeg-data --datasets sun397 --scale 0.02
    python benchmarks/data_pipeline.py /tmp/jpeg-data --task sun397 --workers 0 1 2 --epochs 2
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, Subset


def images_per_second(dataset, limit: int) -> float:
    count = min(limit, len(dataset))
    start = time.perf_counter()
    for i in range(count):
        dataset[i]
    return count / (time.perf_counter() - start)


def loader_rate(dataset, batch_size: int, workers: int, persistent: bool, epochs: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        pin_memory=torch.cuda.is_available(), persistent_workers=persistent and workers > 0,
                        generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for images, _labels in loader:
            seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--task", default="sun397")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--images", type=int, default=256, help="images used per measurement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="keep the best of R runs of each measurement")
    args = parser.parse_args()

    import open_clip

    from weaving.data import get_task

    _, train_transform, eval_transform = open_clip.create_model_and_transforms(args.model, device="meta")
    task = get_task(args.task)

    def split(transform):
        dataset = task.dataset(args.root, "train", transform)
        return Subset(dataset, range(min(args.images, len(dataset))))

    best = lambda f: max(f() for _ in range(args.repeats))  # noqa: E731
    rows = [("decode only (1 process)", best(lambda: images_per_second(split(None), args.images))),
            ("decode + train transform (1 process)", best(lambda: images_per_second(split(train_transform), args.images))),
            ("decode + eval transform (1 process)", best(lambda: images_per_second(split(eval_transform), args.images)))]
    train = split(train_transform)
    for workers in args.workers:
        for persistent in ([False, True] if workers > 0 else [False]):
            label = f"DataLoader, {workers} workers" + (", persistent" if persistent else "")
            rows.append((label, best(lambda: loader_rate(train, args.batch_size, workers, persistent, args.epochs))))
    print(f"| {args.task}: {len(train)} train images, {args.model} transforms | images/s |")
    print("|---|---|")
    for label, rate in rows:
        print(f"| {label} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
