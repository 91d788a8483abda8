"""`weaving merge` end to end, as a user types it."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import weaving
from weaving.merging.cli import merge_main
from weaving.merging.task_vectors import read_metadata

from .conftest import make_inputs


@pytest.fixture
def files(tmp_path):
    pretrained, tvs = make_inputs()
    save_file(pretrained, tmp_path / "pre.safetensors")
    finetuned = []
    for i, tv in enumerate(tvs):
        save_file({k: pretrained[k] + tv[k] for k in tv}, tmp_path / f"ft{i}.safetensors")
        save_file(tv, tmp_path / f"tv{i}.safetensors")
        finetuned.append(str(tmp_path / f"ft{i}.safetensors"))
    return tmp_path, pretrained, tvs, finetuned


def test_weave_from_finetuned_files(files):
    tmp, pretrained, tvs, finetuned = files
    out = tmp / "out" / "merged.safetensors"
    merge_main(["--pretrained", str(tmp / "pre.safetensors"), "--finetuned", *finetuned, "--method", "ties",
                "--k", "0.5", "--lambdas", "0.1:1.0:0.1", "--pooling", "mean", "--output", str(out)])
    expected = weaving.weave(pretrained, tvs, "ties", "0.1:1.0:0.1", k=0.5)
    got = load_file(out)
    for key in pretrained:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5)
    recipe = json.loads(read_metadata(out)["weaving_recipe"])
    assert recipe["method"] == "ties" and recipe["hparams"] == {"k": 0.5}


def test_plain_merge_from_task_vectors_and_config(files):
    tmp, pretrained, tvs, _ = files
    config = tmp / "merge.yaml"
    tv_paths = [str(tmp / f"tv{i}.safetensors") for i in range(3)]
    config.write_text(f"pretrained: {tmp / 'pre.safetensors'}\ntask_vectors: {json.dumps(tv_paths)}\n"
                      f"method: dare\np: 0.2\nlam: 0.5\nseed: 3\noutput: {tmp / 'dare.safetensors'}\n")
    merge_main(["--config", str(config)])
    expected = weaving.merge(pretrained, tvs, "dare", lam=0.5, seed=3, p=0.2)
    got = load_file(tmp / "dare.safetensors")
    assert all(torch.equal(got[k], expected[k]) for k in pretrained)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "weaving", "merge", *args], capture_output=True, text=True)


def test_errors_are_one_line_without_traceback_and_leave_no_output(files):
    tmp, pretrained, tvs, finetuned = files
    bad = dict(tvs[0])
    bad["visual.proj.weight"] = bad["visual.proj.weight"].clone()
    bad["visual.proj.weight"][0, 0] = float("nan")
    save_file(bad, tmp / "nan.safetensors")
    out = tmp / "never.safetensors"
    cases = [
        (["--task_vectors", str(tmp / "tv0.safetensors"), str(tmp / "nan.safetensors"), "--method", "ties"], "contains NaN or Inf"),
        (["--task_vectors", str(tmp / "missing.safetensors"), "--method", "ties"], "no such file"),
        (["--task_vectors", str(tmp / "tv0.safetensors"), "--method", "tie"], "known methods"),
        (["--task_vectors", str(tmp / "tv0.safetensors"), "--method", "ties", "--lambdas", "1:0.5:0.1"], "search space"),
        (["--task_vectors", str(tmp / "tv0.safetensors"), "--method", "ties", "--lambdas", "0.5", "--pooling", "max"], "unknown pooling"),
        (["--task_vectors", str(tmp / "tv0.safetensors"), "--method", "ties", "--p", "0.1"], "not a hyper-parameter of 'ties'"),
        (["--method", "ties"], "exactly one of --finetuned"),
    ]
    for args, message in cases:
        result = run_cli("--pretrained", str(tmp / "pre.safetensors"), *args, "--output", str(out))
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert not out.exists()
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".")] == []


def test_hyphenated_options_as_in_the_usage_line(files):
    tmp, pretrained, tvs, _ = files
    out = tmp / "hyphen.safetensors"
    tv_paths = [str(tmp / f"tv{i}.safetensors") for i in range(3)]
    merge_main(["--pretrained", str(tmp / "pre.safetensors"), "--task-vectors", *tv_paths, "--method", "magmax",
                "--lambdas=0.5:1.0:0.5", "--include-deltas", "false", "--output", str(out)])
    expected = weaving.weave(pretrained, tvs, "magmax", [0.5, 1.0], include_deltas=False)
    got = load_file(out)
    assert all(torch.equal(got[k], expected[k]) for k in pretrained)
