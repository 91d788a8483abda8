"""Comparison runs: for each merge method, the data-free baseline (lam = 1) and Weight Weaving, scored in
one setup, plus the lambda analysis that uses evaluation data (kept apart, in analysis.json and plots).

A comparison is a list of `Row`s, each a weight-set spec per group of columns (`Request`s): zero-shot
(theta_pre), individual (theta_pre + tau), each method at lam, each weaving pooling, and the analysis'
theta_pre + lambda * g for every lambda of the search space. Merges run once per method and job; their
deltas g (and the woven weights) stay on the device in the evaluator's `WeightBank`, which builds each
row's weights in place. All rows are then scored in one pass over each test set (`Evaluator.score`):
every batch is moved to the device once and scored by every row that needs it. When the stored weights
would not fit `memory_budget`, methods are scored in several passes (each reads the decoded cache again,
it never decodes twice). `MergeModule` scores with the same `WeightBank` and `score_batch`, and both use
the setup's own mean (`Setup.mean_of`), so `weaving validate` and the tables agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from weaving.evaluation.evaluate import Evaluator, Request, Tally, WeightSet
from weaving.merging.search_space import default_search_space, recommended_lambda
from weaving.evaluation.setups import Setup, incremental_stages

SEQUENTIAL_LABEL = "Seq-FT"  # the sequential model theta_pre + tau_i (MagMax's sequential fine-tuning)

ANALYSIS_NOTE = (
    "Uses evaluation data: accuracy of every lambda of the search space on the test sets. For analysis "
    "only (best lambda per task, Figure 2 of the paper); the data-free results are in results.json."
)

StateDict = Mapping[str, Tensor]


@dataclass(frozen=True)
class Row:
    """One scored row: its `fields` in results.json (method, weave, lam, lambdas, pooling, ...) and the
    weight set that fills each group of columns (`requests`). `kind` is "row" (a results row),
    "reference" (zeroshot / individual) or "analysis" (a point of a lambda curve)."""

    fields: Mapping[str, Any]
    requests: tuple[Request, ...]
    kind: str = "row"
    key: tuple = field(default=())


def job_requests(setup: Setup, weights: Sequence[WeightSet]) -> tuple[Request, ...]:
    """One request per merge job of `setup`: job j's columns scored with `weights[j]`."""
    return tuple(Request(w, job.columns) for w, job in zip(weights, setup.jobs, strict=True))


def tau_name(task_vector: str) -> str:
    """Name under which a comparison stores task vector tau in the bank (theta_pre + scale * tau)."""
    return f"tau:{task_vector}"


def load_task_vectors(sources: Mapping[str, StateDict | str | os.PathLike], names: Sequence[str]) -> dict[str, StateDict]:
    """The task vectors `names` from `sources` (dicts or safetensors paths), each loaded once."""
    from weaving.merging.task_vectors import load_task_vector

    missing = [name for name in names if name not in sources]
    if missing:
        raise ValueError(f"task vectors {missing} are needed by the setup but only {sorted(sources)} were given")
    loaded = {}
    for name in names:
        source = sources[name]
        loaded[name] = load_task_vector(source) if isinstance(source, (str, Path)) else dict(source)
    return loaded


def add_scaled(pretrained: StateDict, delta: StateDict, scale: float = 1.0) -> dict[str, Tensor]:
    """theta_pre + scale * delta, key by key (the same fused op as `WeightBank.load`), in theta_pre's dtype."""
    return {key: torch.add(value, delta[key].to(value.device, value.dtype), alpha=scale) for key, value in pretrained.items()}


def resolve_lambdas(method: str, setup: str, lambdas: Mapping[str, Any] | str | Sequence[float] | None) -> list[float]:
    """The search space of `method`: from a per-method mapping, one space for all, or the paper's default."""
    from weaving import parse_lambdas

    if isinstance(lambdas, Mapping):
        space = lambdas.get(method, default_search_space(method, setup))
    else:
        space = default_search_space(method, setup) if lambdas is None else lambdas
    return [float(v) for v in parse_lambdas(space)]


