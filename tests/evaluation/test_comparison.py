"""ComparisonModule: the comparison as one validation job, checked against a direct evaluation."""

import json

import pytest
import torch

import weaving
from weaving.evaluation import report, setups
from weaving.evaluation.comparison import ComparisonModule, run_comparison, write_comparison
from weaving.merging.task_vectors import load_task_vector
from weaving.models import load_clip
from weaving.io.runs import read_run

from .direct import add_scaled, direct_accuracies

DOMAINS = ["digits", "digits_rot90", "digits_inverted"]
QUICK = dict(max_samples=60, progress=False)


@pytest.fixture(scope="module")
def clip():
    return load_clip("weaving-tiny-vit", None, seed=0)


def theta_pre(clip):
    from weaving.models.clip import visual_state_dict

    return visual_state_dict(clip.model)


def direct(clip, columns, state=None, head_cache=None):
    return direct_accuracies(clip, state, columns, max_samples=60, head_cache=head_cache)


def test_rows_equal_a_direct_evaluation_of_each_merged_model(clip, domain_run, head_cache):
    paths = read_run(domain_run).paths
    results, analysis = run_comparison(domain_run, methods=["ties", "dare"], lambdas="0.5:1.0:0.5",
                                       analysis=["ties"], head_cache_dir=head_cache, **QUICK)
    report.check_results(results)
    setup = setups.multi_task(DOMAINS)
    pre, members = theta_pre(clip), [paths[t] for t in DOMAINS]
    assert results["zeroshot"] == direct(clip, setup.columns, None, head_cache)
    individual = {}
    for task in DOMAINS:
        individual.update(direct(clip, [setups.Column(task, task)], add_scaled(pre, load_task_vector(paths[task]))))
    assert results["individual"] == individual
    rows = {(r["method"], r["variant"]): r for r in results["rows"]}
    assert list(rows) == [("ties", "lam"), ("ties", "privileged"), ("ties", "weave"), ("dare", "lam"),
                          ("dare", "recommended"), ("dare", "privileged"), ("dare", "weave")]
    for method in ("ties", "dare"):
        for variant in ("lam", "privileged") + (("recommended",) if method == "dare" else ()):
            lam = rows[(method, variant)]["lam"]
            args = rows[(method, variant)]["hyperparameters"]  # ties: the run's zero_entries
            merged = weaving.merge(pre, members, method, lam=lam, seed=0, **args)
            assert rows[(method, variant)]["accuracy"] == direct(clip, setup.columns, merged), (method, variant)
        assert ("zero_entries" in args) == (method == "ties")
        woven = weaving.weave(pre, members, method, [0.5, 1.0], seed=0, **args)
        assert rows[(method, "weave")]["accuracy"] == direct(clip, setup.columns, woven), method
        assert rows[(method, "weave")]["lambdas"] == [0.5, 1.0]
    curve = analysis["methods"]["ties"]
    assert list(analysis["methods"]) == ["ties"] and analysis["uses_evaluation_data"] is True
    assert rows[("ties", "privileged")]["mean"] == max(curve["mean"])
    assert rows[("ties", "privileged")]["lam"] == curve["lambdas"][curve["mean"].index(max(curve["mean"]))]
    assert [acc[-1] for acc in curve["accuracy"].values()] == list(rows[("ties", "lam")]["accuracy"].values())
    again, _ = run_comparison(domain_run, methods=["ties", "dare"], lambdas="0.5:1.0:0.5", analysis=[],
                              head_cache_dir=head_cache, **QUICK)
    assert [r["accuracy"] for r in again["rows"]] == [r["accuracy"] for r in results["rows"]]  # same seed


def test_domain_generalization_holds_out_each_task(clip, domain_run, head_cache):
    paths = read_run(domain_run).paths
    results, _ = run_comparison(domain_run, setup="domain_generalization", methods=["task_arithmetic"],
                                rows=["lam"], head_cache_dir=head_cache, **QUICK)
    pre = theta_pre(clip)
    for task in DOMAINS:
        merged = weaving.merge(pre, [paths[t] for t in DOMAINS if t != task], "task_arithmetic")
        assert results["rows"][0]["accuracy"][task] == direct(clip, [setups.Column(task, task)], merged)[task]
    assert results["rows"][0]["mean"] == pytest.approx(sum(results["rows"][0]["accuracy"].values()) / 3)


def test_continual_matrix_equals_the_direct_evaluation_of_each_stage(clip, continual_run, head_cache):
    paths = read_run(continual_run).paths
    results, _ = run_comparison(continual_run, setup="continual", methods=["magmax"], lambdas=[0.5, 1.0],
                                analysis=[], head_cache_dir=head_cache, **QUICK)
    report.check_results(results)
    setup = setups.continual("digits", 3)
    names, pre = setup.tasks, theta_pre(clip)
    assert results["tasks"] == names and "individual" not in results
    metrics = results["metrics"]
    privileged = next(r["lam"] for r in results["rows"] if r["variant"] == "privileged")
    assert set(metrics) == {"Seq-FT", "magmax lam=1", "magmax lam=0.5 (recommended)",
                            f"magmax lam={privileged:g} (privileged)", "magmax + weaving (mean, 0.5,1)"}
    for i in range(3):  # row i: the sequential model theta_pre + tau_i; the merges of the task vectors 1..i
        seq = direct(clip, setup.columns, add_scaled(pre, load_task_vector(paths[names[i]])))
        assert metrics["Seq-FT"]["accuracy_matrix"][i] == [seq[n] for n in names]
        members = [paths[n] for n in names[: i + 1]]
        for label, lam in (("magmax lam=1", 1.0), (f"magmax lam={privileged:g} (privileged)", privileged)):
            merged = direct(clip, setup.columns, weaving.merge(pre, members, "magmax", lam=lam))
            assert metrics[label]["accuracy_matrix"][i] == [merged[n] for n in names], (label, i)
    assert results["sequential"]["accuracy"] == dict(zip(names, metrics["Seq-FT"]["accuracy_matrix"][-1]))
    final = metrics["magmax lam=1"]
    assert final["accuracy_matrix"][-1] == list(results["rows"][0]["accuracy"].values())
    assert final["average_accuracy"] == pytest.approx(sum(final["accuracy_matrix"][-1]) / 3)
    # the continual mean is over samples: the task-agnostic accuracy on the (subset of the) full test set
    full = direct(clip, [setups.Column("digits", "digits")], weaving.merge(pre, list(paths.values()), "magmax"))
    assert results["rows"][0]["mean"] == pytest.approx(full["digits"])


