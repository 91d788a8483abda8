"""Shared helpers: a tiny, fast fine-tuning run on the embedded digits tasks."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from weaving.data.datamodule import TaskStreamDataModule
from weaving.training import FineTuner, TaskVectorWriter


@pytest.fixture(autouse=True)
def _quiet() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


class Crash(Exception):
    """Raised by CrashAtStep to kill a run mid-stream."""


class CrashAtStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Crash(f"killed at step {self.step}")


def fit_stream(
    root: Path,
    *,
    tasks: Sequence[str] = ("digits", "digits_rot90"),
    splits: int | None = None,
    stream: str = "sequential",
    epochs_per_task: int = 1,
    batches: int = 2,
    batch_size: int = 8,
    shuffle: bool = True,
    augment: bool = True,
    callbacks: Sequence[Callback] = (),
    ckpt_path: str | None = None,
    module_kwargs: dict | None = None,
    lr: float = 1e-3,
    warmup_steps: int = 1,
    overwrite: bool = False,
    **trainer_kwargs,
) -> tuple[pl.Trainer, FineTuner]:
    """Fit a tiny FineTuner over a digits stream; writes task vectors and checkpoints under `root`."""
    pl.seed_everything(0, verbose=False)
    data = TaskStreamDataModule(list(tasks), splits=splits, batch_size=batch_size, shuffle=shuffle,
                                augment=augment, seed=0)
    module = FineTuner(stream=stream, epochs_per_task=epochs_per_task, lr=lr, warmup_steps=warmup_steps, **(module_kwargs or {}))
    trainer_kwargs = {"limit_val_batches": 0, "num_sanity_val_steps": 0, **trainer_kwargs}
    trainer = pl.Trainer(
        default_root_dir=root, accelerator="cpu", devices=1, limit_train_batches=batches, logger=False,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
        callbacks=[TaskVectorWriter(overwrite=overwrite), ModelCheckpoint(dirpath=root / "ckpt", save_last=True), *callbacks],
        **trainer_kwargs,
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return trainer, module


class WeightRecorder(Callback):
    """Encoder weights, lr and optimizer-state size at the first and last step of every task."""

    def __init__(self) -> None:
        self.starts: list[dict[str, torch.Tensor]] = []
        self.ends: list[dict[str, torch.Tensor]] = []
        self.first_lrs: list[float] = []
        self.state_sizes: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0 and trainer.current_epoch % pl_module.hparams.epochs_per_task == 0:
            self.starts.append(pl_module.visual_state())
            self.first_lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
            self.state_sizes.append(len(trainer.optimizers[0].state))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last_epoch = (trainer.current_epoch + 1) % pl_module.hparams.epochs_per_task == 0
        if batch_idx + 1 == trainer.num_training_batches and last_epoch:
            self.ends.append(pl_module.visual_state())


class LrRecorder(Callback):
    """(global step, lr) of every optimizer step, the lr read from the optimizer as it steps; and the
    scheduler's state dict at the end of the fit."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float]] = []
        self.scheduler_state: dict | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps.append((trainer.global_step, optimizer.param_groups[0]["lr"]))

    def on_train_end(self, trainer, pl_module) -> None:
        self.scheduler_state = trainer.lr_scheduler_configs[0].scheduler.state_dict()
