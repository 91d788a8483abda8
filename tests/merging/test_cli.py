"""`weaving merge` end to end, as a user types it."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import weaving
from weaving.cli import main
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
                "--method_args", "{k: 0.5}", "--lambdas", "0.1:1.0:0.1", "--pooling", "mean", "--output", str(out)])
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
                      f"method: dare\nmethod_args: {{p: 0.2}}\nlam: 0.5\nseed: 3\noutput: {tmp / 'dare.safetensors'}\n")
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
        (["--task_vectors", str(tmp / "tv0.safetensors"), "--method", "ties", "--method_args", "{p: 0.1}"],
         "method 'ties' has no hyper-parameter 'p'; its hyper-parameters: k"),
        (["--task_vectors", str(tmp / "tv0.safetensors"), "--method", "ties", "--lambdas", "0.1:100000000:0.1"],
         "has 1000000000 points; at most 10000 are allowed"),
        (["--method", "ties"], "exactly one of --finetuned"),
        (["--task_vectors", str(tmp / "tv0.safetensors"), "--method", "ties", "--lam", "abc"], "--lam: expected float, got abc"),
        (["--task_vectors", str(tmp / "tv0.safetensors"), "--method", "ties", "--method_args", "k"],
         "--method_args: expected dict, got k"),
    ]
    for args, message in cases:
        result = run_cli("--pretrained", str(tmp / "pre.safetensors"), *args, "--output", str(out))
        assert result.returncode == 2, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
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


def test_output_path_is_checked_before_any_work(files, monkeypatch):
    import weaving.merging.cli as cli

    tmp, _, _, _ = files
    (tmp / "a_file").write_text("x")

    def never(*args, **kwargs):
        raise AssertionError("the merge ran before the output path was checked")

    monkeypatch.setattr(cli, "task_vector_from_finetuned", never)
    monkeypatch.setattr(cli, "run_merge", never)
    args = ["--pretrained", str(tmp / "pre.safetensors"), "--finetuned", str(tmp / "ft0.safetensors"), "--method", "ties"]
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        merge_main(args + ["--output", str(tmp)])
    with pytest.raises(ValueError, match="is a file, so it cannot hold a folder"):
        merge_main(args + ["--output", str(tmp / "a_file" / "merged.safetensors")])


def test_yaml_accepts_one_file_and_a_list_of_lambdas(files):
    tmp, pretrained, tvs, _ = files
    config = tmp / "one.yaml"
    config.write_text(f"pretrained: {tmp / 'pre.safetensors'}\ntask_vectors: {tmp / 'tv0.safetensors'}\n"
                      f"method: ties\nmethod_args: {{k: 0.5}}\nlambdas: [0.5, 1.0]\noutput: {tmp / 'one.safetensors'}\n")
    merge_main(["--config", str(config)])
    expected = weaving.weave(pretrained, tvs[:1], "ties", [0.5, 1.0], k=0.5)
    got = load_file(tmp / "one.safetensors")
    assert all(torch.equal(got[k], expected[k]) for k in pretrained)
    recipe = json.loads(read_metadata(tmp / "one.safetensors")["weaving_recipe"])
    assert recipe["lambdas"] == [0.5, 1.0] and recipe["inputs"] == [str(tmp / "tv0.safetensors")]


def test_task_vectors_of_different_bases_need_allow_mixed(files, capsys):
    tmp, pretrained, tvs, _ = files
    for i, tv in enumerate(tvs[:2]):
        save_file(tv, tmp / f"id{i}.safetensors", metadata={"run_id": f"r{i}", "model": "m", "pretrained": "",
                                                           "pretrained_hash": f"sha256:{i}"})
    args = ["--pretrained", str(tmp / "pre.safetensors"), "--task_vectors", str(tmp / "id0.safetensors"),
            str(tmp / "id1.safetensors"), "--method", "task_arithmetic", "--output", str(tmp / "m.safetensors")]
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", *args])
    assert exit_info.value.code == 2
    assert "weaving merge: error: task vectors from different base models" in capsys.readouterr().err and not (tmp / "m.safetensors").exists()
    merge_main(args + ["--allow_mixed", "true"])
    assert (tmp / "m.safetensors").is_file()
