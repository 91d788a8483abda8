"""TaskVectorWriter: saves theta_t - theta_pre of the image encoder at the end of each task of a stream.

It writes a run folder (`weaving.io.runs`): `<run dir>/pretrained.safetensors` (theta_pre; skipped for a public
open_clip tag, whose name and hash are recorded instead), `<run dir>/task_vectors/<task>.safetensors` (keys
"visual.*", with metadata and the run identity) and `<run dir>/task_vectors/index.json` listing them in
stream order; all written atomically by rank zero. The run dir defaults to `trainer.default_root_dir`:
unlike `trainer.log_dir` it does not move to a new `version_N` folder when a run is resumed.

A fresh fit into a run dir that holds another run's files (task vectors, index.json, theta_pre, or
checkpoints in a ModelCheckpoint folder) is refused with one line unless `overwrite` (then those files are
deleted first); a resumed fit (`--ckpt_path`) must belong to the run recorded in index.json, and the task
vectors of the tasks it finished before its checkpoint must all be there (it refuses, naming them, before
any training or any write: a later checkpoint cannot recreate them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import open_clip
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

import weaving
from weaving.io.writer import save_state_dict
from weaving.merging.task_vectors import save_task_vector
from weaving.io.runs import (INDEX_NAME, PRETRAINED_FILE, TASK_VECTORS_DIR, RunIdentity, check_same_base, index_payload,
                             read_index, run_contents, write_index)

if TYPE_CHECKING:  # the fine-tuner imports this writer (its default callback), not the other way round
    from weaving.training.finetune import FineTuner

MAX_CLASSES_IN_METADATA = 1000  # longer class lists are stored as a hash only


def classes_digest(classnames: Sequence[str]) -> str:
    """A short stable hash of a task's class names, for metadata and checks."""
    return hashlib.sha256("\n".join(classnames).encode()).hexdigest()[:16]


