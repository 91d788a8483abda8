import json

import pytest

from weaving.evaluation import report, setups
from weaving.evaluation.compare import add_scaled, run_comparison, write_comparison
from weaving.evaluation.evaluate import Evaluator
from weaving.io.runs import read_run
from weaving.merging.task_vectors import load_task_vector
from weaving.models import load_clip

DOMAINS = ["digits", "digits_rot90", "digits_inverted"]


@pytest.fixture(scope="module")
def evaluator(head_cache):
    clip = load_clip("weaving-tiny-vit", None, seed=0)
    return Evaluator(clip, DOMAINS, head_cache_dir=head_cache, max_samples=60, progress=False)


def test_one_task_at_lam_1_is_the_fine_tuned_model(evaluator, domain_run):
    vectors = read_run(domain_run).paths
    setup = setups.multi_task(["digits"])
    results, analysis = run_comparison(setup, evaluator, vectors, ["task_arithmetic"], lambdas=[1.0],
                                       analysis=False, recommended=False, privileged=False, progress=False)
    assert analysis is None
    plain, woven = results["rows"]
    assert plain["accuracy"] == results["individual"]
    # mean pooling of {tau, 1.0 * tau} is tau again
    assert woven["weave"] and woven["accuracy"] == results["individual"]
    individual = evaluator.evaluate(setup.columns, add_scaled(evaluator.pretrained, load_task_vector(vectors["digits"])))
    assert results["individual"]["digits"] == individual["digits"].accuracy


@pytest.mark.parametrize("name", ["multi_task", "domain_generalization"])
def test_comparison_rows_follow_the_schema(evaluator, domain_run, name):
    setup = setups.make_setup(name, DOMAINS)
    methods = ["ties", "dare"]
    results, analysis = run_comparison(setup, evaluator, read_run(domain_run).paths, methods,
                                       lambdas="0.5:1.0:0.5", poolings=("mean", "random"), progress=False)
    report.check_results(results)
    assert results["setup"] == name and results["tasks"] == DOMAINS
    assert [(r["method"], r["variant"], r["lam"], r["pooling"]) for r in results["rows"]] == [
        ("ties", "lam", 1.0, None), ("ties", "privileged", analysis["methods"]["ties"]["lambdas"][
            max(range(2), key=lambda i: (analysis["methods"]["ties"]["mean"][i], -i))], None),
        ("ties", "weave", None, "mean"), ("ties", "weave", None, "random"),
        ("dare", "lam", 1.0, None), ("dare", "recommended", 0.3, None), ("dare", "privileged", pytest.approx(0.5, abs=0.5), None),
        ("dare", "weave", None, "mean"), ("dare", "weave", None, "random")]
    assert all(r["lambdas"] == [0.5, 1.0] for r in results["rows"] if r["weave"])
    for row in results["rows"]:
        assert row["mean"] == pytest.approx(sum(row["accuracy"].values()) / 3)
    ties = analysis["methods"]["ties"]
    assert analysis["uses_evaluation_data"] is True
    assert ties["lambdas"] == [0.5, 1.0] and set(ties["best_lambda"].values()) <= {0.5, 1.0}
    # lam = 1 of the curve is the plain merge
    assert [acc[-1] for acc in ties["accuracy"].values()] == list(results["rows"][0]["accuracy"].values())
    again, _ = run_comparison(setup, evaluator, read_run(domain_run).paths, methods,
                              lambdas="0.5:1.0:0.5", poolings=("mean", "random"), analysis=False, progress=False)
    assert again["rows"] == results["rows"]  # same seed, same numbers (dare and random pooling included)


def test_continual_mean_is_over_samples(evaluator, continual_run):
    setup = setups.continual("digits", 3)
    results, _ = run_comparison(setup, evaluator, read_run(continual_run).paths, ["magmax"],
                                lambdas=[0.5, 1.0], analysis=False, progress=False)
    tally = evaluator.evaluate([setups.Column("all", "digits")],
                               _merged(evaluator, continual_run, "magmax"))["all"]
    assert results["rows"][0]["mean"] == pytest.approx(tally.accuracy)
    assert results["zeroshot_mean"] == pytest.approx(evaluator.evaluate([setups.Column("all", "digits")])["all"].accuracy)


def _merged(evaluator, run, method, count=None):
    import weaving

    paths = list(read_run(run).paths.values())[:count]
    return weaving.merge(evaluator.pretrained, paths, method, lam=1.0)


def test_write_comparison_writes_results_analysis_and_plots(evaluator, domain_run, tmp_path):
    setup = setups.domain_generalization(DOMAINS)
    results, analysis = run_comparison(setup, evaluator, read_run(domain_run).paths, ["magmax"],
                                       lambdas=[0.5, 1.0], progress=False)
    written = write_comparison(results, analysis, tmp_path)
    assert {p.name for p in written.values()} == {"results.json", "results.csv", "results.md", "analysis.json",
                                                 "lambda_curves.png", "best_lambda.png"}
    assert report.load_results(tmp_path) == json.loads(json.dumps(results))
    assert "magmax" in (tmp_path / "results.md").read_text()


def test_bad_inputs_are_one_line_errors(evaluator, domain_run):
    vectors = read_run(domain_run).paths
    with pytest.raises(ValueError, match="unknown merge method 'tie'; known methods: breadcrumbs"):
        run_comparison(setups.multi_task(DOMAINS), evaluator, vectors, ["tie"], progress=False)
    with pytest.raises(ValueError, match="needed by the setup"):
        run_comparison(setups.multi_task(["digits", "digits_mirrored"]), evaluator, vectors, ["ties"], progress=False)


