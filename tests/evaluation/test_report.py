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
    assert "| ties | lam=1 | 60.00 | 20.00 | 40.00 |  |" in text
    assert "| ties | + weaving (mean) | 70.00 | 50.00 | 60.00 | +20.00 |" in text


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
