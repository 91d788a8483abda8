"""Results files and plots: results.json / results.csv / results.md per setup, a cross-setup summary
(the paper's Table 2 layout), and the lambda analysis plots (the paper's Figure 2).

`results.json` schema (accuracies in [0, 1]):

    {"setup": str, "tasks": [str], "zeroshot": {task: acc}, "individual": {task: acc},
     "rows": [{"method": str, "weave": bool, "lam": float | null, "lambdas": [float] | null,
               "pooling": str | null, "variant": "lam" | "recommended" | "privileged" | "weave",
               "accuracy": {task: acc}, "mean": float}]}

"variant" (optional; default "weave" or "lam"): "recommended" is the authors' recommended lambda,
"privileged" the best lambda of the search space on the evaluated test sets (uses evaluation data).
Optional extra keys: "zeroshot_mean" and "individual_mean" (the mean of those rows by the setup's rule;
for continual it is over samples, not over columns). The continual setup has no "individual" (its parts'
models are different checkpoints, not one model) and adds "sequential" ({"accuracy": {task: acc},
"mean": float}: theta_pre + tau_T) and "metrics" ({row label: {"accuracy_matrix": [[acc]],
"average_accuracy", "average_incremental_accuracy", "forgetting"}}; labels "Seq-FT" and
"<method> <variant>", e.g. "ties lam=1"). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from weaving.io.publish import atomic_write_bytes, atomic_write_text

RESULTS_FILES = ("results.json", "results.csv", "results.md")
ROW_KEYS = ("method", "weave", "lam", "lambdas", "pooling", "accuracy", "mean")
TOP_KEYS = ("setup", "tasks", "zeroshot", "rows")
VARIANTS = ("lam", "recommended", "privileged", "weave")
METRIC_KEYS = ("accuracy_matrix", "average_accuracy", "average_incremental_accuracy", "forgetting")


# ------------------------------------------------------------------------------------------ validation
def _check_accuracies(values: Any, tasks: Sequence[str], where: str) -> None:
    if not isinstance(values, Mapping):
        raise ValueError(f"results: {where} must be a mapping task -> accuracy, got {type(values).__name__}")
    unknown = [name for name in values if name not in tasks]
    if unknown:
        raise ValueError(f"results: {where} names tasks {unknown} that are not in 'tasks' {list(tasks)}")
    for name, value in values.items():
        if not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0 or math.isnan(value)):
            raise ValueError(f"results: {where}[{name!r}] = {value!r} is not an accuracy in [0, 1]")


def check_results(results: Mapping[str, Any]) -> Mapping[str, Any]:
    """Raise a one-line ValueError naming the key when `results` does not follow the results.json schema."""
    missing = [key for key in TOP_KEYS if key not in results]
    if missing:
        raise ValueError(f"results: missing keys {missing}; expected {list(TOP_KEYS)}")
    tasks = results["tasks"]
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks) or not tasks:
        raise ValueError("results: 'tasks' must be a non-empty list of task names")
    _check_accuracies(results["zeroshot"], tasks, "zeroshot")
    if "individual" in results:
        _check_accuracies(results["individual"], tasks, "individual")
    if "sequential" in results:
        _check_accuracies(results["sequential"].get("accuracy"), tasks, "sequential['accuracy']")
        _check_accuracies({"mean": results["sequential"].get("mean")}, ["mean"], "sequential")
    for label, entry in (results.get("metrics") or {}).items():
        missing = [key for key in METRIC_KEYS if key not in entry]
        if missing:
            raise ValueError(f"results: metrics[{label!r}] misses keys {missing}; expected {list(METRIC_KEYS)}")
        if len(entry["accuracy_matrix"]) != len(tasks) or any(len(r) != len(tasks) for r in entry["accuracy_matrix"]):
            raise ValueError(f"results: metrics[{label!r}]['accuracy_matrix'] must be {len(tasks)} x {len(tasks)}")
    for i, row in enumerate(results["rows"]):
        missing = [key for key in ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"results: rows[{i}] misses keys {missing}; expected {list(ROW_KEYS)}")
        if not isinstance(row["weave"], bool):
            raise ValueError(f"results: rows[{i}]['weave'] must be true or false")
        if row.get("variant", "weave" if row["weave"] else "lam") not in VARIANTS:
            raise ValueError(f"results: rows[{i}]['variant'] = {row['variant']!r}; expected one of {list(VARIANTS)}")
        if row["weave"] and (not row["lambdas"] or row["pooling"] is None):
            raise ValueError(f"results: rows[{i}] is a weaving row but has no 'lambdas' or 'pooling'")
        if not row["weave"] and row["lam"] is None:
            raise ValueError(f"results: rows[{i}] is a plain merge but has no 'lam'")
        _check_accuracies(row["accuracy"], tasks, f"rows[{i}]['accuracy']")
        _check_accuracies({"mean": row["mean"]}, ["mean"], f"rows[{i}]")
    return results


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a results.json file (or the results.json inside a folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}; run a comparison first (weaving demo)")
    results = json.loads(path.read_text())
    check_results(results)
    return results


# --------------------------------------------------------------------------------------------- tables
def describe_lambdas(lambdas: Sequence[float] | None) -> str:
    """Short text for a search space: "0.1..1.5 (15)", or the values when not evenly spaced."""
    if not lambdas:
        return ""
    values = [round(float(v), 6) for v in lambdas]
    if len(values) > 2:
        steps = {round(b - a, 6) for a, b in zip(values, values[1:])}
        if len(steps) == 1:
            return f"{values[0]:g}..{values[-1]:g} ({len(values)})"
    return ",".join(f"{v:g}" for v in values)


def row_label(row: Mapping[str, Any]) -> str:
    """Variant text of a row: "lam=1", "lam=0.3 (recommended)", "lam=0.7 (privileged)" or
    "+ weaving (mean, 0.1..1.0 (10))"."""
    if row["weave"]:
        return f"+ weaving ({row['pooling']}, {describe_lambdas(row['lambdas'])})"
    variant = row.get("variant", "lam")
    return f"lam={row['lam']:g}" + ("" if variant == "lam" else f" ({variant})")


def metrics_label(row: Mapping[str, Any]) -> str:
    """The key of a results row in the continual "metrics": "<method> <variant>" (e.g. "ties lam=1")."""
    return f"{row['method']} {row_label(row)}"


def _gains(results: Mapping[str, Any]) -> list[float | None]:
    """Per row: weaving mean minus the same method's plain-merge mean (first plain row); None otherwise."""
    base = {}
    for row in results["rows"]:
        if not row["weave"] and row.get("variant", "lam") == "lam":
            base.setdefault(row["method"], row["mean"])
    return [row["mean"] - base[row["method"]] if row["weave"] and row["method"] in base else None for row in results["rows"]]


