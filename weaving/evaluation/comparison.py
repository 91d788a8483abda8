"""ComparisonModule: the paper's comparison as one Lightning validation job (`weaving validate --config`), on
one device or many, and the project's only scoring path.

The config names the inputs (a run folder or task vector files; theta_pre from their metadata), the setup,
the methods with their `method_args`, the poolings, the search spaces and which rows to produce:

- "zeroshot": theta_pre; "individual": each column scored with theta_pre + its own tau (multi_task,
  domain_generalization) or, for continual, "Seq-FT": the sequential model theta_pre + tau_i after each task;
- "lam": each method at `lam` (1: the data-free baseline); "recommended": at its authors' recommended lambda
  (where it is not `lam`); "privileged": at the single lambda of its search space with the best mean on
  these test sets (tuned on test data: a reference, not a data-free result); "weave": Weight Weaving, one
  row per pooling;
- `analysis`: the methods whose accuracy along the search space (and best lambda per task) go to
  analysis.json and the plots.

How it scores. Merges run once per method and merge job, on the device (with several processes: on rank 0,
broadcast to the others; docs/evaluation.md gives the measurement behind that choice), and their deltas g
stay there in a `WeightBank` that builds every row's weights in place (theta_pre + lam * g is one fused op
per tensor). The stored weights are grouped into passes that fit `memory_budget`; each pass reads every
test set once from the decoded cache, and each batch is moved to the device once and scored by every
weight set of the pass. Every rank reads its own shard of each test
set (`ShardSampler`: equal shards, padding marked and never counted); at the end of each pass the per-class
counts (`class_counts`) are summed across ranks, so every rank holds the same tallies and rank 0 writes
results whose numbers equal those of one device. The continual stages (merges of the task vectors 1..i)
run in passes after the others, since their privileged rows use the lambda chosen on the final stage.

`MergeModule` and `CheckpointModule` (`weaving.evaluation.merge_module`, `.checkpoint_module`) are
one-row presets of this module. `run_comparison` is the same job from Python.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from weaving.evaluation.evaluate import (EvalSet, ShardSampler, WeightBank, WeightSet, autocast_for, class_counts,
                                         column_tally, evenly_spaced, padding_mask, predict)
from weaving.evaluation.setups import Column, Setup, Tally, incremental_stages, setup_for_loaders
from weaving.merging.search_space import check_lambda, check_setup, default_search_space, recommended_lambda

SEQUENTIAL_LABEL = "Seq-FT"  # the sequential model theta_pre + tau_i (MagMax's sequential fine-tuning)
ROWS = ("zeroshot", "individual", "lam", "recommended", "privileged", "weave")

ANALYSIS_NOTE = (
    "Uses evaluation data: accuracy of every lambda of the search space on the test sets. For analysis "
    "only (best lambda per task, Figure 2 of the paper); the data-free results are in results.json."
)


@dataclass(frozen=True)
class Request:
    """Score `weights` on `columns`."""

    weights: WeightSet
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Row:
    """One scored row: its `fields` in results.json and the weight set that fills each group of columns
    (`requests`); `key` names its tallies."""

    fields: Mapping[str, Any]
    requests: tuple[Request, ...]
    key: tuple = field(default=())


@dataclass
class Item:
    """Weights one pass stores (`store` puts them in the bank and returns their names) and the rows they fill
    (`rows`, built when the pass starts); `nbytes` they take on the device; `late`: continual stages."""

    store: Callable[[], list[str]]
    rows: Callable[[], list[Row]]
    nbytes: int
    late: bool = False


def tau_name(task_vector: str) -> str:
    """Name under which a task vector tau is stored in the bank (theta_pre + scale * tau)."""
    return f"tau:{task_vector}"


def default_memory_budget(device: torch.device) -> int:
    """Bytes the stored weights may take: half the free GPU memory, or half the available host memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def method_space(method: str, setup: str, lambdas: Any) -> Any:
    """The search space of `method`: from a per-method mapping, one space for all, or the paper's default."""
    if isinstance(lambdas, Mapping) and not ({"lambdas", "grid", "points", "distribution", "kind"} & set(lambdas)):
        return lambdas.get(method, default_search_space(method, setup))
    return default_search_space(method, setup) if lambdas is None else lambdas


def plain_lambdas(space: Any) -> list[float] | None:
    """The space as plain numbers when it is one (what the analysis and the privileged row sweep), else None."""
    from weaving import parse_lambdas

    if isinstance(space, Mapping):
        return None
    try:
        return [float(v) for v in parse_lambdas(space)]
    except (ValueError, TypeError):
        return None


def job_requests(setup: Setup, weights: Sequence[WeightSet]) -> tuple[Request, ...]:
    """One request per merge job of `setup`: job j's columns scored with `weights[j]`."""
    return tuple(Request(w, job.columns) for w, job in zip(weights, setup.jobs, strict=True))


