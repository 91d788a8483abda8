"""TaskVectorWriter: saves theta_t - theta_pre of the image encoder at the end of each task of a stream.

Files: `<run dir>/task_vectors/<task>.safetensors` (keys "visual.*", with metadata) and
`<run dir>/task_vectors/index.json` listing them in stream order; both written atomically by rank zero.
The run dir defaults to `trainer.default_root_dir` (configs set it to `checkpoints/<run>`): unlike
`trainer.log_dir` it does not move to a new `version_N` folder when a run is resumed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import open_clip
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

import weaving
from weaving.merging.task_vectors import save_task_vector, write_json_atomic
from weaving.training.finetune import FineTuner, classes_digest

MAX_CLASSES_IN_METADATA = 1000  # longer class lists are stored as a hash only


class TaskVectorWriter(Callback):
    """Writes one task vector per finished task (see module docstring).

    It writes right after the task's last optimizer step, before validation and before ModelCheckpoint
    saves, so a checkpoint never records a finished task whose vector is missing. Tasks finished before a
    resumed run's checkpoint are not trained again and so are not rewritten.

    Args:
        dirpath: run dir; task vectors go to `<dirpath>/task_vectors/`. None: `trainer.default_root_dir`.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def folder(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir) / "task_vectors"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not isinstance(pl_module, FineTuner):
            raise ValueError(f"TaskVectorWriter needs model.class_path weaving.training.FineTuner, "
                             f"got {type(pl_module).__name__}")
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        last_epoch_of_task = (trainer.current_epoch + 1) % pl_module.hparams.epochs_per_task == 0
        if last_batch and last_epoch_of_task:
            self.write(trainer, pl_module)

    def write(self, trainer: pl.Trainer, module: FineTuner) -> Path:
        """Write the current task's vector and update index.json (rank zero only; others just return)."""
        task_index = module.task_index
        name = module.task_names[task_index]
        folder = self.folder(trainer)
        path = folder / f"{name}.safetensors"
        tensors = module.task_vector()  # every rank computes it: cheap, and keeps ranks in step
        if not trainer.is_global_zero:
            return path
        classnames = list(trainer.datamodule.get_task(task_index).classnames)
        steps = module.hparams.epochs_per_task * _steps_per_epoch(trainer)
        metadata = {
            "format": "weaving.task_vector/1",
            "model": module.model_name,
            "pretrained": module.pretrained or "",
            "seed": str(module.hparams.seed),
            "task": name,
            "task_index": str(task_index),
            "stream": module.hparams.stream,
            "num_classes": str(len(classnames)),
            "classes_sha256": classes_digest(classnames),
            "steps": str(steps),
            "global_step": str(trainer.global_step),
            "epochs": str(module.hparams.epochs_per_task),
            "weaving_version": weaving.__version__,
            "torch_version": torch.__version__,
            "open_clip_version": open_clip.__version__,
            "lightning_version": pl.__version__,
        }
        if len(classnames) <= MAX_CLASSES_IN_METADATA:
            metadata["classes"] = json.dumps(classnames)
        save_task_vector(path, tensors, metadata)
        rank_zero_info(f"wrote task vector {path}")
        self._update_index(folder, module, {
            "task": name, "file": path.name, "task_index": task_index, "steps": steps,
            "global_step": trainer.global_step, "classes_sha256": metadata["classes_sha256"],
        })
        return path

    @staticmethod
    def _update_index(folder: Path, module: FineTuner, entry: dict[str, Any]) -> None:
        """Replace (or add) this task's entry; entries stay in stream order."""
        index_path = folder / "index.json"
        entries: list[dict[str, Any]] = []
        if index_path.is_file():
            try:
                previous = json.loads(index_path.read_text())
                entries = list(previous.get("task_vectors", [])) if isinstance(previous, dict) else []
            except json.JSONDecodeError:
                entries = []  # an unreadable index is rebuilt from this run's writes
        entries = [e for e in entries if e.get("task") != entry["task"] and e.get("task") in module.task_names]
        entries.append(entry)
        entries.sort(key=lambda e: module.task_names.index(e["task"]))
        write_json_atomic(index_path, {
            "model": module.model_name,
            "pretrained": module.pretrained,
            "seed": module.hparams.seed,
            "stream": module.hparams.stream,
            "tasks": module.task_names,
            "task_vectors": entries,
        })


def _steps_per_epoch(trainer: pl.Trainer) -> int:
    return -(-int(trainer.num_training_batches) // trainer.accumulate_grad_batches)

