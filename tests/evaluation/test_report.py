import csv
import io
import json

import pytest

from weaving.evaluation import report


def make_results(setup="multi_task"):
    return {
        "setup": setup,
        "tasks": ["a", "b"],
        "zeroshot": {"a": 0.1, "b": 0.2},
        "individual": {"a": 0.9, "b": 0.8},
        "rows": [
            {"method": "ties", "weave": False, "lam": 1.0, "lambdas": None, "pooling": None,
             "accuracy": {"a": 0.5, "b": 0.7}, "mean": 0.6},
            {"method": "ties", "weave": True, "lam": None, "lambdas": [0.1, 0.2, 0.3], "pooling": "mean",
             "accuracy": {"a": 0.6, "b": 0.8}, "mean": 0.7},
        ],
    }


def test_write_results_writes_three_consistent_files(tmp_path):
    results = make_results()
    written = report.write_results(results, tmp_path / "out")
    assert sorted(p.name for p in written.values()) == sorted(report.RESULTS_FILES)
    assert report.load_results(tmp_path / "out") == results
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "results.csv").read_text())))
    assert [r["method"] for r in rows] == ["zeroshot", "individual", "ties", "ties"]
    assert float(rows[3]["gain"]) == pytest.approx(0.1)
    assert float(rows[2]["a"]) == pytest.approx(0.5)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_markdown_table_has_percentages_and_the_gain_of_weaving():
    text = report.format_markdown(make_results())
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines[0].split("|")[3].strip() == "a" and "Mean" in lines[0] and "Gain" in lines[0]
    assert len(lines) == 2 + 2 + 2  # header, rule, zero-shot, individual, two rows
    assert "| ties | + weaving (mean, 0.1..0.3 (3)) | 60.00 | 80.00 | 70.00 | +10.00 |" in text
    assert "| Zero-shot |  | 10.00 | 20.00 | 15.00 |  |" in text


def test_reference_mean_prefers_the_stored_one():
    results = make_results("continual")
    results["zeroshot_mean"] = 0.125
    assert "| Zero-shot |  | 10.00 | 20.00 | 12.50 |  |" in report.format_markdown(results)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("rows"), "missing keys"),
        (lambda r: r["rows"][0].pop("mean"), "misses keys"),
        (lambda r: r["rows"][0]["accuracy"].update(a=60.0), "not an accuracy in \\[0, 1\\]"),
        (lambda r: r["zeroshot"].update(c=0.1), "not in 'tasks'"),
        (lambda r: r["rows"][1].update(lambdas=None), "weaving row"),
        (lambda r: r["rows"][0].update(lam=None), "plain merge"),
    ],
)
def test_check_results_rejects_schema_errors(change, message):
    results = make_results()
    change(results)
    with pytest.raises(ValueError, match=message):
        report.check_results(results)


def test_load_results_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="weaving demo"):
        report.load_results(tmp_path)


def test_describe_lambdas():
    assert report.describe_lambdas([0.1, 0.2, 0.30000000000000004, 0.4]) == "0.1..0.4 (4)"
    assert report.describe_lambdas([0.5, 1.0]) == "0.5,1"
    assert report.describe_lambdas(None) == ""


def test_summary_averages_setups_and_gives_the_gain():
    first, second = make_results("multi_task"), make_results("continual")
    second["rows"][0]["mean"], second["rows"][1]["mean"] = 0.2, 0.5
    text = report.format_summary([first, second])
    assert "| ties | lam=1 | 60.00 | 20.00 | 40.00 |  |  |" in text
    assert "| ties | + weaving (mean) | 70.00 | 50.00 | 60.00 | +20.00 |  |" in text


def test_summary_has_the_zero_shot_and_recommended_rows_and_the_gain_over_each():
    first, second = make_results("multi_task"), make_results("continual")
    for results in (first, second):
        results["zeroshot_mean"] = 0.3
        results["rows"].insert(1, {"method": "ties", "weave": False, "lam": 0.3, "lambdas": None, "pooling": None,
                                   "variant": "recommended", "accuracy": {"a": 0.8, "b": 0.8}, "mean": 0.8})
    text = report.format_summary([first, second])
    lines = text.splitlines()
    assert lines[0].endswith("| Avg | Gain vs lam=1 | Gain vs recommended |")
    assert lines[2] == "| Zero-shot | theta_pre | 30.00 | 30.00 | 30.00 |  |  |"
    assert "| ties | lam=0.3 (recommended) | 80.00 | 80.00 | 80.00 |  |  |" in text
    # weaving gains 10 points over lam = 1 but is 10 points below the recommended lambda: both are shown
    assert "| ties | + weaving (mean) | 70.00 | 70.00 | 70.00 | +10.00 | -10.00 |" in text


