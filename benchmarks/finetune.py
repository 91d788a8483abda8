"""Fine-tuning throughput: our FineTuner under Lightning vs a bare PyTorch loop doing the same step.

Synthetic images and labels already on the device (no data loading), so the numbers are the training step
alone: forward through the image encoder and the frozen zero-shot head, cross-entropy, backward, grad-norm
clip 1.0, AdamW, warmup + cosine lr. Reports images/s for both, Lightning's overhead, and model FLOPs
utilisation (MFU: counted training FLOPs per second / the device's peak dense bf16 FLOP/s).

    python benchmarks/finetune.py                                  # ViT-B-32 and ViT-B-16, 224px, bf16, cuda
    python benchmarks/finetune.py --device cpu --model weaving-tiny-vit --steps 20 --batch-size 32

Each loop runs --warmup untimed steps, then times --steps - --warmup steps; with --repeats R both loops are
measured R times, alternating, and the best of each is kept (use it on a shared or noisy machine).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
import warnings
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.flop_counter import FlopCounterMode

from weaving.models import build_head, load_clip
from weaving.training import FineTuner, WarmupCosine

# Peak dense bf16 tensor-core FLOP/s by device name (vendor data sheets); --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0}


@dataclass(frozen=True)
class SyntheticTask:
    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...] = ("a photo of a {}.",)


class RepeatedBatch:
    """An iterable with a length: the same batch `steps` times (Lightning reads a plain list as many loaders)."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return iter([self.batch] * self.steps)


class SyntheticStream(pl.LightningDataModule):
    """A one-task stream whose train loader yields the same on-device batch `steps` times."""

    def __init__(self, model: str, images: torch.Tensor, labels: torch.Tensor, steps: int, num_classes: int):
        super().__init__()
        self.model, self.task_names, self.current_task = model, ["synthetic"], 0
        self._task = SyntheticTask("synthetic", tuple(f"class {i}" for i in range(num_classes)))
        self._batches = RepeatedBatch((images, labels), steps)

    def get_task(self, index: int) -> SyntheticTask:
        return self._task

    def train_dataloader(self) -> RepeatedBatch:
        return self._batches


class StepTimer(Callback):
    """Wall time from the first step after warm-up to the end of the last step (device synchronized)."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.start, self.end = warmup, device, 0.0, 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end = self._now()


def synthetic_batch(size: int, batch_size: int, num_classes: int, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, size, size, generator=generator).to(device)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
    return images, labels


def autocast(device: torch.device, precision: str):
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lightning_throughput(args, device: torch.device, images, labels) -> float:
    module = FineTuner(model=args.model, seed=0, lr=1e-5, warmup_steps=500, compile=args.compile)
    data = SyntheticStream(module.model_name, images, labels, args.steps, args.num_classes)
    timer = StepTimer(args.warmup, device)
    trainer = pl.Trainer(
        accelerator=device.type if device.type != "cuda" else "gpu", devices=1, precision=args.precision,
        max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    trainer.fit(module, data)
    return (args.steps - args.warmup) * len(labels) / (timer.end - timer.start)


def bare_throughput(args, device: torch.device, images, labels) -> tuple[float, float]:
    """The same step in plain PyTorch; also returns the counted FLOPs of one training step."""
    bundle = load_clip(args.model, None, seed=0)
    classnames = [f"class {i}" for i in range(args.num_classes)]
    head = build_head(bundle, classnames, ["a photo of a {}."]).to(device).requires_grad_(False)
    visual = bundle.model.visual.to(device).train()
    del bundle
    if args.compile:
        visual.compile()
    optimizer = torch.optim.AdamW(visual.parameters(), lr=1e-5, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(500, args.steps))

    def step() -> None:
        with autocast(device, args.precision):
            logits = head(visual(images))
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(visual.parameters(), 1.0)
        optimizer.step()
        scheduler.step()

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(device, args.precision):
            logits = head(visual(images))
        F.cross_entropy(logits.float(), labels).backward()
    optimizer.zero_grad(set_to_none=True)
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps - args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    return (args.steps - args.warmup) * len(labels) / elapsed, float(counter.get_total_flops())


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():  # most specific names first
        if key in name:
            return value
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["ViT-B-32", "ViT-B-16"], dest="models")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default=None, help="Lightning precision; default bf16-mixed (cuda), 32-true (cpu)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's own input size")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1, help="measure each loop this often, keep the best")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by GPU name)")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible; use --device cpu (with a small --model)")
    args.precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.backends.cuda.matmul.allow_tf32 = True

    peak = peak_tflops(device, args.peak_tflops)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {device_name}; precision {args.precision}; batch {args.batch_size}; "
          f"{args.steps - args.warmup} timed steps after {args.warmup}; torch {torch.__version__}, "
          f"lightning {pl.__version__}")
    print("| model | image size | Lightning img/s | bare PyTorch img/s | Lightning overhead | "
          "train GFLOP/img | achieved TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models:
        args.model = model
        size = args.image_size or load_clip(model, None, seed=0).model.visual.image_size[0]
        images, labels = synthetic_batch(size, args.batch_size, args.num_classes, device)
        bare = lightning = 0.0
        for _ in range(args.repeats):  # alternate, so a busy moment on a shared machine hits both alike
            bare_run, flops = bare_throughput(args, device, images, labels)
            bare = max(bare, bare_run)
            lightning = max(lightning, lightning_throughput(args, device, images, labels))
        overhead = (bare - lightning) / bare
        flops_per_image = flops / args.batch_size
        achieved = flops_per_image * bare / 1e12
        mfu = f"{achieved / peak:.1%}" if peak else "n/a"
        print(f"| {model} | {size} | {lightning:,.0f} | {bare:,.0f} | {overhead:+.1%} | "
              f"{flops_per_image / 1e9:.3f} | {achieved:.3f} | {mfu} |", flush=True)


if __name__ == "__main__":
    main()
