"""MergeModule: `weaving validate` for a merged CLIP image encoder.

Configured with task vectors (a fine-tuning run dir, its task_vectors/ folder, or files), a merge method
and its hyper-parameters, and either `lam` or Weight Weaving (search space, pooling, include_deltas).
Before validation starts it merges on the module's device (the accelerator) and keeps the merged weights
there (`WeightBank`); then it validates one dataloader per evaluated task (from the datamodule, e.g.
`weaving.data.datamodule.MultiTaskDataModule`), each with that task's zero-shot head, and logs the
accuracy of each column as `val/acc/<column>` (under its own dataloader) and the setup's mean as
`val/acc/mean` (once, under the last dataloader: it is computed over all of them at the epoch's end).

What is merged for which dataloader is the setup (`weaving.evaluation.setups.setup_for_loaders`, the
same definitions the comparison runner uses), and the mean is the setup's rule (`Setup.mean_of`):
- multi_task: all task vectors, once, for every dataloader; mean over tasks;
- continual: all task vectors (the parts of a task), scored task-agnostically: each dataloader's full test
  set with the head over all its classes (`val/acc/<task>`) and each part's classes (`val/acc/<part>`);
  mean over the parts' samples;
- domain_generalization: for the dataloader of task t, all task vectors but t's; mean over tasks.
Batches are scored with `weaving.evaluation.evaluate.score_batch`, the comparison runner's function.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from weaving.evaluation.evaluate import WeightBank, WeightSet, autocast_for, score_batch
from weaving.evaluation.report import check_results
from weaving.io.runs import RunIdentity, check_same_base, read_run, state_dict_hash
from weaving.merging.search_space import check_setup, default_search_space, parse_search_space, search_space_numbers
from weaving.evaluation.setups import MergeJob, Setup, Tally, mean_accuracy, setup_for_loaders


class TallyMetric(Metric):
    """Correct/total counts of some columns (summed across batches and processes); computes their mean by
    `rule` (`weaving.evaluation.setups.mean_accuracy`): one column's accuracy, or a setup's mean."""

    full_state_update = False

    def __init__(self, columns: list[str], rule: str = "columns") -> None:
        super().__init__()
        self.columns, self.rule = list(columns), rule
        self.add_state("correct", torch.zeros(len(columns), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(len(columns), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, index: int, counts: Tensor) -> None:
        """Add [correct, total] of one batch to column `index`."""
        self.correct[index] += counts[0]
        self.total[index] += counts[1]

    def tallies(self) -> dict[str, Tally]:
        correct, total = self.correct.tolist(), self.total.tolist()
        return {name: Tally(int(c), int(t)) for name, c, t in zip(self.columns, correct, total)}

    def compute(self) -> Tensor:
        return torch.tensor(mean_accuracy(self.tallies(), self.rule), dtype=torch.float64)


class MergeModule(pl.LightningModule):
    """Merge task vectors into the pretrained CLIP image encoder, then validate per task.

    Args:
        task_vectors: a run dir (with task_vectors/), a folder of .safetensors task vectors, or a list of files.
        method: merge method name (`weaving.METHODS`); `method_args` its hyper-parameters (e.g. {"k": 0.2}).
        lam: scale of the merged delta when `weave` is false (the data-free baseline is 1.0).
        weave: use Weight Weaving over `lambdas` ("start:stop:step", a list, or any search space of
            `weaving.merging.search_space`; default: the paper's space for this method and setup), crossed
            with `grid` (the method's hyper-parameters, e.g. {"k": [0.1, 0.2]}), or over explicit `points`,
            with `pooling` ("mean", "random", "magmax" or a method name) and `include_deltas` (pool the
            task vectors too, the paper's default).
        setup: "multi_task", "continual" or "domain_generalization".
        tasks: which task vectors to use (default: all of them, in the run's order).
        model, pretrained, init_seed: the pretrained CLIP; when `model` is None all three come from the
            task vectors' metadata (what the fine-tuning recorded).
        seed: seed of random methods and poolings (dare, random pooling).
        head_cache_dir: where zero-shot heads are cached (None: recompute).
        output_dir: when set, also write results.json/csv/md there (one row) after validation.
        precision: "auto" (bf16 autocast on CUDA, float32 on the CPU), "bf16" or "32".
        export: when set, also write the merged model there as a full checkpoint in `export_format` ("open_clip"
            file for `open_clip.create_model(model, pretrained=FILE)`, or "hf" folder for transformers), with
            the recipe in its metadata (multi_task and continual setups: one merged model).
        allow_mixed: merge task vectors whose base model or run identities disagree (`weaving validate
            --allow_mixed`); by default that is a one-line error (weaving.io.runs.check_same_base).
    """

    def __init__(
        self,
        task_vectors: str | list[str],
        method: str = "task_arithmetic",
        method_args: dict[str, Any] | None = None,
        lam: float = 1.0,
        weave: bool = False,
        lambdas: str | list[float | dict[str, Any]] | dict[str, Any] | None = None,
        grid: dict[str, Any] | None = None,
        points: list[dict[str, Any]] | None = None,
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
        precision: str = "auto",
        export: str | None = None,
        export_format: str = "open_clip",
        allow_mixed: bool = False,
    ) -> None:
        super().__init__()
        import weaving
        from weaving.merging.registry import get_method
        from weaving.models.clip import load_clip, visual_state_dict

        self.save_hyperparameters()
        self.setup_name = check_setup(setup)
        get_method(method).resolve(dict(method_args or {}))  # unknown method or hyper-parameter: fail before loading
        if export is not None:
            from weaving.formats.export import check_export

            if setup == "domain_generalization":
                raise ValueError("export writes one merged model; domain_generalization merges one per held-out task")
            check_export(export, export_format)
        self.files = read_run(task_vectors, allow_mixed=allow_mixed).select(tasks)
        if model is None:
            if self.files.model is None:
                raise ValueError("MergeModule: the task vectors record no model name; set model (and pretrained, init_seed)")
            model, pretrained, init_seed = self.files.model, self.files.pretrained, self.files.seed
        self.method, self.method_args, self.lam = method, dict(method_args or {}), float(lam)
        self.weave, self.pooling, self.include_deltas, self.seed = weave, pooling, include_deltas, seed
        self.grid, self.points, self.lambdas = grid, points, None
        if weave:
            self.search_space = lambdas if lambdas is not None or points is not None else default_search_space(method, setup)
            space = parse_search_space(self.search_space, grid, points)
            for point in space:
                weaving.METHODS[method].resolve({**self.method_args, **point.setting})
            self.lambdas = search_space_numbers(space)
        self.clip = load_clip(model, pretrained, seed=init_seed or 0)
        self.clip_model = self.clip.model.eval()
        if self.files.pretrained_hash is not None:
            check_same_base([("the task vectors", self.files.identity),
                             (f"the pretrained model ({model}, {pretrained}, seed {init_seed})",
                              RunIdentity(self.files.run_id, self.files.model, self.files.pretrained,
                                          state_dict_hash(self.clip_model.state_dict())))],
                            allow_mixed=allow_mixed, same_run=False)
        self.theta_pre = visual_state_dict(self.clip_model)  # CPU, not a buffer: never moved nor checkpointed
        self.head_cache_dir, self.output_dir = head_cache_dir, output_dir
        self.heads = nn.ModuleDict()
        self.metrics = nn.ModuleDict()
        self.eval_precision = precision
        autocast_for(torch.device("cpu"), precision)  # checks the name
        self.plan: Setup | None = None
        self.bank: WeightBank | None = None

    # ----------------------------------------------------------------------------------- what to score
    def setup(self, stage: str) -> None:
        from weaving.data.tasks import get_task
        from weaving.models.heads import build_head

        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        loader_tasks = list(getattr(datamodule, "task_names", None) or [])
        if not loader_tasks:
            raise ValueError("MergeModule needs a datamodule with task_names, one dataloader per task "
                             "(e.g. data: class_path: weaving.data.datamodule.MultiTaskDataModule)")
        self.loader_tasks = loader_tasks
        self.plan = setup_for_loaders(self.setup_name, loader_tasks, list(self.files.paths))
        for task in loader_tasks:
            spec = get_task(task)
            self.heads[task] = build_head(self.clip, spec.classnames, spec.templates, cache_dir=self.head_cache_dir, task=spec.name)
        self.column_keys = {}
        for column in (*self.plan.columns, *self.plan.extra):
            self.column_keys[column.name] = f"c{len(self.column_keys)}"
            self.metrics[self.column_keys[column.name]] = TallyMetric([column.name])
        self.metrics["mean"] = TallyMetric(self.plan.tasks, self.plan.mean)

    # ------------------------------------------------------------------------------------------ merging
    def merged_weights(self, job: MergeJob) -> dict[str, torch.Tensor]:
        """Full merged visual weights of one job (weaving, or the merge at lam = 1), computed on this module's device."""
        import weaving

        members = [self.files.paths[name] for name in job.task_vectors]
        if self.weave:
            return weaving.weave(self.theta_pre, members, self.method, self.search_space, pooling=self.pooling,
                                 include_deltas=self.include_deltas, device=self.device, seed=self.seed,
                                 grid=self.grid, points=self.points, **self.method_args)
        return weaving.merge(self.theta_pre, members, self.method, lam=1.0, device=self.device, seed=self.seed,
                             **self.method_args)

    def on_validation_start(self) -> None:
        """Merge every job once and keep it on the device: g (theta = theta_pre + lam * g), or the woven weights."""
        self.bank = WeightBank(self.clip_model, self.theta_pre)
        self.job_weights = []
        for j, job in enumerate(self.plan.jobs):
            if self.weave:
                self.bank.add(f"job{j}", self.merged_weights(job), full=True)
                self.job_weights.append(WeightSet(f"job{j}"))
            else:
                self.bank.delta_between(f"job{j}", self.merged_weights(job))
                self.job_weights.append(WeightSet(f"job{j}", self.lam))
        self.bank.load(self.job_weights[0])
        if self.hparams.export and not getattr(self, "_exported", False) and self.trainer.is_global_zero:
            self._export()
        for metric in self.metrics.values():
            metric.reset()

    def _export(self) -> None:
        """Write the merged model (one job: multi_task or continual) as a full checkpoint, recipe in its metadata."""
        from weaving.formats.export import export_checkpoint, input_hashes

        self._exported = True
        recipe = {k: v for k, v in self.hparams.items() if k not in ("export", "export_format")}
        recipe["input_sha256"] = input_hashes([str(p) for p in self.files.paths.values()])
        export_checkpoint(self.hparams.export, self.clip_model.state_dict(), self.hparams.export_format,
                          self.clip.name, recipe)

    # --------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels = batch
        task = self.loader_tasks[dataloader_idx]
        needs = []
        for weights, job in zip(self.job_weights, self.plan.jobs):
            columns = [c for c in job.columns if c.task == task]
            if columns:
                needs.append((weights, columns, torch.zeros(len(columns), 2, dtype=torch.long, device=labels.device)))
        score_batch(self.clip_model, self.heads[task], self.bank, images, labels, needs, self.eval_precision)
        averaged = self.metrics["mean"].columns
        for _, columns, counts in needs:
            for column, count in zip(columns, counts):
                metric = self.metrics[self.column_keys[column.name]]
                metric.update(0, count)
                if column.name in averaged:
                    self.metrics["mean"].update(averaged.index(column.name), count)
                # a metric object logged from its own dataloader: Lightning computes it at the epoch's end
                # and shows it under that dataloader only
                self.log(f"val/acc/{column.name}", metric, on_step=False, on_epoch=True, add_dataloader_idx=False,
                         batch_size=len(labels))
        if dataloader_idx == len(self.loader_tasks) - 1:  # the mean over all dataloaders, shown once
            self.log("val/acc/mean", self.metrics["mean"], on_step=False, on_epoch=True, add_dataloader_idx=False,
                     batch_size=len(labels))

    def on_validation_epoch_end(self) -> None:
        accuracy = {name: float(self.metrics[key].compute()) for name, key in self.column_keys.items()}
        mean = float(self.metrics["mean"].compute())
        self.last_accuracy = {"accuracy": {n: accuracy[n] for n in self.plan.tasks}, "mean": mean, "all": accuracy}
        if self.output_dir and self.trainer.is_global_zero:
            self._write_results(self.plan.tasks)

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