def result_row(fields: Mapping[str, Any], tallies: Mapping[str, Tally], setup: Setup) -> dict[str, Any]:
    """A results.json row: `fields`, then the accuracy of each column and the setup's mean."""
    return {**fields, "accuracy": {name: tallies[name].accuracy for name in setup.tasks}, "mean": setup.mean_of(tallies)}


def reference_rows(setup: Setup) -> list[Row]:
    """Zero-shot (theta_pre) and, where the setup has that reference, individual (each column scored with
    theta_pre + its own tau). The continual setup's sequential model is scored by `run_stages`."""
    rows = [Row({}, (Request(WeightSet(), setup.columns),), "reference", ("zeroshot",))]
    if setup.individual:
        missing = [c.name for c in setup.columns if c.name not in setup.individual]
        if missing:
            raise ValueError(f"columns {missing} have no task vector of their own for the individual reference")
        individual = tuple(Request(WeightSet(tau_name(name)), tuple(c for c in setup.columns if setup.individual[c.name] == name))
                           for name in dict.fromkeys(setup.individual[c.name] for c in setup.columns))
        rows.append(Row({}, individual, "reference", ("individual",)))
    return rows


def sequential_vectors(setup: Setup) -> tuple[str, ...]:
    """Continual: the task vectors in stream order (theta_pre + tau_i is the sequential model after task i)."""
    return setup.jobs[0].task_vectors if setup.name == "continual" and len(setup.jobs) == 1 else ()


def method_rows(setup: Setup, method: str, space: Sequence[float], *, lam: float, poolings: Sequence[str],
                analysis: bool, recommended: float | None = None, privileged: float | None = None,
                stage: str = "") -> list[Row]:
    """The rows of one method: lam, the authors' recommended lambda (when given and not `lam`), the
    privileged lambda (when given), one weaving row per pooling, and (analysis) one point per lambda.

    Weight names: "<method><stage>/<job>/g" holds the merged delta g, "<method><stage>/<job>/weave:<pooling>"
    the woven weights (see `store_method`); `stage` tells apart the merges of the continual stages.
    """
    jobs = range(len(setup.jobs))

    def scaled(value: float, variant: str) -> Row:
        return Row({"method": method, "weave": False, "lam": float(value), "lambdas": None, "pooling": None,
                    "variant": variant},
                   job_requests(setup, [WeightSet(f"{method}{stage}/{j}/g", float(value)) for j in jobs]), "row",
                   (method, variant, stage))

    rows = [scaled(lam, "lam")]
    if recommended is not None and recommended != lam:
        rows.append(scaled(recommended, "recommended"))
    if privileged is not None:
        rows.append(scaled(privileged, "privileged"))
    for pooling in poolings:
        rows.append(Row({"method": method, "weave": True, "lam": None, "lambdas": [float(v) for v in space],
                         "pooling": pooling, "variant": "weave"},
                        job_requests(setup, [WeightSet(f"{method}{stage}/{j}/weave:{pooling}") for j in jobs]), "row",
                        (method, "weave", pooling, stage)))
    if analysis:
        for i, value in enumerate(space):
            rows.append(Row({}, job_requests(setup, [WeightSet(f"{method}{stage}/{j}/g", float(value)) for j in jobs]),
                            "analysis", (method, i)))
    return rows


def store_method(evaluator: Evaluator, setup: Setup, vectors: Mapping[str, StateDict], method: str,
                 space: Sequence[float], *, args: Mapping[str, Any], poolings: Sequence[str], include_deltas: bool,
                 device: torch.device | str, seed: int, stage: str = "") -> list[str]:
    """Merge once per job (g = merge(lam=1) - theta_pre) and weave once per pooling; keep them in the bank."""
    import weaving

    pretrained, names = evaluator.pretrained, []
    for j, job in enumerate(setup.jobs):
        members = [vectors[name] for name in job.task_vectors]
        merged = weaving.merge(pretrained, members, method, lam=1.0, device=device, seed=seed, **args)
        evaluator.bank.delta_between(f"{method}{stage}/{j}/g", merged)
        names.append(f"{method}{stage}/{j}/g")
        del merged
        for pooling in poolings:
            state = weaving.weave(pretrained, members, method, space, pooling=pooling, include_deltas=include_deltas,
                                  device=device, seed=seed, **args)
            evaluator.bank.add(f"{method}{stage}/{j}/weave:{pooling}", state, full=True)
            names.append(f"{method}{stage}/{j}/weave:{pooling}")
    return names