def _reference_mean(results: Mapping[str, Any], key: str) -> float:
    """Mean of the zeroshot/individual row: the stored one when present, else the mean over columns."""
    if f"{key}_mean" in results:
        return results[f"{key}_mean"]
    values = list(results[key].values())
    return sum(values) / len(values) if values else float("nan")


def _pct(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _signed_pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.2f}"


def _reference_backbone(results: Mapping[str, Any], reference: str | None) -> tuple[str | None, str]:
    """The paper's backbone whose published means results.md shows (None: none), and the note saying so."""
    if reference is None:
        return None, ""
    from weaving.evaluation.paper_reference import SOURCE, backbone_of, check_reference

    check_reference(reference)
    model = (results.get("job") or {}).get("model")
    backbone = backbone_of(model) if reference == "auto" else reference
    if backbone is None:
        return None, (f"Reference: the paper ({SOURCE}) publishes no values for model {model!r}; it covers "
                      "ViT-B-32, ViT-B-16 and ViT-L-14.")
    extra = (" Its continual value averages CIFAR100, ImageNet-R, CUB200 and StanfordCars over their split counts, "
             "so one continual run compares to it only loosely." if results["setup"] == "continual" else "")
    return backbone, (f"Mean (paper X, +-D): the published {backbone} mean of that row in Table 1 or 2 of {SOURCE} "
                      f"and the difference in percentage points.{extra}")


