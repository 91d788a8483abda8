"""MergeModule: `weaving validate` for one merged CLIP image encoder, a one-row preset of `ComparisonModule`.

Configured with task vectors (a fine-tuning run dir, its task_vectors/ folder, or files), a merge method
and its hyper-parameters, and either `lam` or Weight Weaving (search space, pooling, include_deltas). It
scores that one row with the comparison's path (merged on the module's device, weights built in place,
per-class counts summed across ranks) and logs the accuracy of each column as `val/acc/<column>` and the
setup's mean as `val/acc/mean`. With a datamodule (e.g. `weaving.data.datamodule.MultiTaskDataModule`) it
scores that datamodule's dataloaders, one per task; without one it reads the test sets itself (`tasks`).

What is merged for which task is the setup (`weaving.evaluation.setups.setup_for_loaders`):
- multi_task: all task vectors, once, for every task; mean over tasks;
- continual: all task vectors (the parts of a task), scored task-agnostically: each task's full test set
  with the head over all its classes (`val/acc/<task>`) and each part's classes (`val/acc/<part>`); mean
  over the parts' samples;
- domain_generalization: for task t, all task vectors but t's; mean over tasks.
"""

from __future__ import annotations

from typing import Any

from weaving.evaluation.comparison import ComparisonModule
from weaving.merging.search_space import SpaceValue, default_search_space


class MergeModule(ComparisonModule):
    """Merge task vectors into the pretrained CLIP image encoder, then validate per task (one row).

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
        output_dir: when set, also write results.json/csv/md and config.yaml there (one row) after validation.
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
        lambdas: SpaceValue = None,
        grid: SpaceValue = None,
        points: SpaceValue = None,
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
        from weaving.merging.search_space import check_setup

        if export is not None:
            from weaving.formats.export import check_export

            if check_setup(setup) == "domain_generalization":
                raise ValueError("export writes one merged model; domain_generalization merges one per held-out task")
            check_export(export, export_format)
        space: Any = None
        if weave:
            space = {"lambdas": lambdas if lambdas is not None or points is not None
                     else default_search_space(method, check_setup(setup))}
            if points is not None:
                space = {"points": points} if lambdas is None else {"lambdas": lambdas, "points": points}
            if grid is not None:
                space["grid"] = grid
        super().__init__(task_vectors, setup=setup, vectors=tasks, methods=[method],
                         method_args={method: dict(method_args or {})}, lambdas={method: space} if weave else None,
                         poolings=[pooling], include_deltas=include_deltas, lam=lam, rows=["weave" if weave else "lam"],
                         analysis=[], stages=False, seed=seed, model=model, pretrained=pretrained, init_seed=init_seed,
                         head_cache_dir=head_cache_dir, output_dir=output_dir, plots=False, precision=precision,
                         allow_mixed=allow_mixed)
        self.method, self.weave, self.pooling = method, weave, pooling
        self.search_space = space
        self.lambdas = self.numbers[method] if weave else None
        self.export_path, self.export_format = export, export_format

    def _start_pass(self, number: int) -> None:
        super()._start_pass(number)
        if self.export_path is not None and not getattr(self, "_exported", False):
            self._export()

    def _export(self) -> None:
        """Write the merged model (one job: multi_task or continual) as a full checkpoint, recipe in its metadata."""
        from weaving.formats.export import export_checkpoint, input_hashes

        self._exported = True
        self.bank.load(self.pass_rows[0].requests[0].weights)
        if not self.trainer.is_global_zero:
            return
        recipe = {k: v for k, v in self.own_hparams().items() if k not in ("export", "export_format")}
        recipe["input_sha256"] = input_hashes([str(p) for p in self.run.paths.values()])
        export_checkpoint(self.export_path, self.clip_model.state_dict(), self.export_format, self.clip.name, recipe)

    def log_results(self, results) -> None:
        """`val/acc/<column>` for every column (continual: the full test set too) and `val/acc/mean`."""
        tallies = self.row_tallies[0]
        accuracy = {name: tally.accuracy for name, tally in tallies.items()}
        for name, value in accuracy.items():
            self.log(f"val/acc/{name}", value, add_dataloader_idx=False, rank_zero_only=True)
        row = results["rows"][0]
        self.log("val/acc/mean", row["mean"], add_dataloader_idx=False, rank_zero_only=True)
        self.last_accuracy = {"accuracy": row["accuracy"], "mean": row["mean"], "all": accuracy}
