"""MergeModule: `weaving validate` for a merged CLIP image encoder.

Configured with task vectors (a fine-tuning run dir, its task_vectors/ folder, or files), a merge method
and its hyper-parameters, and either `lam` or Weight Weaving (search space, pooling, include_deltas).
Before validation starts it merges on the module's device (the accelerator) and loads the merged
weights; then it validates one dataloader per evaluated task (from the datamodule, e.g.
`weaving.data.datamodule.MultiTaskDataModule`), each with that task's zero-shot head, and logs
torchmetrics accuracy per task as `val/acc/<task>` and their mean as `val/acc/mean`.

The `setup` decides what is merged for which dataloader (see `weaving.evaluation.setups`):
- multi_task: all task vectors, once, for every dataloader;
- continual: all task vectors (the parts of a task), scored task-agnostically: each dataloader's full test
  set with the head over all its classes (`val/acc/<task>`) and each part's classes (`val/acc/<part>`);
- domain_generalization: for the dataloader of task t, all task vectors but t's (merged when it starts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from weaving.evaluation.evaluate import column_mask, predict
from weaving.evaluation.report import check_results
from weaving.evaluation.runs import find_task_vectors
from weaving.evaluation.search_spaces import check_setup, default_search_space
from weaving.evaluation.setups import Column, MergeJob, part_classes


class MergeModule(pl.LightningModule):
    """Merge task vectors into the pretrained CLIP image encoder, then validate per task.

    Args:
        task_vectors: a run dir (with task_vectors/), a folder of .safetensors task vectors, or a list of files.
        method: merge method name (`weaving.METHODS`); `method_args` its hyper-parameters (e.g. {"k": 0.2}).
        lam: scale of the merged delta when `weave` is false (the data-free baseline is 1.0).
        weave: use Weight Weaving over `lambdas` ("start:stop:step" or a list; default: the paper's space
            for this method and setup) with `pooling` ("mean", "random", "magmax" or a method name) and
            `include_deltas` (pool the task vectors too, the paper's default).
        setup: "multi_task", "continual" or "domain_generalization".
        tasks: which task vectors to use (default: all of them, in the run's order).
        model, pretrained, init_seed: the pretrained CLIP; when `model` is None all three come from the
            task vectors' metadata (what the fine-tuning recorded).
        seed: seed of random methods and poolings (dare, random pooling).
        head_cache_dir: where zero-shot heads are cached (None: recompute).
        output_dir: when set, also write results.json/csv/md there (one row) after validation.
    """

    def __init__(
        self,
        task_vectors: str | list[str],
        method: str = "task_arithmetic",
        method_args: dict[str, Any] | None = None,
        lam: float = 1.0,
        weave: bool = False,
        lambdas: str | list[float] | None = None,
        pooling: str = "mean",
        include_deltas: bool = True,
        setup: str = "multi_task",
        tasks: list[str] | None = None,
        model: str | None = None,
        pretrained: str | None = None,
        init_seed: int | None = None,
        seed: int = 0,
        head_cache_dir: str | None = None,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        import weaving
        from weaving.models.clip import load_clip, visual_state_dict

        self.save_hyperparameters()
        self.setup_name = check_setup(setup)
        if method not in weaving.METHODS:
            raise ValueError(f"unknown merge method {method!r}; expected one of: {', '.join(sorted(weaving.METHODS))}")
        self.files = find_task_vectors(task_vectors).select(tasks)
        if model is None:
            if self.files.model is None:
                raise ValueError("MergeModule: the task vectors record no model name; set model (and pretrained, init_seed)")
            model, pretrained, init_seed = self.files.model, self.files.pretrained, self.files.seed
        self.method, self.method_args, self.lam = method, dict(method_args or {}), float(lam)
        self.weave, self.pooling, self.include_deltas, self.seed = weave, pooling, include_deltas, seed
        self.lambdas = [float(v) for v in weaving.parse_lambdas(lambdas or default_search_space(method, setup))] if weave else None
        self.clip = load_clip(model, pretrained, seed=init_seed or 0)
        self.clip_model = self.clip.model.eval()
        self.theta_pre = visual_state_dict(self.clip_model)  # CPU, not a buffer: never moved nor checkpointed
        self.head_cache_dir, self.output_dir = head_cache_dir, output_dir
        self.heads = nn.ModuleDict()
        self.metrics = nn.ModuleDict()
        self.counts = nn.ModuleDict()
        self._loaded_job: int | None = None

    # ----------------------------------------------------------------------------------- what to score
    def _plan(self, loader_tasks: Sequence[str]) -> tuple[list[MergeJob], list[int], list[list[Column]], list[Column]]:
        """Jobs, the job of each dataloader, the columns of each dataloader, and the columns averaged."""
        vectors = list(self.files.paths)
        if self.setup_name == "domain_generalization":
            missing = [t for t in loader_tasks if t not in vectors]
            if missing:
                raise ValueError(f"domain generalization holds out each evaluated task, but there are no task vectors "
                                 f"for {missing}; available: {', '.join(vectors)}")
            columns = [[Column(t, t)] for t in loader_tasks]
            jobs = [MergeJob(tuple(v for v in vectors if v != t), tuple(cols)) for t, cols in zip(loader_tasks, columns)]
            if any(not job.task_vectors for job in jobs):
                raise ValueError("domain generalization needs at least two task vectors (one is held out)")
            return jobs, list(range(len(jobs))), columns, [c for cols in columns for c in cols]
        columns, averaged = [], []
        for task in loader_tasks:
            own = [Column(task, task)]
            if self.setup_name == "continual":
                parts = [Column(v, task, part_classes(task, v)) for v in vectors if v.startswith(f"{task}_part")]
                if not parts:
                    raise ValueError(f"continual setup: no task vectors named '{task}_part<i>of<n>' among {vectors}")
                own += parts
                averaged += parts
            else:
                averaged += own
            columns.append(own)
        jobs = [MergeJob(tuple(vectors), tuple(c for cols in columns for c in cols))]
        return jobs, [0] * len(loader_tasks), columns, averaged

    def setup(self, stage: str) -> None:
        from weaving.data.tasks import get_task
        from weaving.models.heads import build_head

        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        loader_tasks = list(getattr(datamodule, "task_names", None) or [])
        if not loader_tasks:
            raise ValueError("MergeModule needs a datamodule with task_names, one dataloader per task "
                             "(e.g. data: class_path: weaving.data.datamodule.MultiTaskDataModule)")
        self.loader_tasks = loader_tasks
        self.jobs, self.job_of_loader, self.loader_columns, self.averaged = self._plan(loader_tasks)
        for task in loader_tasks:
            spec = get_task(task)
            self.heads[task] = build_head(self.clip, spec.classnames, spec.templates, cache_dir=self.head_cache_dir, task=spec.name)
        self.column_keys = {}
        for task, cols in zip(loader_tasks, self.loader_columns):
            for column in cols:
                key = f"c{len(self.column_keys)}"
                self.column_keys[column.name] = key
                self.metrics[key] = MulticlassAccuracy(num_classes=len(get_task(task).classnames), average="micro")
                self.counts[key] = SumMetric()

    # ------------------------------------------------------------------------------------------ merging
    def merged_weights(self, job: MergeJob) -> dict[str, torch.Tensor]:
        """Full merged visual weights of one job, computed on this module's device."""
        import weaving

        members = [self.files.paths[name] for name in job.task_vectors]
        if self.weave:
            return weaving.weave(self.theta_pre, members, self.method, self.lambdas, pooling=self.pooling,
                                 include_deltas=self.include_deltas, device=self.device, seed=self.seed, **self.method_args)
        return weaving.merge(self.theta_pre, members, self.method, lam=self.lam, device=self.device, seed=self.seed,
                             **self.method_args)

    def _load_job(self, index: int) -> None:
        from weaving.models.clip import load_visual_state_dict

        if self._loaded_job != index:
            load_visual_state_dict(self.clip_model, self.merged_weights(self.jobs[index]))
            self._loaded_job = index

    def on_validation_start(self) -> None:
        for metric in [*self.metrics.values(), *self.counts.values()]:
            metric.reset()
        self._loaded_job = None
        self._load_job(self.job_of_loader[0])

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._load_job(self.job_of_loader[dataloader_idx])

    # --------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels = batch
        preds = predict(self.clip_model, self.heads[self.loader_tasks[dataloader_idx]], images)
        for column in self.loader_columns[dataloader_idx]:
            mask = column_mask(labels, column)
            if mask.any():
                key = self.column_keys[column.name]
                self.metrics[key].update(preds[mask], labels[mask])
                self.counts[key].update(mask.sum().float())
                # logged as a metric object from its own dataloader: Lightning computes it at epoch end
                # and shows it under that dataloader only
                self.log(f"val/acc/{column.name}", self.metrics[key], on_step=False, on_epoch=True,
                         add_dataloader_idx=False, batch_size=int(mask.sum()))

    def on_validation_epoch_end(self) -> None:
        accuracy, counts = {}, {}
        for name, key in self.column_keys.items():
            counts[name] = float(self.counts[key].compute())
            accuracy[name] = float(self.metrics[key].compute()) if counts[name] else float("nan")
            self.counts[key].reset()  # the accuracy metrics are reset by Lightning, which logged them
        names = [c.name for c in self.averaged]
        if self.setup_name == "continual":  # over samples: the task-agnostic accuracy on the full test sets
            total = sum(counts[n] for n in names)
            mean = sum(accuracy[n] * counts[n] for n in names) / total if total else float("nan")
        else:
            mean = sum(accuracy[n] for n in names) / len(names)
        self.log("val/acc/mean", mean, add_dataloader_idx=False)
        self.last_accuracy = {"accuracy": {n: accuracy[n] for n in names}, "mean": mean, "all": accuracy}
        if self.output_dir and self.trainer.is_global_zero:
            self._write_results(names)

    def _write_results(self, names: list[str]) -> None:
        from weaving.evaluation.report import write_results

        row = {"method": self.method, "weave": bool(self.weave), "lam": None if self.weave else self.lam,
               "lambdas": self.lambdas, "pooling": self.pooling if self.weave else None, **self.last_accuracy}
        row.pop("all")
        results = {"setup": self.setup_name, "tasks": names, "zeroshot": {}, "individual": {}, "rows": [row]}
        write_results(check_results(results), self.output_dir)

    def configure_optimizers(self) -> None:
        """Nothing is trained: MergeModule only validates."""
        return None