def format_markdown(results: Mapping[str, Any], reference: str | None = None) -> str:
    """Table like the paper's Table 2 for one setup: a row per method and variant, a column per task,
    the mean, and weaving's gain over lam = 1 (percentage points). Accuracies in percent. With
    `reference` ("auto" or a backbone), each mean the paper publishes is followed by it and the difference."""
    tasks = results["tasks"]
    header = ["Method", "Variant", *tasks, "Mean", "Gain"]
    lines = [f"### {results['setup']}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, name in (("zeroshot", "Zero-shot"), ("individual", "Individual")):
        if key in results:
            cells = [_pct(results[key].get(task)) for task in tasks]
            lines.append("| " + " | ".join([name, "", *cells, _pct(_reference_mean(results, key)), ""]) + " |")
    if "sequential" in results:
        cells = [_pct(results["sequential"]["accuracy"].get(task)) for task in tasks]
        lines.append("| " + " | ".join(["Seq-FT", "theta_pre + tau_T", *cells, _pct(results["sequential"]["mean"]), ""]) + " |")
    backbone, note = _reference_backbone(results, reference)
    for row, gain in zip(results["rows"], _gains(results)):
        cells = [_pct(row["accuracy"].get(task)) for task in tasks]
        mean = _pct(row["mean"])
        if backbone is not None:
            from weaving.evaluation.paper_reference import reference_value

            found = reference_value(backbone, results["setup"], row)
            if found is not None:
                mean += f" (paper {found[0]:.2f}, {100 * row['mean'] - found[0]:+.2f})"
        lines.append("| " + " | ".join([row["method"], row_label(row), *cells, mean, _signed_pct(gain)]) + " |")
    if note:
        lines += ["", note]
    if any(row.get("variant") == "privileged" for row in results["rows"]):
        lines += ["", "`privileged` rows use the single lambda of the search space with the best mean on these test sets "
                  "(evaluation data): a reference, not a data-free result."]
    if results.get("metrics"):
        lines += ["", f"Continual-learning metrics (%, parts weighted equally; merges after task i use task vectors "
                  "1..i): average accuracy after the last task, average incremental accuracy, forgetting.", "",
                  "| Model | Avg acc | Avg incremental acc | Forgetting |", "|---|---|---|---|"]
        for label, entry in results["metrics"].items():
            lines.append(f"| {label} | {_pct(entry['average_accuracy'])} | {_pct(entry['average_incremental_accuracy'])} "
                         f"| {_pct(entry['forgetting'])} |")
    return "\n".join(lines) + "\n"


def format_csv(results: Mapping[str, Any]) -> str:
    """One line per row (zero-shot and individual first); accuracies in [0, 1] like results.json."""
    tasks = results["tasks"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["setup", "method", "variant", "weave", "lam", "lambdas", "pooling", *tasks, "mean", "gain"])
    for key in ("zeroshot", "individual"):
        if key in results:
            writer.writerow([results["setup"], key, "", False, "", "", "", *[results[key].get(t, "") for t in tasks],
                             _reference_mean(results, key), ""])
    if "sequential" in results:
        writer.writerow([results["setup"], "sequential", "", False, "", "", "",
                         *[results["sequential"]["accuracy"].get(t, "") for t in tasks], results["sequential"]["mean"], ""])
    for row, gain in zip(results["rows"], _gains(results)):
        lambdas = " ".join(f"{v:g}" for v in row["lambdas"]) if row["lambdas"] else ""
        lam = "" if row["lam"] is None else row["lam"]
        variant = row.get("variant", "weave" if row["weave"] else "lam")
        writer.writerow([results["setup"], row["method"], variant, row["weave"], lam, lambdas, row["pooling"] or "",
                         *[row["accuracy"].get(t, "") for t in tasks], row["mean"], "" if gain is None else gain])
    return buffer.getvalue()


def write_results(results: Mapping[str, Any], output_dir: str | os.PathLike, *,
                  reference: str | None = None) -> dict[str, Path]:
    """Check `results` and write results.json, results.csv and results.md into `output_dir` (atomically);
    with `reference`, results.md shows the paper's value and the difference next to each cell."""
    check_results(results)
    out = Path(output_dir)
    return {
        "json": atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n"),
        "csv": atomic_write_text(out / "results.csv", format_csv(results)),
        "md": atomic_write_text(out / "results.md", format_markdown(results, reference=reference)),
    }


def format_summary(all_results: Sequence[Mapping[str, Any]]) -> str:
    """Cross-setup table in the layout of the paper's Table 2: zero-shot, then a row per method and variant
    (lam = 1, the authors' recommended lambda, the privileged lambda, weaving per pooling), the mean accuracy
    of each setup as columns and their average; for weaving rows, the gain in that average over lam = 1
    and over the recommended lambda (so a weaving row below the recommended lambda shows it)."""
    setups = [r["setup"] for r in all_results]
    keys: list[tuple[str, str]] = [("Zero-shot", "theta_pre")]
    means: dict[tuple[str, str], dict[str, float]] = {keys[0]: {}}
    for results in all_results:
        if results.get("zeroshot"):
            means[keys[0]][results["setup"]] = _reference_mean(results, "zeroshot")
        for row in results["rows"]:
            # search spaces differ per setup, so weaving rows are grouped by pooling only
            if row["weave"]:
                variant = f"+ weaving ({row['pooling']})"
            elif row.get("variant") == "privileged":  # its lambda differs per setup
                variant = "privileged lambda (tuned on test data)"
            else:
                variant = row_label(row)
            key = (row["method"], variant)
            if key not in means:
                keys.append(key)
                means[key] = {}
            means[key][results["setup"]] = row["mean"]
    if not means[keys[0]]:
        keys.pop(0)
    header = ["Method", "Variant", *setups, "Avg", "Gain vs lam=1", "Gain vs recommended"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    averages: dict[tuple[str, str], float | None] = {}
    for key in keys:
        values = [means[key].get(s) for s in setups]
        averages[key] = sum(values) / len(values) if all(v is not None for v in values) else None
    recommended = {method: averages[(method, variant)] for method, variant in keys if variant.endswith("(recommended)")}
    for key in keys:
        method, variant = key
        gain = versus = None
        if variant.startswith("+ weaving") and averages[key] is not None:
            if averages.get((method, "lam=1")) is not None:
                gain = averages[key] - averages[(method, "lam=1")]
            if recommended.get(method) is not None:
                versus = averages[key] - recommended[method]
        cells = [_pct(means[key].get(s)) for s in setups]
        lines.append("| " + " | ".join([method, variant, *cells, _pct(averages[key]), _signed_pct(gain),
                                        _signed_pct(versus)]) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- plots
def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# One colour per row kind, the same in every panel and every file.
KIND_COLOURS = {
    "zero-shot": "tab:gray",
    "Seq-FT": "black",
    "lam": "tab:blue",
    "recommended": "tab:orange",
    "privileged": "tab:green",
    "weaving (mean)": "tab:red",
    "weaving (random)": "tab:purple",
    "weaving (magmax)": "tab:brown",
    "mean over tasks": "tab:cyan",
    "best-lambda count": "tab:olive",
}
OTHER_POOLING_COLOUR = "tab:pink"  # weaving with a method as pooling


def row_kind(row: Mapping[str, Any]) -> str:
    """The kind of a results row, which fixes its colour: "lam", "recommended", "privileged", "weaving (<pooling>)"."""
    if row["weave"]:
        return f"weaving ({row['pooling']})"
    return row.get("variant", "lam")


def kind_colour(kind: str) -> str:
    return KIND_COLOURS.get(kind, OTHER_POOLING_COLOUR)


def kind_label(row: Mapping[str, Any]) -> str:
    """Legend text of a row's kind: "lam=1", "recommended lambda", "privileged lambda", "weaving (mean)"."""
    kind = row_kind(row)
    if kind == "lam":
        return f"lam={row['lam']:g}"
    return kind if row["weave"] else f"{kind} lambda"


def _task_colours(tasks: Sequence[str]) -> dict[str, Any]:
    """A fixed pale colour per task (by its place in the table), away from the row kinds' colours."""
    import matplotlib

    palette = matplotlib.colormaps["Set3"]
    return {task: palette(i % palette.N) for i, task in enumerate(tasks)}


def _legend_outside(fig, axes) -> None:
    """One legend for the figure, right of the panels (never over the data): every label once."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
                   frameon=False)


def plot_lambda_curves(analysis: Mapping[str, Any], results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Per method, accuracy of every task (thin) and their mean (thick) as a function of lambda, with
    lam = 1 and the other plain rows marked and each weaving result drawn as a dashed horizontal line
    (its mean accuracy). Colours: `KIND_COLOURS` (one per row kind) and one per task."""
    plt = _pyplot()
    methods = list(analysis["methods"])
    if not methods:
        raise ValueError("analysis has no methods to plot")
    ncols = min(3, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    colours = _task_colours(analysis["tasks"])
    for ax, method in zip(axes.flat, methods):
        entry = analysis["methods"][method]
        lambdas = entry["lambdas"]
        for task, accs in entry["accuracy"].items():
            ax.plot(lambdas, [100 * a for a in accs], lw=0.9, color=colours.get(task), label=task)
        ax.plot(lambdas, [100 * a for a in entry["mean"]], color=kind_colour("mean over tasks"), lw=2.2,
                label="mean over tasks")
        for row in results["rows"]:
            if row["method"] != method:
                continue
            kind = row_kind(row)
            if row["weave"]:
                ax.axhline(100 * row["mean"], ls="--", lw=1.5, color=kind_colour(kind), label=kind)
            elif row["lam"] is not None:
                ax.plot([row["lam"]], [100 * row["mean"]], marker="o", color=kind_colour(kind), ls="none",
                        label=kind_label(row))
        ax.set_title(method)
        ax.set_xlabel("lambda")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.suptitle(f"{analysis['setup']}: accuracy vs lambda (uses evaluation data; analysis only)")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _legend_outside(fig, axes.flat)
    return atomic_write_bytes(path, _figure_bytes(fig))


def plot_best_lambda_histogram(analyses: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                               results: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write `best_lambda_figure(analyses, results)` as a PNG."""
    return atomic_write_bytes(path, _figure_bytes(best_lambda_figure(analyses, results)))


def best_lambda_figure(analyses: Sequence[Mapping[str, Any]], results: Sequence[Mapping[str, Any]] | None = None):
    """The paper's Figure 2: per method (rows) and setup (columns), how many tasks have each lambda as
    their best one (integer ticks). lam = 1 is drawn as a vertical line; with `results`, each title gives
    weaving's gain."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    methods = list(dict.fromkeys(m for a in analyses for m in a["methods"]))
    if not methods:
        raise ValueError("analysis has no methods to plot")
    gains = {}
    for res in results or []:
        for row, gain in zip(res["rows"], _gains(res)):
            if gain is not None and row["pooling"] == "mean":
                gains[(res["setup"], row["method"])] = gain
    fig, axes = plt.subplots(len(methods), len(analyses), figsize=(3.6 * len(analyses), 2.4 * len(methods)), squeeze=False)
    for j, analysis in enumerate(analyses):
        for i, method in enumerate(methods):
            ax = axes[i][j]
            entry = analysis["methods"].get(method)
            if entry is None:
                ax.axis("off")
                continue
            lambdas = entry["lambdas"]
            best = list(entry["best_lambda"].values())
            width = min((b - a for a, b in zip(lambdas, lambdas[1:])), default=0.1) * 0.8
            counts = [sum(1 for b in best if math.isclose(b, lam)) for lam in lambdas]
            ax.bar(lambdas, counts, width=width, color=kind_colour("best-lambda count"), label="tasks whose best lambda it is")
            ax.set_xlim(min(lambdas) - width, max(max(lambdas), 1.0) + width)
            ax.set_ylim(0, max(max(counts), 1) + 0.5)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.axvline(1.0, color=kind_colour("lam"), ls=":", lw=1.2, label="lam=1")
            title = f"{method} | {analysis['setup']}"
            if (analysis["setup"], method) in gains:
                title += f"\nweaving {100 * gains[(analysis['setup'], method)]:+.2f} pp vs lam=1"
            ax.set_title(title, fontsize=8)
            ax.set_xlabel("best lambda", fontsize=8)
            ax.set_ylabel("tasks", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle("Best lambda per task (uses evaluation data; analysis only)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    _legend_outside(fig, axes.flat)
    return fig


def plot_continual(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write `continual_figure(results)` as a PNG."""
    return atomic_write_bytes(path, _figure_bytes(continual_figure(results)))


def continual_figure(results: Mapping[str, Any]):
    """Continual setup: accuracy after each task (mean over the parts seen so far, from each row's accuracy
    matrix) per method, one colour per row kind (`KIND_COLOURS`) in every panel, with the sequential model
    (Seq-FT) and zero-shot for reference; one legend outside the panels."""
    plt = _pyplot()
    metrics = results.get("metrics")
    if not metrics:
        raise ValueError("results have no continual metrics to plot (only the continual setup has them)")
    rows = {metrics_label(row): row for row in results["rows"]}
    methods = list(dict.fromkeys(rows[label]["method"] for label in metrics if label in rows))
    ncols = min(3, max(len(methods), 1))
    nrows = max(math.ceil(len(methods) / ncols), 1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)

    def seen_curve(matrix: Sequence[Sequence[float]]) -> list[float]:
        return [100 * sum(row[: i + 1]) / (i + 1) for i, row in enumerate(matrix)]

    size = len(results["tasks"])
    tasks = list(range(1, size + 1))
    for ax, method in zip(axes.flat, methods):
        if "Seq-FT" in metrics:
            ax.plot(tasks, seen_curve(metrics["Seq-FT"]["accuracy_matrix"]), color=kind_colour("Seq-FT"), lw=2,
                    label="Seq-FT")
        if results.get("zeroshot"):
            ax.axhline(100 * _reference_mean(results, "zeroshot"), color=kind_colour("zero-shot"), ls=":", lw=1,
                       label="zero-shot")
        for label, entry in metrics.items():
            row = rows.get(label)
            if row is None or row["method"] != method:
                continue
            kind = row_kind(row)
            ax.plot(tasks, seen_curve(entry["accuracy_matrix"]), marker="o", ms=3, color=kind_colour(kind),
                    label=kind_label(row))
        ax.set_title(method)
        ax.set_xlabel("after task")
        ax.set_ylabel("accuracy on seen parts (%)")
        ax.set_xticks(tasks)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.suptitle("continual: accuracy after each task (merges of task vectors 1..i)")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    _legend_outside(fig, axes.flat)
    return fig