class TaskVectorWriter(Callback):
    """Writes one task vector per finished task (see module docstring).

    It writes right after the task's last optimizer step, before validation and before ModelCheckpoint
    saves, so a checkpoint never records a finished task whose vector is missing. Tasks finished before a
    resumed run's checkpoint are not trained again and so are not rewritten.

    Args:
        dirpath: run dir; task vectors go to `<dirpath>/task_vectors/`. None: `trainer.default_root_dir`.
        overwrite: replace another run found in the run dir (`weaving fit --overwrite`); False refuses.
        save_pretrained: write theta_pre to `<dirpath>/pretrained.safetensors`. None: unless `pretrained`
            is a public open_clip tag (then the tag and the hash identify it).
    """

    def __init__(self, dirpath: str | None = None, overwrite: bool = False, save_pretrained: bool | None = None) -> None:
        self.dirpath = dirpath
        self.overwrite = overwrite
        self.save_pretrained = save_pretrained

    def run_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    def folder(self, trainer: pl.Trainer) -> Path:
        return self.run_dir(trainer) / TASK_VECTORS_DIR

    @staticmethod
    def _finetuner(pl_module: pl.LightningModule) -> FineTuner:
        if not callable(getattr(pl_module, "task_vector", None)):  # what the writer calls: FineTuner's API
            raise ValueError(f"TaskVectorWriter needs model.class_path weaving.training.FineTuner, "
                             f"got {type(pl_module).__name__}")
        return pl_module

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the run dir against this run (every rank reads; rank zero writes), before any training."""
        module = self._finetuner(pl_module)
        run_dir = self.run_dir(trainer)
        if trainer.ckpt_path is None:
            stale = run_contents(run_dir) + self._checkpoints(trainer)
            if stale and not self.overwrite:
                raise ValueError(
                    f"{run_dir} already holds a run ({len(stale)} files, e.g. {stale[0]}); pass --overwrite to "
                    "replace it, --ckpt_path last to resume it, or --trainer.default_root_dir DIR for a new folder")
            trainer.strategy.barrier()  # every rank has looked before rank zero changes anything
            if trainer.is_global_zero:
                for path in stale:
                    path.unlink(missing_ok=True)
        else:
            folder = self.folder(trainer)
            index = read_index(folder)
            if index is not None:
                where = folder / INDEX_NAME
                check_same_base([(str(where), RunIdentity(run_id=index.get("run_id"))),
                                 (f"checkpoint {trainer.ckpt_path}", module.identity)], fields=("run_id",),
                                message=lambda _, label, mine, first, theirs: f"{label} belongs to run {mine} but "
                                f"{first} to run {theirs}; resume from that run's checkpoint or start again with --overwrite")
            listed = {e.get("task"): e.get("file") for e in (index or {}).get("task_vectors", []) if isinstance(e, dict)}
            missing = [task for task in module.finished_tasks()
                       if not listed.get(task) or not (folder / Path(str(listed[task])).name).is_file()]
            if missing:  # the checkpoint holds later weights: a finished task's vector cannot be made again
                raise ValueError(
                    f"cannot resume: {len(missing)} finished task(s) have no task vector in {folder} ({', '.join(missing)}); "
                    f"the checkpoint {trainer.ckpt_path} is past them and cannot recreate them: restore them, or "
                    "start again with --overwrite")
            if index is not None:
                trainer.strategy.barrier()
                return
        if trainer.is_global_zero:
            pretrained_file = None
            if self.save_pretrained or (self.save_pretrained is None and not _is_public_tag(module)):
                save_state_dict(run_dir / PRETRAINED_FILE, module.pretrained_state_dict(),
                                {"format": "weaving.pretrained/1", **module.identity.metadata()})
                pretrained_file = PRETRAINED_FILE
            self._write_index(run_dir, module, [], pretrained_file)
        trainer.strategy.barrier()

    @staticmethod
    def _checkpoints(trainer: pl.Trainer) -> list[Path]:
        """Checkpoint files already in the trainer's ModelCheckpoint folders (a later `last` could pick them)."""
        found: list[Path] = []
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath and Path(callback.dirpath).is_dir():
                found += sorted(p for p in Path(callback.dirpath).iterdir() if p.suffix == callback.FILE_EXTENSION)
        return found

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        module = self._finetuner(pl_module)
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        last_epoch_of_task = (trainer.current_epoch + 1) % module.hparams.epochs_per_task == 0
        if last_batch and last_epoch_of_task:
            self.write(trainer, module)

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
            **module.identity.metadata(),
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

    def _update_index(self, folder: Path, module: FineTuner, entry: dict[str, Any]) -> None:
        """Replace (or add) this task's entry; entries stay in stream order."""
        index = read_index(folder) or {}
        if index.get("run_id") is not None:  # an index without a run id is this run's first
            check_same_base([(str(folder / INDEX_NAME), RunIdentity(run_id=index["run_id"])), ("this run", module.identity)],
                            fields=("run_id",), message=lambda _, label, mine, first, theirs: f"{first} now belongs "
                            f"to run {theirs}, not to {label} ({mine}): two fits write into one folder; give each its own")
        entries = [e for e in index.get("task_vectors", [])
                   if e.get("task") != entry["task"] and e.get("task") in module.task_names]
        entries.append(entry)
        entries.sort(key=lambda e: module.task_names.index(e["task"]))
        self._write_index(folder.parent, module, entries, index.get("pretrained_file"))

    @staticmethod
    def _write_index(run_dir: Path, module: FineTuner, entries: list[dict[str, Any]],
                     pretrained_file: str | None) -> None:
        write_index(run_dir, index_payload(module.identity, pretrained_file=pretrained_file,
                                           seed=module.hparams.seed, stream=module.hparams.stream,
                                           tasks=module.task_names, entries=entries,
                                           zero_entries=module.zero_entries))


def _is_public_tag(module: FineTuner) -> bool:
    """True when theta_pre is a public open_clip tag (rebuildable by name), not random init or a file."""
    return bool(module.pretrained) and not Path(module.pretrained).is_file()


def _steps_per_epoch(trainer: pl.Trainer) -> int:
    return -(-int(trainer.num_training_batches) // trainer.accumulate_grad_batches)

