"""Comparison runs: for each merge method, the data-free baseline (lam = 1) and Weight Weaving, scored in
one setup, plus the lambda analysis that uses evaluation data (kept apart, in analysis.json and plots).

A plain loop over rows rather than a Lightning `Trainer.validate` per row: every row shares one CLIP
model, one set of heads and one set of test loaders (the `Evaluator`), and a row is only "load weights,
forward the test sets". A Trainer per row would rebuild loops, loggers and device moves each time for
no gain on a single device. `MergeModule` is the Lightning entry point for one merged model, and it
scores with the same functions (`weaving.evaluation.evaluate`), so the numbers agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from weaving.evaluation.evaluate import Evaluator, Tally, mean_accuracy
from weaving.evaluation.search_spaces import default_search_space
from weaving.evaluation.setups import Setup

ANALYSIS_NOTE = (
    "Uses evaluation data: accuracy of every lambda of the search space on the test sets. For analysis "
    "only (best lambda per task, Figure 2 of the paper); the data-free results are in results.json."
)

StateDict = Mapping[str, Tensor]


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
    """theta_pre + scale * delta, key by key, in the pretrained weights' dtype and device."""
    return {key: value + scale * delta[key].to(value.device, value.dtype) for key, value in pretrained.items()}


def merged_delta(pretrained: StateDict, merged: StateDict) -> dict[str, Tensor]:
    """g = merged - theta_pre (CPU), so theta(lam) = theta_pre + lam * g for any lam without merging again."""
    return {key: merged[key].detach().to("cpu", value.dtype) - value for key, value in pretrained.items()}


def resolve_lambdas(method: str, setup: str, lambdas: Mapping[str, Any] | str | Sequence[float] | None) -> list[float]:
    """The search space of `method`: from a per-method mapping, one space for all, or the paper's default."""
    from weaving import parse_lambdas

    if isinstance(lambdas, Mapping):
        space = lambdas.get(method, default_search_space(method, setup))
    else:
        space = default_search_space(method, setup) if lambdas is None else lambdas
    return [float(v) for v in parse_lambdas(space)]


def _row(method: str, tallies: Mapping[str, Tally], setup: Setup, *, lam: float | None = None,
         lambdas: Sequence[float] | None = None, pooling: str | None = None) -> dict[str, Any]:
    return {
        "method": method,
        "weave": lambdas is not None,
        "lam": lam,
        "lambdas": None if lambdas is None else [float(v) for v in lambdas],
        "pooling": pooling,
        "accuracy": {name: tallies[name].accuracy for name in setup.tasks},
        "mean": mean_accuracy({name: tallies[name] for name in setup.tasks}, setup.mean),
    }