def test_plots_are_png_files(tmp_path):
    results = make_results()
    analysis = {
        "setup": "multi_task", "uses_evaluation_data": True, "tasks": ["a", "b"],
        "methods": {"ties": {"lambdas": [0.1, 0.2, 0.3], "accuracy": {"a": [0.2, 0.5, 0.4], "b": [0.3, 0.4, 0.9]},
                             "mean": [0.25, 0.45, 0.65], "best_lambda": {"a": 0.2, "b": 0.3}}},
    }
    for path in (report.plot_lambda_curves(analysis, results, tmp_path / "curves.png"),
                 report.plot_best_lambda_histogram([analysis, analysis], tmp_path / "hist.png", [results])):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "x" / "f.json"
    report.atomic_write_text(path, json.dumps({"a": 1}))
    report.atomic_write_text(path, json.dumps({"b": 2}))
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]


def continual_results():
    parts = ["p1", "p2"]
    rows, metrics = [], {"Seq-FT": {"accuracy_matrix": [[0.9, 0.1], [0.4, 0.8]], "average_accuracy": 0.6,
                                    "average_incremental_accuracy": 0.7, "forgetting": 0.5}}
    for method, lam in (("ties", 1.0), ("magmax", 1.0)):
        for variant, weave in (("lam", False), ("privileged", False), ("weave", True)):
            row = {"method": method, "weave": weave, "lam": None if weave else (lam if variant == "lam" else 0.4),
                   "lambdas": [0.5, 1.0] if weave else None, "pooling": "mean" if weave else None, "variant": variant,
                   "accuracy": {"p1": 0.5, "p2": 0.6}, "mean": 0.55}
            rows.append(row)
            metrics[report.metrics_label(row)] = dict(metrics["Seq-FT"])
    return {"setup": "continual", "tasks": parts, "zeroshot": {"p1": 0.1, "p2": 0.1}, "rows": rows, "metrics": metrics}


def test_continual_plot_one_colour_per_row_kind_in_every_panel_and_the_legend_outside():
    fig = report.continual_figure(continual_results())
    colours: dict[str, set] = {}
    for ax in fig.axes:
        assert ax.get_legend() is None  # no legend over the data
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert {"lam=1", "privileged lambda", "weaving (mean)", "Seq-FT", "zero-shot"} <= set(colours)
    assert all(len(c) == 1 for c in colours.values())  # the same colour in both panels
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)  # and a different one per kind
    assert colours["lam=1"] == {report.KIND_COLOURS["lam"]}
    (legend,) = fig.legends
    assert legend.get_bbox_to_anchor().x0 >= fig.bbox.x1 - 1  # right of the panels


def test_best_lambda_counts_have_integer_ticks():
    analysis = {"setup": "multi_task", "methods": {"ties": {"lambdas": [0.1, 0.2, 0.3],
                                                            "best_lambda": {"a": 0.1, "b": 0.3, "c": 0.3}}}}
    fig = report.best_lambda_figure([analysis])
    ticks = [t for t in fig.axes[0].get_yticks() if t >= 0]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_reference_shows_the_papers_value_and_the_difference():
    from weaving.evaluation import paper_reference

    results = make_results()
    results["job"] = {"model": "ViT-B-32-quickgelu"}
    results["rows"].append({"method": "magmax", "weave": False, "lam": 0.5, "lambdas": None, "pooling": None,
                            "variant": "recommended", "accuracy": {"a": 0.7, "b": 0.7}, "mean": 0.7})
    table = report.format_markdown(results, reference="auto")
    assert "| ties | lam=1 | 50.00 | 70.00 | 60.00 (paper 72.32, -12.32) |" in table  # Table 2, ViT-B-32 MTL
    assert "| 70.00 (paper 73.47, -3.47) |" in table  # Table 2, TIES + weaving
    assert "| magmax | lam=0.5 (recommended) | 70.00 | 70.00 | 70.00 (paper 70.49, -0.49) |" in table  # Table 1
    assert "arXiv 2510.13921" in table
    assert "(paper 78.43," in report.format_markdown(results, reference="ViT-B-16")
    assert "paper" not in report.format_markdown(results)
    other = {**results, "job": {"model": "weaving-tiny-vit"}}
    assert "publishes no values for model 'weaving-tiny-vit'" in report.format_markdown(other, reference="auto")
    with pytest.raises(ValueError, match="reference 'ViT-H-14'"):
        paper_reference.check_reference("ViT-H-14")
    # the data as printed: each average is the mean of its nine cells, to the printed rounding (cells and average +-0.005 each)
    for method, entry in paper_reference.TABLE2.items():
        for values, avg in zip((entry["lam"], entry["weave"]), entry["avg"]):
            assert sum(values) / 9 == pytest.approx(avg, abs=0.011), method
    for method, entry in paper_reference.TABLE1.items():
        assert sum(entry["values"]) / 9 == pytest.approx(entry["avg"], abs=0.011), method
    assert paper_reference.TABLE3["ties"]["mean"] == paper_reference.TABLE2["ties"]["avg"][1]