def test_a_small_memory_budget_scores_in_more_passes_with_the_same_numbers(continual_run, head_cache):
    kwargs = dict(setup="continual", methods=["ties"], lambdas=[0.5, 1.0], analysis=[], head_cache_dir=head_cache, **QUICK)
    whole, _ = run_comparison(continual_run, **kwargs)
    module = ComparisonModule(str(continual_run), memory_budget=1, **{k: v for k, v in kwargs.items() if k != "progress"})
    split, _ = _validate(module)
    assert len(module.passes) > 3  # one stored item per pass
    strip = lambda r: {k: v for k, v in r.items() if k != "job"}
    assert strip(split) == strip(whole)
    assert module.bank is None  # the job freed its weights


def _validate(module):
    import lightning.pytorch as pl

    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.validate(module, verbose=False)
    return module.results, module.analysis_results


def test_results_record_what_produced_each_row_and_the_config(domain_run, head_cache, tmp_path):
    from weaving.io.loader import file_sha256

    out = tmp_path / "job"
    results, _ = run_comparison(domain_run, methods=["ties"], method_args={"ties": {"k": 0.3}}, lambdas=[0.5, 1.0],
                                seed=3, head_cache_dir=head_cache, output_dir=str(out), **QUICK)
    paths, recorded = read_run(domain_run).paths, read_run(domain_run).zero_entries  # the run's population
    for row in results["rows"]:
        assert row["hyperparameters"] == weaving.METHODS["ties"].resolve({"k": 0.3, "zero_entries": recorded})
        assert row["seed"] == 3
        assert row["task_vectors"] == {t: file_sha256(paths[t]) for t in DOMAINS}
    weave = next(r for r in results["rows"] if r["weave"])
    assert weave["search_space"] == [0.5, 1.0] and weave["include_deltas"] is True and weave["pooling"] == "mean"
    assert next(r for r in results["rows"] if r["variant"] == "privileged")["uses_evaluation_data"] is True
    assert results["job"]["versions"]["torch"] == torch.__version__
    assert results["job"]["versions"]["weaving"] == weaving.__version__
    for name in ("results.json", "results.csv", "results.md", "analysis.json", "summary.md", "config.yaml",
                 "lambda_curves.png", "best_lambda.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
    config = (out / "config.yaml").read_text()
    assert "class_path: weaving.evaluation.ComparisonModule" in config and "k: 0.3" in config
    # a later job writes its own folder: this config.yaml stays as it was
    run_comparison(domain_run, methods=["ties"], rows=["lam"], head_cache_dir=head_cache,
                   output_dir=str(tmp_path / "other"), **QUICK)
    assert (out / "config.yaml").read_text() == config


def test_bad_configs_are_one_line_errors(domain_run, tmp_path):
    with pytest.raises(ValueError, match="unknown merge method 'tie'"):
        ComparisonModule(str(domain_run), methods=["tie"])
    with pytest.raises(ValueError, match="rows: unknown \\['best'\\]"):
        ComparisonModule(str(domain_run), methods=["ties"], rows=["best"])
    with pytest.raises(ValueError, match="analysis names \\['dare'\\]"):
        ComparisonModule(str(domain_run), methods=["ties"], analysis=["dare"])
    with pytest.raises(ValueError, match="has no hyper-parameter 'beta'"):
        ComparisonModule(str(domain_run), methods=["ties"], method_args={"ties": {"beta": 1}})
    with pytest.raises(ValueError, match="task_vectors is not set"):
        ComparisonModule(None, methods=["ties"], model="weaving-tiny-vit")
    with pytest.raises(FileNotFoundError, match="weaving fit"):
        ComparisonModule(str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="no task vectors for"):
        run_comparison(domain_run, tasks=["digits", "digits_mirrored"], setup="domain_generalization",
                       methods=["ties"], **QUICK)


def test_write_comparison_with_the_continual_plot(continual_run, head_cache, tmp_path):
    results, analysis = run_comparison(continual_run, setup="continual", methods=["ties"], lambdas=[0.5, 1.0],
                                       head_cache_dir=head_cache, **QUICK)
    written = write_comparison(results, analysis, tmp_path)
    assert written["continual_accuracy"].stat().st_size > 0 and written["analysis"].is_file()
    table = (tmp_path / "results.md").read_text()
    assert "| Seq-FT |" in table and "Individual" not in table and "Forgetting" in table