def lambda_curves(setup: Setup, space: Sequence[float], per_lambda: Sequence[Mapping[str, Tally]]) -> dict[str, Any]:
    """Accuracy per task along the search space, its mean, and each task's best lambda (first maximum)."""
    accuracy = {name: [tallies[name].accuracy for tallies in per_lambda] for name in setup.tasks}
    best = {name: float(space[max(range(len(accs)), key=lambda i: (accs[i], -i))]) for name, accs in accuracy.items()}
    return {"lambdas": [float(v) for v in space], "accuracy": accuracy, "mean": [setup.mean_of(t) for t in per_lambda],
            "best_lambda": best}


def versions() -> dict[str, str]:
    """The versions that produced a result: weaving, torch, Python."""
    import weaving

    return {"weaving": weaving.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}


class ComparisonModule(pl.LightningModule):
    """Score a list of rows (references, every method at lam, recommended and privileged lambda, weaving per
    pooling, the lambda analysis, the continual stages) in one validation job; see the module docstring.

    Args:
        task_vectors: a run folder (with task_vectors/), a folder of .safetensors task vectors, or files.
        setup: "multi_task", "continual" or "domain_generalization".
        tasks: the evaluated tasks (datasets), one column each; for continual the full task(s), scored per part
            (default: the task vectors' tasks; a datamodule's `task_names` when the config has one).
        vectors: which task vectors to use (default: all of them, in the run's order).
        methods: merge methods (`weaving.METHODS`; default: every registered method but the mergekit_* ones).
        method_args: per method, its hyper-parameters, e.g. {"ties": {"k": 0.2}} (defaults for the others).
        lambdas: search spaces: one for every method ("0.1:1.0:0.1", a list, or any space of
            `weaving.merging.search_space`, including a mapping with lambdas/grid/points), or a mapping
            method -> space; None (or a method left out): the paper's space for that method and setup.
        poolings: weaving poolings, one row each ("mean", "random", "magmax" or a method name).
        include_deltas: weaving pools the task vectors too (the paper's default).
        lam: the lambda of the "lam" rows (1.0: the data-free baseline).
        rows: which rows to produce, from "zeroshot", "individual" (continual: Seq-FT), "lam", "recommended",
            "privileged" and "weave".
        analysis: methods whose lambda curves go to analysis.json and the plots (None: every method; []: none).
        stages: continual only: also score every row after each task (the merges of the task vectors 1..i, and
            Seq-FT), for the accuracy matrix, average (incremental) accuracy and forgetting in results.json.
        seed: seed of random methods and poolings (dare, random pooling).
        model, pretrained, init_seed: the pretrained CLIP; when `model` is None all three come from the task
            vectors' metadata (what the fine-tuning recorded).
        root, split, download: where the test sets are (docs/datasets.md) and which split is scored.
        batch_size: images per batch (default 1024 on CUDA, 256 otherwise); num_workers: decoding workers.
        max_samples: score a fixed, evenly spaced subset of each test set (quick runs only; None: all).
        cache, cache_dir: read the test sets from the decoded uint8 cache (default $WEAVING_CACHE_DIR or
            ~/.cache/weaving/test_sets); cache=False decodes them on every pass.
        head_cache_dir: where zero-shot heads are cached (None: recompute).
        output_dir: where results.json/csv/md, analysis.json, the plots, summary.md and the resolved config.yaml
            are written (rank 0, atomically); None: nothing is written.
        plots: also draw the plots; reference: show the paper's published value and the difference next to
            each row's mean in results.md (the paper publishes means per backbone and setup): "auto" (the
            backbone of the task vectors' model), a backbone ("ViT-B-32", "ViT-B-16", "ViT-L-14") or None;
            the values are `weaving.evaluation.paper_reference`'s, from arXiv 2510.13921.
        memory_budget: bytes the stored merged weights may take on the device at once (default: half the
            free GPU memory, or half the available host memory); more are scored in further passes.
        precision: "auto" (bf16 autocast on CUDA, float32 on the CPU), "bf16" or "32".
        allow_mixed: merge task vectors whose base model or run identities disagree.
    """

    def __init__(
        self,
        task_vectors: str | list[str] | None = None,
        setup: str = "multi_task",
        tasks: list[str] | None = None,
        vectors: list[str] | None = None,
        methods: list[str] | None = None,
        method_args: dict[str, dict[str, Any]] | None = None,
        lambdas: Any = None,
        poolings: list[str] | None = None,
        include_deltas: bool = True,
        lam: float = 1.0,
        rows: list[str] | None = None,
        analysis: list[str] | None = None,
        stages: bool = True,
        seed: int = 0,
        model: str | None = None,
        pretrained: str | None = None,
        init_seed: int | None = None,
        root: str = "data",
        split: str = "test",
        download: bool = False,
        batch_size: int | None = None,
        num_workers: int | None = None,
        max_samples: int | None = None,
        cache: bool = True,
        cache_dir: str | None = None,
        head_cache_dir: str | None = None,
        output_dir: str | None = None,
        plots: bool = True,
        reference: str | None = None,
        memory_budget: int | None = None,
        precision: str = "auto",
        allow_mixed: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._configure(task_vectors=task_vectors, setup=setup, tasks=tasks, vectors=vectors, methods=methods,
                        method_args=method_args, lambdas=lambdas, poolings=poolings, include_deltas=include_deltas,
                        lam=lam, rows=rows, analysis=analysis, seed=seed, model=model, pretrained=pretrained,
                        init_seed=init_seed, allow_mixed=allow_mixed)
        self.data_args = dict(root=root, split=split, download=download, batch_size=batch_size,
                              num_workers=num_workers, max_samples=max_samples, cache=cache, cache_dir=cache_dir)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, got {max_samples}")
        autocast_for(torch.device("cpu"), precision)  # checks the name
        self.eval_precision = precision
        self.head_cache_dir, self.output_dir, self.plots = head_cache_dir, output_dir, plots
        self.reference, self.memory_budget = reference, memory_budget
        if reference is not None:
            from weaving.evaluation.paper_reference import check_reference

            check_reference(reference)
        self.stages = stages
        self.heads = nn.ModuleDict()
        self.resolved_config: str | None = None  # the CLI's resolved config (weaving.lightning_cli); else built from hparams
        self.results: dict[str, Any] | None = None
        self.analysis_results: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------ configuration
    def _configure(self, *, task_vectors, setup, tasks, vectors, methods, method_args, lambdas, poolings,
                   include_deltas, lam, rows, analysis, seed, model, pretrained, init_seed, allow_mixed) -> None:
        """Check the config (a one-line error before anything is loaded), read the run and load theta_pre."""
        from weaving.io.runs import RunIdentity, check_same_base, read_run, state_dict_hash
        from weaving.merging.registry import compared_methods, get_method, get_pooling, with_recorded_zero_entries

        self.setup_name = check_setup(setup)
        if isinstance(methods, str):
            raise ValueError(f"methods: give a list of method names, not the string {methods!r}")
        self.methods = compared_methods() if methods is None else list(methods)
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"merge methods repeat in {self.methods}; give each method once")
        self.method_args = {m: dict((method_args or {}).get(m) or {}) for m in self.methods}
        unknown = sorted(set(method_args or {}) - set(self.methods))
        if unknown:
            raise ValueError(f"method_args names {unknown}, which are not among the methods {self.methods}")
        self.hyperparameters = {m: get_method(m).resolve(self.method_args[m]) for m in self.methods}
        self.poolings = ["mean"] if poolings is None else list(poolings)
        for pooling in self.poolings:
            get_pooling(pooling)
        self.rows = list(ROWS if rows is None else rows)
        bad = [r for r in self.rows if r not in ROWS]
        if bad:
            raise ValueError(f"rows: unknown {bad}; expected some of: {', '.join(ROWS)}")
        self.analysis_methods = list(self.methods if analysis is None else analysis)
        stray = [m for m in self.analysis_methods if m not in self.methods]
        if stray:
            raise ValueError(f"analysis names {stray}, which are not among the methods {self.methods}")
        self.include_deltas, self.lam, self.seed = include_deltas, check_lambda(lam), int(seed)
        self.spaces = {m: method_space(m, self.setup_name, lambdas) for m in self.methods}
        self.numbers: dict[str, list[float] | None] = {}
        for method in self.methods:
            self.numbers[method] = self._space_numbers(method, self.spaces[method])
        self.run = None
        self.vector_names: list[str] = []
        if task_vectors is not None:
            self.run = read_run(task_vectors, allow_mixed=allow_mixed, tasks=vectors)
            self.vector_names = list(self.run.paths)
            self.method_args = {m: with_recorded_zero_entries(m, args, self.run.zero_entries)
                                for m, args in self.method_args.items()}
            self.hyperparameters = {m: get_method(m).resolve(self.method_args[m]) for m in self.methods}
            if model is None:
                if self.run.model is None:
                    raise ValueError("the task vectors record no model name; set model (and pretrained, init_seed)")
                model, pretrained, init_seed = self.run.model, self.run.pretrained, self.run.seed
        elif self.methods:
            raise ValueError("task_vectors is not set: give a run folder or task vector files (only a zero-shot "
                             "row, with methods: [], needs none)")
        if model is None:
            raise ValueError("model is not set: name the open_clip model (the task vectors record none)")
        if self.run is not None and self.run.root is not None:  # a size `weaving import` registered on the fly
            from weaving.formats.architecture import register_run_config

            register_run_config(self.run.root, model)
        self.clip = self._load_clip(model, pretrained, init_seed)
        self.clip_model = self.clip.model.eval()
        self._image_model = (self.clip.name, pretrained)
        if self.run is not None and self.run.pretrained_hash is not None:
            check_same_base([("the task vectors", self.run.identity),
                             (f"the pretrained model ({model}, {pretrained}, seed {init_seed})",
                              RunIdentity(self.run.run_id, self.run.model, self.run.pretrained,
                                          state_dict_hash(self.clip_model.state_dict())))],
                            allow_mixed=allow_mixed, same_run=False)
        from weaving.models.clip import visual_state_dict

        self.theta_pre = visual_state_dict(self.clip_model)  # CPU, not a buffer: never moved nor checkpointed
        self.tasks_arg = None if tasks is None else list(tasks)

    @classmethod
    def fill_trainer_defaults(cls, config: Any) -> None:
        """`weaving validate` (weaving.lightning_cli): a job that names an output folder and no
        `trainer.default_root_dir` runs in its output folder."""
        if config.trainer.get("default_root_dir") is None and config.get("model.init_args.output_dir"):
            config.trainer.default_root_dir = config.model.init_args.output_dir

    def image_model(self) -> tuple[str, str | None]:
        """(open_clip name, pretrained tag or file) of the CLIP it scores: whose transforms a datamodule that
        names no model gives its images (the task vectors' model when the config names none)."""
        return self._image_model

    def _load_clip(self, model: str, pretrained: str | None, init_seed: int | None):
        from weaving.models.clip import load_clip

        return load_clip(model, pretrained, seed=init_seed or 0)

    def _space_numbers(self, method: str, space: Any) -> list[float] | None:
        """The numbers a weaving row lists (its search space checked against the method), or None without weave."""
        import weaving
        from weaving.merging.search_space import parse_search_space, search_space_numbers

        if "weave" not in self.rows and "privileged" not in self.rows and method not in self.analysis_methods:
            return None
        try:
            points = parse_search_space(space)
        except ValueError as error:
            raise ValueError(f"lambdas of {method}: {error}") from None
        for point in points:
            weaving.METHODS[method].resolve({**self.method_args[method], **point.setting})
        return search_space_numbers(points)

    def default_tasks(self) -> list[str]:
        """The evaluated tasks when the config names none: the task vectors' (continual: their full task)."""
        from weaving.data.splits import parse_split_name

        if self.setup_name != "continual":
            return list(self.vector_names)
        bases = []
        for name in self.vector_names:
            parsed = parse_split_name(name)
            bases.append(parsed[0] if parsed is not None else name)
        return list(dict.fromkeys(bases))

    def plan_setup(self, tasks: list[str]) -> Setup:
        return setup_for_loaders(self.setup_name, tasks, self.vector_names)

    # ------------------------------------------------------------------------------------------- the plan
    def setup(self, stage: str) -> None:
        from weaving.data.tasks import get_task
        from weaving.models.heads import build_head

        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        loader_tasks = list(getattr(datamodule, "task_names", None) or []) if datamodule is not None else []
        if datamodule is not None and not loader_tasks:
            raise ValueError(f"{type(self).__name__} needs a datamodule with task_names, one dataloader per task "
                             "(e.g. weaving.data.datamodule.MultiTaskDataModule), or none: then it reads the test "
                             "sets itself (tasks, root, batch_size)")
        if loader_tasks and self.tasks_arg is not None and loader_tasks != self.tasks_arg:
            raise ValueError(f"tasks {self.tasks_arg} disagree with the datamodule's {loader_tasks}; give them once")
        self.external_data = bool(loader_tasks)
        tasks = loader_tasks or self.tasks_arg or self.default_tasks()
        if not tasks:
            raise ValueError("no tasks to evaluate: set tasks (or task_vectors)")
        self.plan = self.plan_setup(tasks)
        self.eval_tasks = self.plan.eval_tasks
        for task in self.eval_tasks:
            if task not in self.heads:
                spec = get_task(task)
                self.heads[task] = build_head(self.clip, spec.classnames, spec.templates, cache_dir=self.head_cache_dir,
                                              task=spec.name)
        self.num_classes = {task: get_task(task).num_classes for task in self.eval_tasks}
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        state_bytes = sum(t.numel() * t.element_size() for t in self.theta_pre.values())
        budget = default_memory_budget(device) if self.memory_budget is None else self.memory_budget
        self.passes = self._group(self._items(state_bytes), budget)
        if self.external_data and len(self.passes) > 1:
            raise ValueError(f"this comparison needs {len(self.passes)} passes over the test sets (memory budget, "
                             "continual stages), which a datamodule's one dataloader per task cannot give; "
                             "leave the data section out (the module reads the test sets itself)")
        self.loader_plan = [(p, task) for p in range(len(self.passes)) for task in self.eval_tasks]
        self._test_sets: dict[str, EvalSet] = {}

    def _items(self, state_bytes: int) -> list[Item]:
        """What is stored and scored: references, each method, then (continual) the stages."""
        setup = self.plan
        items = [Item(lambda: [], self.reference_rows, 0)]
        if "individual" in self.rows and setup.individual:
            names = list(dict.fromkeys(setup.individual.values()))
            items[0] = Item(lambda: [self._store_tau(n) for n in names], self.reference_rows, state_bytes * len(names))
        per_method = state_bytes * len(setup.jobs) * (1 + len(self.poolings) * ("weave" in self.rows))
        for method in self.methods:
            items.append(Item(lambda m=method: self._store_method(setup, m), lambda m=method: self.method_rows(setup, m),
                              per_method))
        if self.stages and self.sequential_vectors():
            if "individual" in self.rows:
                for i, name in enumerate(self.sequential_vectors()):
                    items.append(Item(lambda n=name: [self._store_tau(n)],
                                      lambda n=name, i=i: [Row({}, (Request(WeightSet(tau_name(n)), setup.columns),),
                                                               ("sequential", i))], state_bytes, late=True))
            for method in self.methods:
                for i, stage in enumerate(incremental_stages(setup)[:-1]):
                    items.append(Item(lambda m=method, s=stage, i=i: self._store_method(s, m, f"@{i}"),
                                      lambda m=method, s=stage, i=i: self.method_rows(s, m, f"@{i}", final=False),
                                      state_bytes * (1 + len(self.poolings) * ("weave" in self.rows)), late=True))
        return items

    @staticmethod
    def _group(items: Sequence[Item], budget: int) -> list[list[Item]]:
        """Passes whose stored weights fit `budget` (each holds at least one item); late items after the others."""
        passes: list[list[Item]] = [[]]
        used = 0
        late = False
        for item in items:
            if passes[-1] and (used + item.nbytes > budget or item.late and not late):
                passes.append([])
                used = 0
            late = late or item.late
            passes[-1].append(item)
            used += item.nbytes
        return passes

    def sequential_vectors(self) -> tuple[str, ...]:
        """Continual: the task vectors in stream order (theta_pre + tau_i is the sequential model after task i)."""
        setup = self.plan
        return setup.jobs[0].task_vectors if setup.name == "continual" and len(setup.jobs) == 1 else ()

    def reference_rows(self) -> list[Row]:
        """Zero-shot (theta_pre) and, where the setup has that reference, individual (each column scored with
        theta_pre + its own tau), plus a preset's own rows (`extra_rows`)."""
        setup, rows = self.plan, []
        if "zeroshot" in self.rows:
            rows.append(Row({}, (Request(WeightSet(), setup.columns),), ("zeroshot",)))
        if "individual" in self.rows and setup.individual:
            missing = [c.name for c in setup.columns if c.name not in setup.individual]
            if missing:
                raise ValueError(f"columns {missing} have no task vector of their own for the individual reference")
            requests = tuple(Request(WeightSet(tau_name(name)), tuple(c for c in setup.columns if setup.individual[c.name] == name))
                             for name in dict.fromkeys(setup.individual[c.name] for c in setup.columns))
            rows.append(Row({}, requests, ("individual",)))
        return rows + self.extra_rows()

    def extra_rows(self) -> list[Row]:
        """Rows a preset adds to the first pass (each with its own key); appended to the results rows."""
        return []

    def row_fields(self, method: str, variant: str, **fields: Any) -> dict[str, Any]:
        """A results row's fields: what it is, and what produced it (traceability)."""
        base = {"method": method, "weave": variant == "weave", "lam": None, "lambdas": None, "pooling": None,
                "variant": variant}
        base.update(fields)
        base["hyperparameters"] = self.hyperparameters.get(method, {})
        base["seed"] = self.seed
        if variant == "weave":
            base["search_space"] = json.loads(json.dumps(self.spaces[method]))
            base["include_deltas"] = self.include_deltas
        if variant == "privileged":
            base["uses_evaluation_data"] = True
        return base

    def method_rows(self, setup: Setup, method: str, stage: str = "", final: bool = True) -> list[Row]:
        """The rows of one method: lam, recommended, privileged (later stages only: it is chosen on the final
        one), weaving per pooling, and (final stage, when needed) one analysis point per lambda."""
        jobs = range(len(setup.jobs))

        def scaled(value: float, variant: str, key: tuple) -> Row:
            return Row(self.row_fields(method, variant, lam=float(value)),
                       job_requests(setup, [WeightSet(f"{method}{stage}/{j}/g", float(value)) for j in jobs]), key)

        rows = []
        if "lam" in self.rows:
            rows.append(scaled(self.lam, "lam", (method, "lam", stage)))
        rec = recommended_lambda(method)
        if "recommended" in self.rows and rec != self.lam:
            rows.append(scaled(rec, "recommended", (method, "recommended", stage)))
        space = self.plain_space(method)
        if "privileged" in self.rows and not final and space:
            rows.append(scaled(self.best[method], "privileged", (method, "privileged", stage)))
        if "weave" in self.rows:
            for pooling in self.poolings:
                rows.append(Row(self.row_fields(method, "weave", lambdas=self.numbers[method], pooling=pooling),
                                job_requests(setup, [WeightSet(f"{method}{stage}/{j}/weave:{pooling}") for j in jobs]),
                                (method, "weave", pooling, stage)))
        if final and space and ("privileged" in self.rows or method in self.analysis_methods):
            for i, value in enumerate(space):
                rows.append(Row({}, job_requests(setup, [WeightSet(f"{method}/{j}/g", float(value)) for j in jobs]),
                                (method, i)))
        return rows

    def plain_space(self, method: str) -> list[float] | None:
        return plain_lambdas(self.spaces[method])

    # ---------------------------------------------------------------------------------------- merging
    def _store_tau(self, name: str) -> str:
        from weaving.merging.task_vectors import load_task_vector

        self.bank.add(tau_name(name), load_task_vector(self.run.paths[name]))
        return tau_name(name)

    def _store_method(self, setup: Setup, method: str, stage: str = "") -> list[str]:
        """Merge once per job (g = merge(lam=1) - theta_pre) and weave once per pooling; keep them in the bank."""
        import weaving

        names = []
        args = self.method_args[method]
        for j, job in enumerate(setup.jobs):
            members = [self.run.paths[name] for name in job.task_vectors]
            needs_g = any(r in self.rows for r in ("lam", "recommended", "privileged")) or method in self.analysis_methods
            if needs_g:
                merged = self._on_rank_zero(lambda: weaving.merge(self.theta_pre, members, method, lam=1.0,
                                                                  device=self.device, seed=self.seed, **args))
                self.bank.delta_between(f"{method}{stage}/{j}/g", merged)
                names.append(f"{method}{stage}/{j}/g")
                del merged
            if "weave" in self.rows:
                for pooling in self.poolings:
                    state = self._on_rank_zero(lambda: weaving.weave(
                        self.theta_pre, members, method, self.spaces[method], pooling=pooling,
                        include_deltas=self.include_deltas, device=self.device, seed=self.seed, **args))
                    self.bank.add(f"{method}{stage}/{j}/weave:{pooling}", state, full=True)
                    names.append(f"{method}{stage}/{j}/weave:{pooling}")
        return names

    def _on_rank_zero(self, merge: Callable[[], Mapping[str, Tensor]]) -> Mapping[str, Tensor]:
        """The visual weights `merge` computes: on one process, computed here; on several, computed on rank 0 and
        broadcast, so every rank scores the same weights by construction (and, measured on the CPU, sooner than
        every rank merging at once: docs/evaluation.md)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return merge()
        import torch.distributed as dist

        if self.trainer.global_rank == 0:
            merged = merge()
            state = {k: merged[k].detach().to(self.device, pre.dtype).contiguous() for k, pre in self.theta_pre.items()}
            del merged
        else:
            state = {k: torch.empty(pre.shape, dtype=pre.dtype, device=self.device) for k, pre in self.theta_pre.items()}
        for key in self.theta_pre:
            dist.broadcast(state[key], src=0)
        return state

    # ------------------------------------------------------------------------------------------- data
    def test_set(self, task: str) -> EvalSet:
        """The decoded (or streamed) test set of `task`, opened once per job."""
        if task not in self._test_sets:
            from weaving.data.cache import open_test_set
            from weaving.data.tasks import get_task

            args = self.data_args
            subset = None
            if args["max_samples"] is not None:
                n = len(get_task(task).dataset(args["root"], args["split"], None, download=args["download"]))
                subset = evenly_spaced(n, args["max_samples"]) if n > args["max_samples"] else None
            test_set = open_test_set(task, root=args["root"], split=args["split"], transform=self.clip.eval_transform,
                                     image_size=getattr(self.clip_model.visual, "image_size", None),
                                     cache_dir=args["cache_dir"], cache=args["cache"], download=args["download"],
                                     subset=subset, num_workers=args["num_workers"], progress=False)
            if not len(test_set):
                raise ValueError(f"the test set of {task!r} is empty; check the dataset root and split")
            self._test_sets[task] = EvalSet(test_set)
        return self._test_sets[task]

    def val_dataloader(self):
        from torch.utils.data import DataLoader

        device = self.trainer.strategy.root_device
        batch_size = self.data_args["batch_size"] or (1024 if device.type == "cuda" else 256)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        loaders = []
        for _, task in self.loader_plan:
            data = self.test_set(task)
            loaders.append(DataLoader(data, batch_size=None, sampler=ShardSampler(len(data), batch_size, world, rank),
                                      pin_memory=device.type == "cuda"))
        return loaders

    # ------------------------------------------------------------------------------------------ scoring
    def on_validation_start(self) -> None:
        self.bank = WeightBank(self.clip_model, self.theta_pre)
        self.current: int | None = None
        self.stored: list[str] = []
        self.scored: dict[tuple, dict[str, Tally]] = {}
        self.best: dict[str, float] = {}
        self.seen = [0] * len(self.loader_plan)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        number, task = self.loader_plan[dataloader_idx]
        if number != self.current:
            self._start_pass(number)
        if len(batch) == 3:  # the module's own test sets: uint8 batches from the decoded cache, padding marked
            images, labels, valid = batch
            images = self.test_set(task).normalize(images)
        else:  # a datamodule's loader: Lightning's DistributedSampler pads a rank's share with repeats
            images, labels = batch
            loaders = self.trainer.val_dataloaders
            loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
            valid = None
            if self.trainer.world_size > 1:
                valid = padding_mask(loader.sampler, self.seen[dataloader_idx], len(labels), len(loader.dataset))
                valid = None if valid is None else valid.to(labels.device)
            self.seen[dataloader_idx] += len(labels)
        with autocast_for(images.device, self.eval_precision):
            for weights, counts in self.slots[task].items():
                self.bank.load(weights)
                counts += class_counts(predict(self.clip_model, self.heads[task], images), labels,
                                       self.num_classes[task], valid)

    def _start_pass(self, number: int) -> None:
        """Finish the pass before (its counts summed across ranks), store this pass's weights, build its rows."""
        if self.current is not None:
            self._finish_pass()
        self.current = number
        for item in self.passes[number]:
            self.stored += item.store()
        self.pass_rows = [row for item in self.passes[number] for row in item.rows()]
        self.slots: dict[str, dict[WeightSet, Tensor]] = {task: {} for task in self.eval_tasks}
        for row in self.pass_rows:
            for request in row.requests:
                for column in request.columns:
                    self.slots[column.task].setdefault(
                        request.weights, torch.zeros(self.num_classes[column.task], 2, dtype=torch.long,
                                                     device=self.device))

    def _finish_pass(self) -> None:
        keys = [(task, weights) for task, slots in self.slots.items() for weights in slots]
        if keys:
            stacked = torch.stack([self.slots[task][weights] for task, weights in keys])
            stacked = self.trainer.strategy.reduce(stacked, reduce_op="sum") if self.trainer.world_size > 1 else stacked
            counts = dict(zip(keys, stacked.cpu()))
        else:
            counts = {}
        for row in self.pass_rows:
            tallies = {}
            for request in row.requests:
                for column in request.columns:
                    tallies[column.name] = column_tally(counts[(column.task, request.weights)], column)
            self.scored[row.key] = tallies
        for method in self.methods:  # the privileged lambda: the best mean of the final stage's sweep (first maximum)
            space = self.plain_space(method)
            if method not in self.best and space and all((method, i) in self.scored for i in range(len(space))):
                means = [self.plan.mean_of(self.scored[(method, i)]) for i in range(len(space))]
                index = max(range(len(space)), key=lambda i: (means[i], -i))
                self.best[method] = space[index]
                self.scored[(method, "privileged", "")] = self.scored[(method, index)]
        for name in self.stored:
            self.bank.remove(name)
        self.stored = []
        self.current = None

    def on_validation_epoch_end(self) -> None:
        if self.current is not None:
            self._finish_pass()
        self.results, self.analysis_results = self.assemble()
        self.log_results(self.results)
        if self.output_dir and self.trainer.is_global_zero:
            self.write(self.output_dir)
        self.bank = None

    # ------------------------------------------------------------------------------------------ results
    def result_row(self, fields: Mapping[str, Any], tallies: Mapping[str, Tally]) -> dict[str, Any]:
        setup = self.plan
        row = {**fields, "accuracy": {name: tallies[name].accuracy for name in setup.tasks}, "mean": setup.mean_of(tallies)}
        if fields.get("method") in self.methods and self.run is not None:
            row["task_vectors"] = self.input_hashes(self.row_vectors(setup))
        return row

    def row_vectors(self, setup: Setup) -> list[str]:
        return list(dict.fromkeys(name for job in setup.jobs for name in job.task_vectors))

    def input_hashes(self, names: Sequence[str]) -> dict[str, str]:
        """{task vector: sha256 of its file}, each file hashed once per job."""
        from weaving.io.loader import file_sha256

        cache = self.__dict__.setdefault("_hashes", {})
        for name in names:
            if name not in cache:
                cache[name] = file_sha256(self.run.paths[name])
        return {name: cache[name] for name in names}

    def assemble(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """results.json and analysis.json of the job (the schema of `weaving.evaluation.report`)."""
        setup, scored = self.plan, self.scored
        results: dict[str, Any] = {"setup": setup.name, "tasks": setup.tasks, "zeroshot": {}}
        if ("zeroshot",) in scored:
            results["zeroshot"] = {c: scored[("zeroshot",)][c].accuracy for c in setup.tasks}
            results["zeroshot_mean"] = setup.mean_of(scored[("zeroshot",)])
        if ("individual",) in scored:
            results["individual"] = {c: scored[("individual",)][c].accuracy for c in setup.tasks}
            results["individual_mean"] = setup.mean_of(scored[("individual",)])
        results["rows"] = []
        self.row_tallies: list[dict[str, Tally]] = []
        curves: dict[str, Any] = {}
        for method in self.methods:
            rows = [(row.fields, row.key) for row in self.method_rows(setup, method, final=True) if row.fields]
            if method in self.best and "privileged" in self.rows:  # after lam and recommended, before weaving
                at = next((i for i, (fields, _) in enumerate(rows) if fields["weave"]), len(rows))
                rows.insert(at, (self.row_fields(method, "privileged", lam=float(self.best[method])),
                                 (method, "privileged", "")))
            for fields, key in rows:
                results["rows"].append(self.result_row(fields, scored[key]))
                self.row_tallies.append(scored[key])
            space = self.plain_space(method)
            if method in self.analysis_methods and space:
                curves[method] = lambda_curves(setup, space, [scored[(method, i)] for i in range(len(space))])
        if self.stages and self.sequential_vectors():
            self.add_continual_results(results)
        for row in self.extra_rows():
            results["rows"].append(self.result_row(row.fields, scored[row.key]))
            self.row_tallies.append(scored[row.key])
        results["job"] = {"versions": versions(), "model": self.clip.name, "setup": setup.name,
                          "devices": self.trainer.world_size if self._trainer is not None else 1,
                          **({"task_vectors": self.input_hashes(self.vector_names)} if self.run is not None else {})}
        analysis = None
        if curves:
            analysis = {"setup": setup.name, "uses_evaluation_data": True, "note": ANALYSIS_NOTE, "tasks": setup.tasks,
                        "methods": curves}
        return results, analysis

    def add_continual_results(self, results: dict[str, Any]) -> None:
        """Add "sequential" (theta_pre + tau_T) and "metrics" (per row label: the accuracy matrix over the
        stages, row i = after task i, and its continual-learning metrics) to continual `results`."""
        from weaving.evaluation.continual_metrics import continual_metrics
        from weaving.evaluation.report import metrics_label

        setup, scored = self.plan, self.scored
        count = len(self.sequential_vectors())

        def matrix(keys: Sequence[tuple]) -> list[list[float]]:
            return [[scored[key][c].accuracy for c in setup.tasks] for key in keys]

        metrics = {}
        if ("sequential", count - 1) in scored:
            last = scored[("sequential", count - 1)]
            results["sequential"] = {"accuracy": {c: last[c].accuracy for c in setup.tasks}, "mean": setup.mean_of(last)}
            metrics[SEQUENTIAL_LABEL] = continual_metrics(matrix([("sequential", i) for i in range(count)]))
        stages = [f"@{i}" for i in range(count - 1)] + [""]
        for row in results["rows"]:
            variant = (row["variant"], row["pooling"]) if row["weave"] else (row["variant"],)
            metrics[metrics_label(row)] = continual_metrics(matrix([(row["method"], *variant, stage) for stage in stages]))
        results["metrics"] = metrics

    def log_results(self, results: Mapping[str, Any]) -> None:
        """Log each row's mean as `val/<method>/<variant>` (values already summed across ranks)."""
        from weaving.evaluation.report import row_label

        for row in results["rows"]:
            self.log(f"val/{row['method']}/{row_label(row)}", float(row["mean"]), add_dataloader_idx=False,
                     rank_zero_only=True)

    def own_hparams(self) -> dict[str, Any]:
        """This class's init arguments (a preset's, not the base module's it passes on)."""
        import inspect

        own = inspect.signature(type(self).__init__).parameters
        return {k: v for k, v in self.hparams.items() if k in own}

    def config_text(self) -> str:
        """The resolved config of this job as YAML: the CLI's when it ran one, else this module's init args."""
        import yaml

        if self.resolved_config is not None:
            return self.resolved_config
        cls = type(self)
        module = cls.__module__.rsplit(".", 1)[0] if cls.__module__.startswith("weaving.evaluation.") else cls.__module__
        init_args = json.loads(json.dumps(self.own_hparams(), default=str))
        trainer = {"logger": False, "accelerator": "auto", "devices": 1}
        if self._trainer is not None:
            trainer["accelerator"] = self.trainer.strategy.root_device.type
        return yaml.safe_dump({"trainer": trainer, "model": {"class_path": f"{module}.{cls.__name__}",
                                                             "init_args": init_args}}, sort_keys=False)

    def write(self, output_dir: str | os.PathLike) -> dict[str, Path]:
        """results.json/csv/md, analysis.json, the plots, summary.md and config.yaml in `output_dir` (atomically)."""
        from weaving.io.publish import atomic_write_text
        from weaving.evaluation import report

        out = Path(output_dir)
        written = write_comparison(self.results, self.analysis_results, out, plots=self.plots,
                                   reference=self.reference)
        written["summary"] = atomic_write_text(out / "summary.md", report.format_summary([self.results]))
        written["config"] = atomic_write_text(out / "config.yaml", self.config_text())
        return written

    def configure_optimizers(self) -> None:
        """Nothing is trained: the comparison only validates."""
        return None


def write_comparison(results: Mapping[str, Any], analysis: Mapping[str, Any] | None, output_dir: str | os.PathLike,
                     *, plots: bool = True, reference: str | None = None) -> dict[str, Path]:
    """Write results.json/csv/md, and with an analysis, analysis.json plus lambda_curves.png and
    best_lambda.png, into `output_dir` (atomically)."""
    from weaving.io.publish import atomic_write_text
    from weaving.evaluation import report

    out = Path(output_dir)
    written = report.write_results(results, out, reference=reference)
    if plots and results.get("metrics"):
        written["continual_accuracy"] = report.plot_continual(results, out / "continual_accuracy.png")
    if analysis is not None:
        written["analysis"] = atomic_write_text(out / "analysis.json", json.dumps(analysis, indent=2) + "\n")
        if plots and analysis["methods"]:
            written["lambda_curves"] = report.plot_lambda_curves(analysis, results, out / "lambda_curves.png")
            written["best_lambda"] = report.plot_best_lambda_histogram([analysis], out / "best_lambda.png", [results])
    return written


def run_comparison(task_vectors: str | os.PathLike | Sequence[str | os.PathLike], *, accelerator: str = "auto",
                   progress: bool = False, **config: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The comparison job from Python: `ComparisonModule(task_vectors, **config)` validated by a one-device
    Trainer; returns (results, analysis). `weaving validate --config` runs the same module."""
    if isinstance(task_vectors, os.PathLike):
        task_vectors = str(task_vectors)
    elif not isinstance(task_vectors, str):
        task_vectors = [str(p) for p in task_vectors]
    module = ComparisonModule(task_vectors, **config)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=progress)
    trainer.validate(module, verbose=False)
    return module.results, module.analysis_results