def default_memory_budget(device: torch.device) -> int:
    """Bytes the stored weights may take: half the free GPU memory, or half the available host memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def score_rows(evaluator: Evaluator, rows: Sequence[Row], desc: str = "scoring") -> list[dict[str, Tally]]:
    """Tallies of every row's columns, all rows scored in one pass over each test set."""
    requests = [request for row in rows for request in row.requests]
    tallies = iter(evaluator.score(requests, desc=desc))
    out = []
    for row in rows:
        merged: dict[str, Tally] = {}
        for _ in row.requests:
            merged.update(next(tallies))
        out.append(merged)
    return out


def run_comparison(
    setup: Setup,
    evaluator: Evaluator,
    task_vectors: Mapping[str, StateDict | str | os.PathLike],
    methods: Sequence[str],
    *,
    method_args: Mapping[str, Mapping[str, Any]] | None = None,
    lambdas: Mapping[str, Any] | str | Sequence[float] | None = None,
    poolings: Sequence[str] = ("mean",),
    include_deltas: bool = True,
    lam: float = 1.0,
    analysis: bool = True,
    seed: int = 0,
    device: torch.device | str | None = None,
    memory_budget: int | None = None,
    extra_rows: Sequence[Row] = (),
    recommended: bool = True,
    privileged: bool = True,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Score every method at `lam`, at its authors' recommended lambda (`recommended`, where it is not
    `lam`), at the privileged lambda (`privileged`: the single lambda of the search space with the best
    mean on the evaluated test sets) and with weaving (one row per pooling) in `setup`.

    For the continual setup the results also hold the sequential model (theta_pre + tau_T) and, for it and
    every row, the accuracy matrix of the merges after each task (task vectors 1..i, as MagMax evaluates
    them) with its continual-learning metrics (`weaving.evaluation.continual_metrics`).

    Returns (results, analysis): results follow the results.json schema; analysis (None when
    `analysis=False`) holds, per method, every task's accuracy at each lambda of the search space and
    the best lambda per task. Merges run on `device` (default: the evaluator's). `memory_budget` (bytes;
    default `default_memory_budget`) bounds the merged weights kept on the device at once.
    `extra_rows` (kind "row", each with a distinct `key`) are scored in the first pass with the references
    and appended to the results rows; their weight sets may name theta_pre (`WeightSet()`), a task vector
    (`WeightSet(tau_name(name), scale)`, for the setup's task vectors) or weights the caller stored in
    `evaluator.bank` beforehand.
    """
    import weaving
    from weaving.merging.registry import get_method

    if not methods:
        raise ValueError("no merge methods given; name at least one of weaving.METHODS")
    for method in methods:
        get_method(method)
    if len(set(methods)) != len(methods):
        raise ValueError(f"merge methods repeat in {list(methods)}; give each method once")
    keys = [row.key for row in extra_rows]
    if any(row.kind != "row" for row in extra_rows) or len(set(keys)) != len(keys) or () in keys:
        raise ValueError("extra_rows must be rows of kind 'row', each with its own non-empty key")
    method_args = dict(method_args or {})
    device = evaluator.device if device is None else device
    vectors = load_task_vectors(task_vectors, setup.task_vectors)
    spaces = {method: resolve_lambdas(method, setup.name, lambdas) for method in methods}
    bank = evaluator.bank
    state_bytes = sum(t.numel() * t.element_size() for t in bank.pretrained.values())
    budget = default_memory_budget(evaluator.device) if memory_budget is None else memory_budget
    per_method = state_bytes * len(setup.jobs) * (1 + len(poolings))

    stored = []
    for name in dict.fromkeys(setup.individual.values()):
        bank.add(tau_name(name), vectors[name])
        stored.append(tau_name(name))
    passes: list[list[str]] = [[]]
    used = bank.nbytes()
    for method in methods:
        if passes[-1] and used + per_method > budget:
            passes.append([])
            used = 0
        passes[-1].append(method)
        used += per_method

    def rec(method: str) -> float | None:
        return recommended_lambda(method) if recommended else None

    scored: dict[tuple, dict[str, Tally]] = {}
    bar = tqdm(methods, desc=f"{setup.name}: methods", disable=not progress)
    try:
        for number, group in enumerate(passes):
            rows = reference_rows(setup) + list(extra_rows) if number == 0 else []
            for method in group:
                bar.set_postfix_str(method)
                stored += store_method(evaluator, setup, vectors, method, spaces[method],
                                       args=dict(method_args.get(method, {})), poolings=poolings,
                                       include_deltas=include_deltas, device=device, seed=seed)
                rows += method_rows(setup, method, spaces[method], lam=lam, poolings=poolings,
                                    analysis=analysis or privileged, recommended=rec(method))
            for row, tallies in zip(rows, score_rows(evaluator, rows, desc=f"{setup.name}: scoring")):
                scored[row.key] = tallies
            for name in stored:
                bank.remove(name)
            stored = []
            bar.update(len(group))
    finally:
        bar.close()
        for name in stored:
            bank.remove(name)

    zeroshot = scored[("zeroshot",)]
    results: dict[str, Any] = {
        "setup": setup.name,
        "tasks": setup.tasks,
        "zeroshot": {c: zeroshot[c].accuracy for c in setup.tasks},
        "zeroshot_mean": setup.mean_of(zeroshot),
    }
    if setup.individual:
        individual = scored[("individual",)]
        results["individual"] = {c: individual[c].accuracy for c in setup.tasks}
        results["individual_mean"] = setup.mean_of(individual)
    results["rows"] = []
    curves: dict[str, Any] = {}
    best: dict[str, float] = {}
    for method in methods:
        space = spaces[method]
        if privileged:  # the privileged row is the best point of the search space (first maximum)
            means = [setup.mean_of(scored[(method, i)]) for i in range(len(space))]
            index = max(range(len(space)), key=lambda i: (means[i], -i))
            best[method] = space[index]
            scored[(method, "privileged", "")] = scored[(method, index)]
        rows = method_rows(setup, method, space, lam=lam, poolings=poolings, analysis=False,
                           recommended=rec(method), privileged=best.get(method))
        for row in rows:
            results["rows"].append(result_row(row.fields, scored[row.key], setup))
        if analysis:
            curves[method] = lambda_curves(setup, space, [scored[(method, i)] for i in range(len(space))])

    if sequential_vectors(setup):
        # after each earlier task: the sequential model theta_pre + tau_i, and every method row merged from
        # the task vectors 1..i; scored in passes whose stored weights fit the memory budget
        items: list[tuple[Any, list[Row], int]] = []
        for i, name in enumerate(sequential_vectors(setup)):
            items.append((lambda name=name: _store_tau(bank, name, vectors[name]),
                          [Row({}, (Request(WeightSet(tau_name(name)), setup.columns),), "reference", ("sequential", i))],
                          state_bytes))
        for method in methods:
            merge_args = dict(args=dict(method_args.get(method, {})), poolings=poolings, include_deltas=include_deltas,
                              device=device, seed=seed)
            for i, stage in enumerate(incremental_stages(setup)[:-1]):
                items.append((lambda stage=stage, method=method, i=i, merge_args=merge_args: store_method(
                                  evaluator, stage, vectors, method, spaces[method], stage=f"@{i}", **merge_args),
                              method_rows(stage, method, spaces[method], lam=lam, poolings=poolings, analysis=False,
                                          recommended=rec(method), privileged=best.get(method), stage=f"@{i}"),
                              state_bytes * (1 + len(poolings))))
        scored.update(run_stages(evaluator, items, budget, desc=f"{setup.name}: after each task", progress=progress))
        add_continual_results(results, setup, scored)

    for row in extra_rows:
        results["rows"].append(result_row(row.fields, scored[row.key], setup))

    analysis_out = None
    if analysis:
        analysis_out = {"setup": setup.name, "uses_evaluation_data": True, "note": ANALYSIS_NOTE,
                        "tasks": setup.tasks, "methods": curves}
    return results, analysis_out


def _store_tau(bank, name: str, tau: StateDict) -> list[str]:
    bank.add(tau_name(name), tau)
    return [tau_name(name)]


def run_stages(evaluator: Evaluator, items: Sequence[tuple[Any, list[Row], int]], budget: int, *, desc: str,
               progress: bool = True) -> dict[tuple, dict[str, Tally]]:
    """Score items (store: a function that puts weights in the bank and returns their names; the rows that
    use them; their bytes) in passes that keep at most `budget` bytes stored; each pass frees its weights."""
    groups: list[list[tuple[Any, list[Row], int]]] = [[]]
    used = 0
    for item in items:
        if groups[-1] and used + item[2] > budget:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += item[2]
    scored: dict[tuple, dict[str, Tally]] = {}
    for group in tqdm(groups, desc=desc, disable=not progress or len(groups) < 2):
        names: list[str] = []
        try:
            for store, _, _ in group:
                names += store()
            rows = [row for _, item_rows, _ in group for row in item_rows]
            for row, tallies in zip(rows, score_rows(evaluator, rows, desc=desc)):
                scored[row.key] = tallies
        finally:
            for name in names:
                evaluator.bank.remove(name)
    return scored


def add_continual_results(results: dict[str, Any], setup: Setup, scored: Mapping[tuple, Mapping[str, Tally]]) -> None:
    """Add "sequential" (theta_pre + tau_T) and "metrics" (per row label: the accuracy matrix over the
    stages, row i = after task i, and its continual-learning metrics) to continual `results`."""
    from weaving.evaluation.continual_metrics import continual_metrics

    count = len(sequential_vectors(setup))
    last = scored[("sequential", count - 1)]
    results["sequential"] = {"accuracy": {c: last[c].accuracy for c in setup.tasks}, "mean": setup.mean_of(last)}

    def matrix(keys: Sequence[tuple]) -> list[list[float]]:
        return [[scored[key][c].accuracy for c in setup.tasks] for key in keys]

    metrics = {SEQUENTIAL_LABEL: continual_metrics(matrix([("sequential", i) for i in range(count)]))}
    stages = [f"@{i}" for i in range(count - 1)] + [""]
    for row in results["rows"]:
        variant = (row["variant"], row["pooling"]) if row["weave"] else (row["variant"],)
        metrics[metrics_label(row)] = continual_metrics(matrix([(row["method"], *variant, stage) for stage in stages]))
    results["metrics"] = metrics


def metrics_label(row: Mapping[str, Any]) -> str:
    """The key of a results row in the continual "metrics": "<method> <variant>" (e.g. "ties lam=1")."""
    from weaving.evaluation.report import row_label

    return f"{row['method']} {row_label(row)}"


def lambda_curves(setup: Setup, space: Sequence[float], per_lambda: Sequence[Mapping[str, Tally]]) -> dict[str, Any]:
    """Accuracy per task along the search space, its mean, and each task's best lambda (first maximum)."""
    accuracy = {name: [tallies[name].accuracy for tallies in per_lambda] for name in setup.tasks}
    best = {}
    for name, accs in accuracy.items():
        best[name] = float(space[max(range(len(accs)), key=lambda i: (accs[i], -i))])
    return {
        "lambdas": [float(v) for v in space],
        "accuracy": accuracy,
        "mean": [setup.mean_of(t) for t in per_lambda],
        "best_lambda": best,
    }


def write_comparison(results: Mapping[str, Any], analysis: Mapping[str, Any] | None, output_dir: str | os.PathLike,
                     *, plots: bool = True) -> dict[str, Path]:
    """Write results.json/csv/md, and with an analysis, analysis.json plus lambda_curves.png and
    best_lambda.png, into `output_dir` (atomically)."""
    import json

    from weaving.evaluation import report

    written = report.write_results(results, output_dir)
    if plots and results.get("metrics"):
        written["continual_accuracy"] = report.plot_continual(results, Path(output_dir) / "continual_accuracy.png")
    if analysis is not None:
        out = Path(output_dir)
        written["analysis"] = report.atomic_write_text(out / "analysis.json", json.dumps(analysis, indent=2) + "\n")
        if plots and analysis["methods"]:
            written["lambda_curves"] = report.plot_lambda_curves(analysis, results, out / "lambda_curves.png")
            written["best_lambda"] = report.plot_best_lambda_histogram([analysis], out / "best_lambda.png", [results])
    return written