def reference_results(setup: Setup, evaluator: Evaluator, task_vectors: Mapping[str, StateDict]) -> dict[str, Any]:
    """Zero-shot (theta_pre) and individual (theta_pre + tau of each column's own task vector) accuracies."""
    zeroshot = evaluator.evaluate(setup.columns, None)
    individual: dict[str, Tally] = {}
    for name in dict.fromkeys(setup.individual.values()):
        columns = [c for c in setup.columns if setup.individual[c.name] == name]
        individual.update(evaluator.evaluate(columns, add_scaled(evaluator.pretrained, task_vectors[name])))
    return {
        "zeroshot": {c: zeroshot[c].accuracy for c in setup.tasks},
        "individual": {c: individual[c].accuracy for c in setup.tasks},
        "zeroshot_mean": mean_accuracy(zeroshot, setup.mean),
        "individual_mean": mean_accuracy(individual, setup.mean),
    }


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
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Score every method at `lam` and with weaving (one row per pooling) in `setup`.

    Returns (results, analysis): results follow the results.json schema; analysis (None when
    `analysis=False`) holds, per method, every task's accuracy at each lambda of the search space and
    the best lambda per task. Merges run on `device` (default: the evaluator's).
    """
    import weaving

    if not methods:
        raise ValueError("no merge methods given; name at least one of weaving.METHODS")
    unknown = [m for m in methods if m not in weaving.METHODS]
    if unknown:
        raise ValueError(f"unknown merge methods {unknown}; expected names from: {', '.join(sorted(weaving.METHODS))}")
    method_args = dict(method_args or {})
    device = evaluator.device if device is None else device
    vectors = load_task_vectors(task_vectors, setup.task_vectors)
    pretrained = evaluator.pretrained

    results: dict[str, Any] = {"setup": setup.name, "tasks": setup.tasks}
    results.update(reference_results(setup, evaluator, vectors))
    results["rows"] = []
    curves: dict[str, Any] = {}

    bar = tqdm(methods, desc=f"{setup.name}: methods", disable=not progress)
    for method in bar:
        bar.set_postfix_str(method)
        args = dict(method_args.get(method, {}))
        space = resolve_lambdas(method, setup.name, lambdas)
        plain: dict[str, Tally] = {}
        woven: dict[str, dict[str, Tally]] = {pooling: {} for pooling in poolings}
        per_lambda: list[dict[str, Tally]] = [{} for _ in space]
        for job in setup.jobs:
            members = [vectors[name] for name in job.task_vectors]
            merged = weaving.merge(pretrained, members, method, lam=1.0, device=device, seed=seed, **args)
            delta = merged_delta(pretrained, merged)
            plain.update(evaluator.evaluate(job.columns, add_scaled(pretrained, delta, lam)))
            if analysis:
                for i, value in enumerate(space):
                    per_lambda[i].update(evaluator.evaluate(job.columns, add_scaled(pretrained, delta, value)))
            for pooling in poolings:
                state = weaving.weave(pretrained, members, method, space, pooling=pooling,
                                      include_deltas=include_deltas, device=device, seed=seed, **args)
                woven[pooling].update(evaluator.evaluate(job.columns, state))
        results["rows"].append(_row(method, plain, setup, lam=float(lam)))
        for pooling in poolings:
            results["rows"].append(_row(method, woven[pooling], setup, lambdas=space, pooling=pooling))
        if analysis:
            curves[method] = lambda_curves(setup, space, per_lambda)

    analysis_out = None
    if analysis:
        analysis_out = {"setup": setup.name, "uses_evaluation_data": True, "note": ANALYSIS_NOTE,
                        "tasks": setup.tasks, "methods": curves}
    return results, analysis_out


def lambda_curves(setup: Setup, space: Sequence[float], per_lambda: Sequence[Mapping[str, Tally]]) -> dict[str, Any]:
    """Accuracy per task along the search space, its mean, and each task's best lambda (first maximum)."""
    accuracy = {name: [tallies[name].accuracy for tallies in per_lambda] for name in setup.tasks}
    best = {}
    for name, accs in accuracy.items():
        best[name] = float(space[max(range(len(accs)), key=lambda i: (accs[i], -i))])
    return {
        "lambdas": [float(v) for v in space],
        "accuracy": accuracy,
        "mean": [mean_accuracy({n: t[n] for n in setup.tasks}, setup.mean) for t in per_lambda],
        "best_lambda": best,
    }


def write_comparison(results: Mapping[str, Any], analysis: Mapping[str, Any] | None, output_dir: str | os.PathLike,
                     *, plots: bool = True) -> dict[str, Path]:
    """Write results.json/csv/md, and with an analysis, analysis.json plus lambda_curves.png and
    best_lambda.png, into `output_dir` (atomically)."""
    import json

    from weaving.evaluation import report

    written = report.write_results(results, output_dir)
    if analysis is not None:
        out = Path(output_dir)
        written["analysis"] = report.atomic_write_text(out / "analysis.json", json.dumps(analysis, indent=2) + "\n")
        if plots and analysis["methods"]:
            written["lambda_curves"] = report.plot_lambda_curves(analysis, results, out / "lambda_curves.png")
            written["best_lambda"] = report.plot_best_lambda_histogram([analysis], out / "best_lambda.png", [results])
    return written