def test_extra_rows_are_scored_with_the_others(evaluator, domain_run):
    from weaving.evaluation.compare import Row, job_requests, tau_name
    from weaving.evaluation.evaluate import WeightSet

    setup = setups.multi_task(["digits", "digits_rot90"])
    fields = {"method": "seq_ft", "weave": False, "lam": 1.0, "lambdas": None, "pooling": None}
    rows = [Row(fields, job_requests(setup, [WeightSet(tau_name("digits"))]), key=("seq_ft",)),
            Row({**fields, "method": "zero"}, job_requests(setup, [WeightSet()]), key=("zero",))]
    results, _ = run_comparison(setup, evaluator, read_run(domain_run).paths, ["ties"], lambdas=[1.0],
                                analysis=False, extra_rows=rows, recommended=False, privileged=False, progress=False)
    seq_ft, zero = results["rows"][-2:]
    assert [r["method"] for r in results["rows"]] == ["ties", "ties", "seq_ft", "zero"]
    assert seq_ft["accuracy"]["digits"] == results["individual"]["digits"]
    assert zero["accuracy"] == results["zeroshot"] and zero["mean"] == results["zeroshot_mean"]
    with pytest.raises(ValueError, match="its own non-empty key"):
        run_comparison(setup, evaluator, read_run(domain_run).paths, ["ties"], extra_rows=rows[:1] * 2,
                       progress=False)


def test_privileged_and_recommended_rows(evaluator, domain_run):
    """privileged = the best mean over the search space on these test sets; recommended = the authors' lambda."""
    setup = setups.multi_task(DOMAINS)
    vectors = read_run(domain_run).paths
    results, analysis = run_comparison(setup, evaluator, vectors, ["magmax"], lambdas="0.1:1.0:0.3", progress=False)
    rows = {r["variant"]: r for r in results["rows"]}
    curve = analysis["methods"]["magmax"]
    assert rows["privileged"]["mean"] == max(curve["mean"])
    assert rows["privileged"]["lam"] == curve["lambdas"][curve["mean"].index(max(curve["mean"]))]
    assert rows["recommended"]["lam"] == 0.5  # MagMax's authors: 0.5
    direct = evaluator.evaluate(setup.columns, add_scaled(evaluator.pretrained, _delta(evaluator, domain_run, "magmax"), 0.5))
    assert rows["recommended"]["accuracy"] == {name: direct[name].accuracy for name in DOMAINS}
    assert "(privileged)" in report.format_markdown(results) and "(recommended)" in report.format_markdown(results)


def _delta(evaluator, run, method, count=None):
    merged = _merged(evaluator, run, method, count)
    return {key: merged[key] - value for key, value in evaluator.pretrained.items()}


def test_continual_sequential_row_metrics_and_no_individual(evaluator, continual_run, tmp_path):
    setup = setups.continual("digits", 3)
    paths = read_run(continual_run).paths
    results, _ = run_comparison(setup, evaluator, paths, ["magmax"], lambdas=[0.5, 1.0], analysis=False, progress=False)
    report.check_results(results)
    assert "individual" not in results
    names = setup.tasks
    # Seq-FT: theta_pre + tau_T, evaluated directly
    last = evaluator.evaluate(setup.columns, add_scaled(evaluator.pretrained, load_task_vector(paths[names[-1]])))
    assert results["sequential"]["accuracy"] == {n: last[n].accuracy for n in names}
    metrics = results["metrics"]
    privileged = next(r["lam"] for r in results["rows"] if r["variant"] == "privileged")
    assert set(metrics) == {"Seq-FT", "magmax lam=1", "magmax lam=0.5 (recommended)",
                            f"magmax lam={privileged:g} (privileged)", "magmax + weaving (mean, 0.5,1)"}
    for i in range(3):  # row i of the sequential matrix: theta_pre + tau_i; of the merges: task vectors 1..i
        seq = evaluator.evaluate(setup.columns, add_scaled(evaluator.pretrained, load_task_vector(paths[names[i]])))
        assert metrics["Seq-FT"]["accuracy_matrix"][i] == [seq[n].accuracy for n in names]
        merged = evaluator.evaluate(setup.columns, add_scaled(evaluator.pretrained, _delta(evaluator, continual_run, "magmax", i + 1)))
        assert metrics["magmax lam=1"]["accuracy_matrix"][i] == [merged[n].accuracy for n in names]
    final = metrics["magmax lam=1"]
    assert final["accuracy_matrix"][-1] == list(results["rows"][0]["accuracy"].values())
    assert final["average_accuracy"] == pytest.approx(sum(final["accuracy_matrix"][-1]) / 3)
    written = write_comparison(results, None, tmp_path)
    assert written["continual_accuracy"].stat().st_size > 0
    table = (tmp_path / "results.md").read_text()
    assert "| Seq-FT |" in table and "Individual" not in table and "Forgetting" in table


def test_continual_stages_in_a_small_memory_budget_give_the_same_results(evaluator, continual_run):
    """A budget of one stored state per pass scores every stage in its own pass: same numbers."""
    setup = setups.continual("digits", 3)
    paths = read_run(continual_run).paths
    kwargs = dict(lambdas=[0.5, 1.0], analysis=False, progress=False)
    whole, _ = run_comparison(setup, evaluator, paths, ["ties"], **kwargs)
    state_bytes = sum(t.numel() * t.element_size() for t in evaluator.pretrained.values())
    split, _ = run_comparison(setup, evaluator, paths, ["ties"], memory_budget=state_bytes, **kwargs)
    assert split == whole
    assert not evaluator.bank.stored  # every pass freed its weights
