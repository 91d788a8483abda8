"""FineTuner: trains a CLIP image encoder on a stream of tasks, each with its own frozen zero-shot head.

One `trainer.fit` walks the whole stream served by a `TaskStreamDataModule`: epochs
`[i * epochs_per_task, (i + 1) * epochs_per_task)` belong to task i. At each task start the module swaps in
the task's head, restarts AdamW (state cleared) and the warmup + cosine schedule, and with
`stream="independent"` reloads theta_pre into the encoder (`"sequential"` goes on from the previous task).
The lr follows a `LambdaLR` over a `WarmupCosine` factor (returned by `configure_optimizers`, stepped by
Lightning after every optimizer step, logged as `train/lr` by a `LearningRateMonitor`); the factor is
restarted at each task start, as the optimizer is, and its state travels in the scheduler's state dict.
After the last task the module stops the trainer (`trainer.should_stop`), so `trainer.max_epochs` may be
left out. Everything a resumed run needs is derivable from the epoch counter or stored in the checkpoint
(with the run identity, checked on load), so `weaving fit --ckpt_path last` continues a killed stream
exactly (epoch-end checkpoints; see docs/training.md).
Recipe defaults (as in the task-vectors code of Ilharco et al., 2023): AdamW lr 1e-5, weight decay 0.1,
500 warmup steps then cosine; grad-norm clipping is the trainer's `gradient_clip_val: 1.0`.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from weaving.errors import UserError
from weaving.models import ClassificationHead, build_head, load_clip
from weaving.io.runs import RunIdentity, check_same_base, new_run_id, state_dict_hash
from weaving.models.clip import harness_zero_entries
from weaving.training.callbacks import TaskVectorWriter

STREAMS = ("independent", "sequential")
RUN_DIR_FIELDS = ("model", "tasks", "stream")


def run_dir_name(model: str, tasks: list[str], splits: int | None, stream: str = "sequential",
                 pattern: str = "checkpoints/{model}/{tasks}") -> str:
    """A fit's run folder from `FineTuner.run_dir`'s pattern: {model} is the model name ('/' and ':' as '-'),
    {tasks} the tasks joined by '+' (the first and a count past 80 characters) then `_<n>splits` for a
    class-incremental stream, {stream} the stream; e.g. `checkpoints/ViT-B-32/cifar100_10splits`."""
    model_part = str(model).replace("/", "-").replace(":", "-")
    task_part = "+".join(tasks) if len("+".join(tasks)) <= 80 else f"{tasks[0]}+{len(tasks) - 1}_more"
    if splits:
        task_part += f"_{splits}splits"
    return str(Path(pattern.format(model=model_part, tasks=task_part, stream=stream)))


class WarmupCosine:
    """Picklable lr factor: linear warmup, then cosine decay to 0, counted from the step the task began.

    Same formula as `cosine_lr` in the task-vectors code: (s + 1) / warmup during warmup, then
    0.5 * (1 + cos(pi * (s - warmup) / (total - warmup))), with s counted from `start_step`. It is the
    `lr_lambda` of a `LambdaLR`, whose state dict holds this object's `__dict__`: a resumed run knows which
    task it is in and where that task's schedule began. The factor of a task's first step does not depend
    on `total_steps`.
    """

    def __init__(self, warmup_steps: int, total_steps: int = 1, start_step: int = 0, task: int = -1) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.start_step = start_step
        self.task = task

    def start_task(self, task: int, start_step: int, total_steps: int) -> None:
        """Restart the schedule: `start_step` is the scheduler step at which `task` begins."""
        self.task, self.start_step, self.total_steps = task, start_step, max(1, total_steps)

    def __call__(self, step: int) -> float:
        s = step - self.start_step
        if s < self.warmup_steps:
            return (s + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (s - self.warmup_steps) / decay_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def check_run_dir(pattern: str) -> None:
    """`FineTuner.run_dir` may name only {model}, {tasks} and {stream}."""
    import string

    fields = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    unknown = [name for name in fields if name not in RUN_DIR_FIELDS]
    if unknown:
        raise UserError(f"model.run_dir={pattern!r} names {{{unknown[0]}}}; a run folder pattern may use "
                        "{model}, {tasks} and {stream}")


def epoch_seed(base_seed: int, epoch: int, rank: int) -> int:
    """The RNG seed of one epoch on one rank: derived, so a resumed run draws what an unbroken run drew."""
    digest = hashlib.sha256(f"{base_seed}:{epoch}:{rank}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (random crops in the train transform use them)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class FineTuner(pl.LightningModule):
    """Fine-tunes `model`'s image encoder over the tasks of a `TaskStreamDataModule` (see module docstring).

    Args:
        model: open_clip model name (or a tiny offline config such as "weaving-tiny-vit").
        pretrained: open_clip tag ("openai"), checkpoint file, or None for random init from `seed`.
        seed: init seed for random weights; theta_pre is rebuilt from (model, pretrained, seed).
        stream: "sequential" (task i starts from the weights after task i-1) or "independent"
            (every task starts from theta_pre).
        epochs_per_task: epochs per task; the trainer runs epochs_per_task x num_tasks epochs in all.
        lr, weight_decay: AdamW settings.
        warmup_steps: linear warmup steps at the start of each task, then cosine decay to 0.
        label_smoothing: cross-entropy label smoothing.
        compile: `torch.compile` the image encoder (state dict keys are unchanged).
        fused_adamw: AdamW's fused kernel (one kernel for all parameters); None: fused on CUDA, the
            default for-each implementation elsewhere.
        head_cache_dir: folder caching the zero-shot heads (None: recompute each run).
        validate_seen_tasks: after each task, score the model on the test sets of the tasks seen so far
            (task-agnostic for a class-incremental stream) into `<run dir>/seen_tasks.json`
            (`weaving.training.seen_tasks`): the sequential model's accuracy matrix, filled while training.
        run_dir: the run folder `weaving fit` uses when `trainer.default_root_dir` is left out, a pattern of
            {model}, {tasks} (joined by '+', then `_<n>splits` for a class-incremental stream) and {stream}
            (`run_dir_name`; see `fill_trainer_defaults`).
    """

    def __init__(
        self,
        model: str = "weaving-tiny-vit",
        pretrained: str | None = None,
        seed: int = 0,
        stream: Literal["independent", "sequential"] = "sequential",
        epochs_per_task: int = 1,
        lr: float = 1e-5,
        weight_decay: float = 0.1,
        warmup_steps: int = 500,
        label_smoothing: float = 0.0,
        compile: bool = False,
        fused_adamw: bool | None = None,
        head_cache_dir: str | None = None,
        validate_seen_tasks: bool = False,
        run_dir: str = "checkpoints/{model}/{tasks}",
    ) -> None:
        super().__init__()
        check_run_dir(run_dir)
        if stream not in STREAMS:
            raise ValueError(f"model.stream={stream!r} is unknown; use one of: {', '.join(STREAMS)}")
        if epochs_per_task < 1:
            raise ValueError(f"model.epochs_per_task={epochs_per_task} must be >= 1")
        if lr <= 0 or weight_decay < 0 or warmup_steps < 0 or not 0 <= label_smoothing < 1:
            raise ValueError(
                f"FineTuner got lr={lr}, weight_decay={weight_decay}, warmup_steps={warmup_steps}, "
                f"label_smoothing={label_smoothing}; need lr > 0, weight_decay >= 0, warmup_steps >= 0, "
                "0 <= label_smoothing < 1"
            )
        self.save_hyperparameters()
        bundle = load_clip(model, pretrained, seed=seed)
        self.model_name, self.pretrained = bundle.name, bundle.pretrained
        self.pretrained_hash = state_dict_hash(bundle.model.state_dict())
        self.zero_entries = harness_zero_entries(bundle.model.state_dict())  # recorded in index.json
        self.run_id = new_run_id()  # rank zero's is broadcast in setup; a resumed run takes its checkpoint's
        self.visual = bundle.model.visual  # the only registered submodule: checkpoints hold the encoder only
        self.theta_pre = {k: v.detach().cpu().clone() for k, v in self._visual_tensors().items()}
        self._clip = bundle  # the text tower builds the heads, then is dropped (see _build_heads)
        self._heads: list[ClassificationHead] = []  # not registered: heads differ in shape between tasks
        self._task_names: list[str] = []
        self._task = 0
        self._schedule = WarmupCosine(warmup_steps)
        self._epoch_done = False

    @classmethod
    def fill_trainer_defaults(cls, config: Any) -> None:
        """Complete a `weaving fit` config (its subcommand namespace) where it leaves these out, before
        anything is built: `trainer.default_root_dir` from `run_dir` (so `--trainer.default_root_dir DIR`
        moves the whole run), `trainer.max_epochs` = epochs_per_task x tasks, a logger's `save_dir` (None,
        '' or '.') = the run folder, and a `ModelCheckpoint`'s `dirpath` = `<run folder>/ckpt`. The CLI calls
        it on the module class a config names (weaving.lightning_cli)."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        from weaving.lightning_cli import import_class

        args, data = config.get("model.init_args") or {}, config.get("data.init_args") or {}
        tasks = list(data.get("tasks") or [])
        trainer = config.trainer
        if trainer.get("default_root_dir") is None:
            pattern = args.get("run_dir") or "checkpoints/{model}/{tasks}"
            check_run_dir(pattern)
            trainer.default_root_dir = run_dir_name(args.get("model") or "weaving-tiny-vit", tasks, data.get("splits"),
                                                    args.get("stream") or "sequential", pattern)
        if trainer.get("max_epochs") is None and trainer.get("max_steps") in (None, -1) and tasks:
            trainer.max_epochs = (args.get("epochs_per_task") or 1) * (data.get("splits") or len(tasks))
        root = trainer.default_root_dir
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = logger.get("init_args") if hasattr(logger, "get") else None
            if init_args is not None and "save_dir" in init_args and init_args.get("save_dir") in (None, "", "."):
                init_args.save_dir = root
        for callback in trainer.get("callbacks") or []:
            init_args = callback.get("init_args") if hasattr(callback, "get") else None
            if init_args is not None and init_args.get("dirpath") is None and \
                    issubclass(import_class(callback.get("class_path")), ModelCheckpoint):
                init_args.dirpath = str(Path(root) / "ckpt")

    # ----------------------------------------------------------------------------------------------------
    # The stream: which task an epoch belongs to, and what changes at a task start

    @property
    def task_index(self) -> int:
        """Index of the task being trained (or evaluated) now."""
        return self._task

    @property
    def task_names(self) -> list[str]:
        return list(self._task_names)

    @property
    def identity(self) -> RunIdentity:
        """The run identity written into task vectors, index.json and checkpoints (weaving.io.runs)."""
        return RunIdentity(self.run_id, self.model_name, self.pretrained, self.pretrained_hash)

    def image_model(self) -> tuple[str, str | None]:
        """(open_clip name, pretrained tag or file) of the encoder: whose transforms a datamodule that names
        no model gives its images (`weaving fit` links `data.init_args.model` to `model.init_args.model`)."""
        return self.model_name, self.pretrained

    def pretrained_state_dict(self) -> dict[str, Tensor]:
        """theta_pre as a full open_clip state dict (text tower included); available until fit starts."""
        if self._clip is None:
            raise RuntimeError("FineTuner.pretrained_state_dict: the text tower is freed once the heads are built")
        full = {k: v.detach().cpu() for k, v in self._clip.model.state_dict().items()}
        return {**full, **self.theta_pre}

    def finished_tasks(self) -> list[str]:
        """The tasks a resumed fit does not train again (finished before its checkpoint); [] for a new fit."""
        resume = getattr(self, "_resume_epoch", None)
        if resume is None:
            return []
        return self.task_names if resume >= self.stream_epochs else self._task_names[:self.task_of_epoch(resume)]

    @property
    def stream_epochs(self) -> int:
        """Epochs of the whole stream: epochs_per_task x tasks."""
        return self.hparams.epochs_per_task * len(self._task_names)

    def task_of_epoch(self, epoch: int) -> int:
        return min(epoch // self.hparams.epochs_per_task, max(len(self._task_names) - 1, 0))

    def _stream_datamodule(self) -> Any:
        dm = getattr(self.trainer, "datamodule", None)
        needed = ("task_names", "get_task", "current_task")
        if dm is None or not all(hasattr(dm, name) for name in needed):
            raise ValueError(
                "FineTuner needs a task stream: set data.class_path to "
                "weaving.data.datamodule.TaskStreamDataModule (got "
                f"{type(dm).__name__ if dm is not None else 'no datamodule'})"
            )
        return dm

    def setup(self, stage: str) -> None:
        dm = self._stream_datamodule()
        self._task_names = list(dm.task_names)
        if not self._task_names:
            raise ValueError("data.tasks is empty; list at least one task")
        if stage != "fit":
            return
        trainer = self.trainer
        expected = self.stream_epochs
        max_epochs = trainer.max_epochs
        if max_epochs is not None and 0 <= max_epochs < expected and not trainer.fast_dev_run:
            raise ValueError(
                f"trainer.max_epochs={max_epochs} but the stream needs model.epochs_per_task x tasks = "
                f"{self.hparams.epochs_per_task} x {len(self._task_names)} = {expected}; set trainer.max_epochs "
                f"to {expected} or leave it out (the stream stops itself after its last task)"
            )
        if trainer.reload_dataloaders_every_n_epochs == 0:  # the Trainer argument's default
            trainer.reload_dataloaders_every_n_epochs = 1  # each epoch may belong to another task
        elif trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                f"trainer.reload_dataloaders_every_n_epochs={trainer.reload_dataloaders_every_n_epochs}; "
                "FineTuner switches tasks between epochs and needs 1 (or leave it out)"
            )
        self.run_id = trainer.strategy.broadcast(self.run_id, src=0)

    def configure_model(self) -> None:
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.visual.compile()  # in place: state dict keys stay "visual.*"
            self._compiled = True

    def _build_heads(self) -> None:
        """Zero-shot heads of every task in the stream, on the module's device; then free the text tower."""
        if self._heads:
            return
        dm = self._stream_datamodule()
        clip = self._clip
        clip.model.to(self.device)
        for i, name in enumerate(self._task_names):
            task = dm.get_task(i)
            head = build_head(clip, task.classnames, task.templates, cache_dir=self.hparams.head_cache_dir,
                              task=name)
            self._heads.append(head.to(self.device).requires_grad_(False))
        base = getattr(dm, "base_task", None)
        if self.hparams.validate_seen_tasks and base is not None:  # the all-class head, for task-agnostic scores
            self._base_head = build_head(clip, base.classnames, base.templates, cache_dir=self.hparams.head_cache_dir,
                                         task=base.name).to(self.device).requires_grad_(False)
        self._clip = None  # the encoder stays alive as self.visual; the text tower is no longer needed

    def _activate(self, task: int) -> None:
        """Make `task` current: its head here, its data in the datamodule."""
        self._task = task
        dm = self._stream_datamodule()
        if dm.current_task != task:
            dm.current_task = task

    @property
    def head(self) -> ClassificationHead:
        if not self._heads:
            raise RuntimeError("FineTuner heads are built when fit/validate starts; call trainer.fit first")
        return self._heads[self._task]

    def _start_task(self, task: int) -> None:
        """What happens once at the start of each task: reset weights (independent), optimizer and schedule."""
        trainer = self.trainer
        if task > 0 and self.hparams.stream == "independent":
            self.load_visual(self.theta_pre)
        for optimizer in trainer.optimizers:
            optimizer.state.clear()  # AdamW re-creates its moments lazily at the next step
        steps_per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        self._schedule.start_task(task, trainer.global_step, self.hparams.epochs_per_task * steps_per_epoch)
        if trainer.global_step > 0:  # step 0's lr was set when the scheduler was made (s = 0 under any total)
            for config in trainer.lr_scheduler_configs:
                # The scheduler set the coming step's lr from the finished task's schedule: step it again at
                # the same step, so the lr comes from the restarted one.
                config.scheduler.last_epoch -= 1
                config.scheduler.step()

    # ----------------------------------------------------------------------------------------------------
    # Weights

    def _visual_tensors(self) -> dict[str, Tensor]:
        named = list(self.visual.named_parameters()) + list(self.visual.named_buffers())
        return {f"visual.{key}": t for key, t in named if t.is_floating_point()}

    def visual_state(self) -> dict[str, Tensor]:
        """The encoder's current weights, keyed "visual.*", as detached CPU copies."""
        return {k: v.detach().cpu().clone() for k, v in self._visual_tensors().items()}

    def load_visual(self, state: dict[str, Tensor]) -> None:
        """Load encoder weights (keys "visual.*") with torch's strict key and shape checks."""
        self.visual.load_state_dict({k.removeprefix("visual."): v for k, v in state.items()}, strict=True)

    def task_vector(self) -> dict[str, Tensor]:
        """theta_t - theta_pre of the image encoder, keyed "visual.*", on CPU in theta_pre's dtype."""
        return {k: v.detach().cpu().to(self.theta_pre[k].dtype) - self.theta_pre[k]
                for k, v in self._visual_tensors().items()}

    # ----------------------------------------------------------------------------------------------------
    # Lightning hooks

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.visual(images))

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the encoder and a per-step `LambdaLR` of the per-task warmup + cosine (`WarmupCosine`),
        logged as `train/lr` by a `LearningRateMonitor`."""
        params = [p for p in self.visual.parameters() if p.requires_grad]
        fused = self.hparams.get("fused_adamw")
        if fused is None:
            fused = bool(params) and params[0].is_cuda
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                      fused=fused or None)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._schedule)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1, "name": "train/lr"}}

    def configure_callbacks(self) -> list[pl.Callback]:
        """A TaskVectorWriter when the trainer has none: fine-tuning always writes its task vectors."""
        if any(isinstance(c, TaskVectorWriter) for c in self.trainer.callbacks):
            return []
        return [TaskVectorWriter()]

    def on_fit_start(self) -> None:
        self._build_heads()
        resume = getattr(self, "_resume_epoch", None)
        self._activate(self.task_of_epoch(self.trainer.current_epoch if resume is None else resume))
        if resume is not None:
            rank_zero_info(self._resume_line(resume))
            if resume >= self.stream_epochs:  # a finished run: Lightning would redo the last epoch (its
                self.trainer.should_stop = True  # checkpoint predates the epoch's end) and rewrite its vector

    def _resume_line(self, epoch: int) -> str:
        """What a resumed fit keeps: the finished tasks (their task vectors are not written again)."""
        task, total = self.task_of_epoch(epoch), len(self._task_names)
        if epoch >= self.stream_epochs:
            return f"resumed after the last epoch: all {total} tasks are finished; nothing to train"
        done = self._task_names[:task]
        kept = f"kept tasks 1-{task} ({', '.join(done)}) and their task vectors" if done else "no task was finished"
        within = epoch - task * self.hparams.epochs_per_task
        where = f" at epoch {within + 1}/{self.hparams.epochs_per_task} of it" if within else ""
        return f"resumed at epoch {epoch}: {kept}; continuing with task {task + 1}/{total} {self._task_names[task]}{where}"

    def on_validation_start(self) -> None:
        if not self._heads:  # `weaving validate` with a FineTuner: evaluate the current task's head
            self._build_heads()
            self._activate(self._stream_datamodule().current_task)

    on_test_start = on_validation_start

    def on_train_start(self) -> None:
        # After a resume, Lightning has settled the epoch counter only now; it must agree with the
        # task whose data the loaders were built for (set in on_load_checkpoint).
        task = self.task_of_epoch(self.trainer.current_epoch)
        if task != self._task:
            raise RuntimeError(f"FineTuner resumed in task {self._task} but epoch "
                               f"{self.trainer.current_epoch} belongs to task {task}")

    def on_train_epoch_start(self) -> None:
        epoch = self.trainer.current_epoch
        task = self.task_of_epoch(epoch)
        self._activate(task)
        self._epoch_done = False
        if self._schedule.task != task:
            self._start_task(task)
            rank_zero_info(self._task_line(task))
        # Random crops and shuffling draw from RNGs seeded per (model.seed, epoch, rank): a run resumed at an
        # epoch boundary draws exactly what an unbroken run drew.
        seed_all(epoch_seed(self.hparams.seed, epoch, self.global_rank))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._epoch_done = batch_idx + 1 >= self.trainer.num_training_batches

    def _task_line(self, task: int) -> str:
        """"task 3/5 digits_part3of5: 40 steps (10 epochs x 4 batches), from ..." for a task that starts."""
        trainer, epochs = self.trainer, self.hparams.epochs_per_task
        batches = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        origin = ("theta_pre" if task == 0 or self.hparams.stream == "independent"
                  else f"the weights after task {task}")
        return (f"task {task + 1}/{len(self._task_names)} {self._task_names[task]}: {epochs * batches} steps "
                f"({epochs} epochs x {batches} batches), from {origin}")

    def on_train_epoch_end(self) -> None:
        if self.hparams.validate_seen_tasks and (self.trainer.current_epoch + 1) % self.hparams.epochs_per_task == 0:
            self._validate_seen_tasks(self.task_of_epoch(self.trainer.current_epoch))
        next_epoch = self.trainer.current_epoch + 1
        if next_epoch >= self.stream_epochs:
            self.trainer.should_stop = True  # the stream is done, whatever trainer.max_epochs says
        else:
            self._activate(self.task_of_epoch(next_epoch))  # before Lightning reloads the dataloaders

    def _validate_seen_tasks(self, task: int) -> None:
        """Score the tasks seen so far (rank zero; see `weaving.training.seen_tasks`) and record the row."""
        from weaving.training.seen_tasks import record_row, seen_tasks_row

        if not self.trainer.is_global_zero:
            return
        dm = self._stream_datamodule()
        row = seen_tasks_row(self.visual, self._heads, getattr(self, "_base_head", None), dm, task, self.device)
        task_agnostic = getattr(dm, "base_task", None) is not None
        path = record_row(self.trainer.default_root_dir, self._task_names, task, row, task_agnostic)
        seen = ", ".join(f"{name} {100 * acc:.1f}%" for name, acc in zip(self._task_names[:task + 1], row) if acc is not None)
        rank_zero_info(f"after task {task + 1}/{len(self._task_names)}: accuracy on the seen tasks: {seen} ({path})")

    def _shared_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, int]:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.hparams.label_smoothing)
        accuracy = (logits.argmax(dim=-1) == labels).float().mean()
        return loss, accuracy, len(labels)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, accuracy, n = self._shared_step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/acc", accuracy, prog_bar=True, batch_size=n)
        # Logged as a device tensor made by a fill kernel: a logged Python number becomes one through a
        # host-to-device copy, which synchronises the GPU every step. (train/lr: LearningRateMonitor.)
        self.log("train/task", torch.full((), float(self._task), device=loss.device), batch_size=n)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, accuracy, n = self._shared_step(batch)
        self.log("val/loss", loss, sync_dist=True, batch_size=n)
        self.log("val/acc", accuracy, prog_bar=True, sync_dist=True, batch_size=n)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        loss, accuracy, n = self._shared_step(batch)
        self.log("test/loss", loss, sync_dist=True, batch_size=n)
        self.log("test/acc", accuracy, sync_dist=True, batch_size=n)

    # ----------------------------------------------------------------------------------------------------
    # Checkpoints: the encoder is in the state dict; the stream position is stored beside it

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["weaving_stream"] = {
            "task_names": list(self._task_names),
            "stream": self.hparams.stream,
            "epochs_per_task": self.hparams.epochs_per_task,
            "next_epoch": self.trainer.current_epoch + int(self._epoch_done),
        }  # the schedule's state is in the LambdaLR's state dict (checkpoint["lr_schedulers"])
        checkpoint["weaving_run"] = self.identity.metadata()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        where = f"checkpoint {self.trainer.ckpt_path}" if self._trainer is not None else "the checkpoint"
        state, run = checkpoint.get("weaving_stream"), checkpoint.get("weaving_run")
        if state is None or run is None:
            raise ValueError(f"{where} was not written by this version of FineTuner (no run identity); "
                             "resume only from a checkpoint of the same run, or start again with --overwrite")
        recorded = RunIdentity.from_mapping(run)
        check_same_base([(where, recorded), ("this run", self.identity)], fields=("model", "pretrained_hash"),
                        message=lambda name, _, mine, __, theirs: f"{where} belongs to run {recorded.run_id} with "
                        f"{name}={theirs!r}, but this run has {name}={mine!r}; resume with the config of that run")
        self.run_id = recorded.run_id
        if self._task_names and state["task_names"] != self._task_names:
            raise ValueError(
                f"the checkpoint's task stream {state['task_names']} differs from the configured one "
                f"{self._task_names}; resume with the config of that run"
            )
        if state["epochs_per_task"] != self.hparams.epochs_per_task:
            raise ValueError(f"the checkpoint has epochs_per_task={state['epochs_per_task']}, the config "
                             f"{self.hparams.epochs_per_task}; resume with the config of that run")
        self._resume_epoch = state["next_epoch"]
        if self._task_names:
            self._activate(self.task_of_epoch(self._resume_epoch))
