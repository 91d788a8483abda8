"""`weaving merge` end to end, as a user types it."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import weaving
from weaving.cli import main
from weaving.io.runs import InputWarning
from weaving.merging.cli import merge_main
from weaving.io.safetensors import read_metadata

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


def run_in_process(capsys, *args):
    """`weaving merge ARGS` through the command's own entry point: (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["merge", *args])
    return info.value.code, capsys.readouterr().err


def test_errors_are_one_line_without_traceback_and_leave_no_output(files, capsys):
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
        (["--method", "ties"], "exactly one of finetuned or task_vectors"),
        (["--task_vectors", str(tmp / "tv0.safetensors"), "--method", "ties", "--lam", "abc"], "--lam: expected float, got abc"),
        (["--task_vectors", str(tmp / "tv0.safetensors"), "--method", "ties", "--method_args", "k"],
         "--method_args: expected dict, got k"),
    ]
    # The first case runs as a real process (what a user's shell sees); the others through the same entry
    # point in this process, which keeps the test fast.
    first = run_cli("--pretrained", str(tmp / "pre.safetensors"), *cases[0][0], "--output", str(out))
    results = [(cases[0], first.returncode, first.stderr)]
    for case in cases[1:]:
        code, err = run_in_process(capsys, "--pretrained", str(tmp / "pre.safetensors"), *case[0], "--output", str(out))
        results.append((case, code, err))
    for (args, message), code, err in results:
        assert code == 2, args
        assert message in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    assert [p.name for p in tmp.iterdir() if p.name.startswith(".")] == []


def test_options_as_in_the_usage_line(files, capsys):
    tmp, pretrained, tvs, _ = files
    out = tmp / "usage.safetensors"
    tv_paths = [str(tmp / f"tv{i}.safetensors") for i in range(3)]
    code, err = run_in_process(capsys, "--pretrained", str(tmp / "pre.safetensors"), "--task-vectors", *tv_paths,
                               "--method", "magmax", "--output", str(out))
    assert code == 2 and "unrecognized arguments: --task-vectors" in err and not out.exists()  # option names use '_'
    merge_main(["--pretrained", str(tmp / "pre.safetensors"), "--task_vectors", *tv_paths, "--method", "magmax",
                "--lambdas=0.5:1.0:0.5", "--include_deltas", "false", "--output", str(out)])
    expected = weaving.weave(pretrained, tvs, "magmax", [0.5, 1.0], include_deltas=False)
    got = load_file(out)
    assert all(torch.equal(got[k], expected[k]) for k in pretrained)


def test_output_path_is_checked_before_any_work(files, monkeypatch):
    tmp, _, _, _ = files
    (tmp / "a_file").write_text("x")

    def never(*args, **kwargs):
        raise AssertionError("the merge ran before the output path was checked")

    import weaving.merging.recipe as recipe

    monkeypatch.setattr(recipe, "prepare_merge", never)
    monkeypatch.setattr(recipe, "prepare_weave", never)
    args = ["--pretrained", str(tmp / "pre.safetensors"), "--finetuned", str(tmp / "ft0.safetensors"), "--method", "ties"]
    with pytest.raises(ValueError, match="already exists and is not empty"):  # a folder output is a new HF folder
        merge_main(args + ["--output", str(tmp)])
    (tmp / "sub.safetensors").mkdir()
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        merge_main(args + ["--output", str(tmp / "sub.safetensors")])
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


# ------------------------------------------------------------------------------ recipes and HF folders
def test_recipe_file_end_to_end_writes_a_sharded_folder(tmp_path):
    import yaml

    from weaving.io.loader import open_checkpoint

    from ..formats.llm import finetunes, llama_like, write_hf_folder

    base = llama_like()
    base_dir = write_hf_folder(tmp_path / "base", base, shards=2)
    tuned = finetunes(base, 2)
    paths = [str(write_hf_folder(tmp_path / f"ft{i}", t, shards=2, config=False)) for i, t in enumerate(tuned)]
    recipe = {"pretrained": str(base_dir), "finetuned": [{"model": paths[0], "weight": 0.5}, paths[1]],
              "method": "ties", "lambdas": "0.5:1.0:0.5", "grid": {"k": [0.3, 0.6]},
              "output": str(tmp_path / "merged"), "out_shard_size": "1KB"}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = run_cli("--config", str(tmp_path / "recipe.yaml"))
    assert result.returncode == 0, result.stderr
    tvs = [{k: 0.5 * (tuned[0][k] - base[k]) for k in base}, {k: tuned[1][k] - base[k] for k in base}]
    expected = weaving.weave(base, tvs, "ties", [0.5, 1.0], grid={"k": [0.3, 0.6]})
    got = open_checkpoint(tmp_path / "merged")
    assert all(torch.equal(got.get(k), expected[k]) for k in base)
    assert (tmp_path / "merged" / "config.json").exists() and len(list((tmp_path / "merged").glob("*.safetensors"))) > 3
    # the same merge from flags, with folders as inputs
    result = run_cli("--pretrained", str(base_dir), "--task_vectors", str(tmp_path / "tv.safetensors"), "--method", "ties",
                     "--output", str(tmp_path / "x"))
    assert result.returncode != 0 and "tv.safetensors: no such file" in result.stderr
    save_file(tvs[0], tmp_path / "tv0.safetensors")
    result = run_cli("--pretrained", str(base_dir), "--task_vectors", str(tmp_path / "tv0.safetensors"), "--method",
                     "ties", "--lambdas", "0.5,1.0", "--grid", "{k: [0.3, 0.6]}", "--dtype", "bfloat16",
                     "--out_shard_size", "2KB", "--output", str(tmp_path / "flags"))
    assert result.returncode == 0, result.stderr
    expected = weaving.weave(base, tvs[:1], "ties", [0.5, 1.0], grid={"k": [0.3, 0.6]})
    got = open_checkpoint(tmp_path / "flags")
    assert all(torch.equal(got.get(k), expected[k].to(torch.bfloat16)) for k in base)


@pytest.mark.parametrize("recipe, message", [
    ("pretrained: P\nfinetuned: [F]\nmethod: ties\noutput: OUT\ncolour: red\n", "Option 'colour' is not accepted"),
    ("pretrained: P\nfinetuned: [{model: F, weight: heavy}]\nmethod: ties\noutput: OUT\n",
     "finetuned: weaving.merging.recipe.InputModel: weight: expected float, got heavy"),
    ("pretrained: P\nfinetuned: [F]\nmethod: ties\nlambdas: [1.0]\ngrid: {p: [0.1]}\noutput: OUT\n",
     "has no hyper-parameter 'p'"),
    ("pretrained: P\nfinetuned: [F]\nmethod: ties\nlambdas: [1.0]\ngrid: {k: []}\noutput: OUT\n", "is empty"),
    ("pretrained: P\nfinetuned: [F]\nmethod: ties\nseed: many\noutput: OUT\n", "--seed: expected int, got many"),
    ("inputs: {pretrained: P, finetuned: [F]}\nmethod: {ties: {k: 0.2}}\noutput: OUT\n",
     "a nested recipe (inputs:, method: {NAME: {...}}, weaving:) is no longer read; write its keys flat"),
    ("pretrained: P\nfinetuned: [someone/not-cached-anywhere]\nmethod: ties\noutput: OUT\n", "HF_HUB_OFFLINE"),
])
def test_bad_recipe_files_are_one_line_errors(files, recipe, message, capsys):
    """In-process through the command's entry point; the hub case as a real process, since huggingface_hub
    reads HF_HUB_OFFLINE when it is imported."""
    tmp, _, _, finetuned = files
    path = tmp / "recipe.yaml"
    path.write_text(recipe.replace("P", str(tmp / "pre.safetensors")).replace("F", finetuned[0])
                    .replace("OUT", str(tmp / "out")))
    if message == "HF_HUB_OFFLINE":
        result = subprocess.run([sys.executable, "-m", "weaving", "merge", "--config", str(path)], capture_output=True,
                                text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
        code, err = result.returncode, result.stderr
    else:
        code, err = run_in_process(capsys, "--config", str(path))
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp / "out").exists()


@pytest.mark.parametrize("flag, space", [
    ("1:3:1", "1:3:1"),  # YAML 1.1 would read a base-60 integer: one lambda of 3781
    ("[1e-3, 0.5]", [1e-3, 0.5]),
    ("{distribution: uniform, low: 0.1, high: 1.5, n: 4, seed: 2}", {"distribution": "uniform", "low": 0.1, "high": 1.5, "n": 4, "seed": 2}),
    ("{kind: linear_depth, start: 0.2, stop: 1.0}", {"kind": "linear_depth", "start": 0.2, "stop": 1.0}),
    ("[0.5, {kind: pattern, patterns: {'*proj*': 2.0}}]", [0.5, {"kind": "pattern", "patterns": {"*proj*": 2.0}}]),
])
def test_every_documented_lambdas_form_works_on_the_command_line(files, flag, space):
    tmp, pretrained, tvs, finetuned = files
    out = tmp / "woven.safetensors"
    merge_main(["--pretrained", str(tmp / "pre.safetensors"), "--task_vectors", *[str(tmp / f"tv{i}.safetensors") for i in range(3)],
                "--method", "task_arithmetic", "--lambdas", flag, "--output", str(out)])
    expected = weaving.weave(pretrained, tvs, "task_arithmetic", space)
    got = load_file(out)
    for key in pretrained:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-6)


def test_lambdas_range_and_exponents_in_a_config_file(files):
    tmp, pretrained, tvs, _ = files
    tv_paths = [str(tmp / f"tv{i}.safetensors") for i in range(3)]
    config = tmp / "merge.yaml"
    config.write_text(f"pretrained: {tmp / 'pre.safetensors'}\ntask_vectors: {json.dumps(tv_paths)}\n"
                      f"method: task_arithmetic\nlambdas: 2:4:1\noutput: {tmp / 'a.safetensors'}\n")
    merge_main(["--config", str(config)])
    config.write_text(f"pretrained: {tmp / 'pre.safetensors'}\ntask_vectors: {json.dumps(tv_paths)}\n"
                      f"method: task_arithmetic\nlam: 1e-3\noutput: {tmp / 'b.safetensors'}\n")
    merge_main(["--config", str(config)])
    woven, merged = load_file(tmp / "a.safetensors"), load_file(tmp / "b.safetensors")
    expected_woven = weaving.weave(pretrained, tvs, "task_arithmetic", [2.0, 3.0, 4.0])
    expected_merged = weaving.merge(pretrained, tvs, "task_arithmetic", lam=1e-3)
    for key in pretrained:
        torch.testing.assert_close(woven[key], expected_woven[key], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(merged[key], expected_merged[key], atol=1e-6, rtol=1e-6)


def test_a_range_is_not_a_lambda(files, capsys):
    tmp, *_ = files
    code, err = run_in_process(capsys, "--pretrained", str(tmp / "pre.safetensors"), "--task_vectors",
                               str(tmp / "tv0.safetensors"), "--method", "ties", "--lam", "1:3:1",
                               "--output", str(tmp / "never.safetensors"))
    assert code == 2 and "--lam: expected float, got 1:3:1" in err and not (tmp / "never.safetensors").exists()


def test_non_finite_outputs_are_refused_and_never_written(tmp_path, capsys):
    pre = {"visual.a.weight": torch.full((4, 4), 40000.0, dtype=torch.float16), "visual.b": torch.ones(3, dtype=torch.float16)}
    save_file(pre, tmp_path / "pre.safetensors")
    for i in range(2):
        save_file({k: v + 20000.0 for k, v in pre.items()}, tmp_path / f"ft{i}.safetensors")
    big = {k: torch.full(v.shape, 1e30) for k, v in pre.items()}
    save_file({k: v.float() for k, v in pre.items()}, tmp_path / "pre32.safetensors")
    save_file({k: v.float() + big[k] for k, v in pre.items()}, tmp_path / "big.safetensors")
    half = ["--pretrained", str(tmp_path / "pre.safetensors"), "--finetuned", str(tmp_path / "ft0.safetensors"),
            str(tmp_path / "ft1.safetensors")]
    single = ["--pretrained", str(tmp_path / "pre32.safetensors"), "--finetuned", str(tmp_path / "big.safetensors")]
    cases = [
        (half + ["--method", "task_arithmetic"], "out.safetensors", "(float16) is not finite"),
        (half + ["--method", "ties", "--lambdas", "1.0,2.0", "--pooling", "magmax"], "out.safetensors", "(float16) is not finite"),
        (half + ["--method", "task_arithmetic", "--out_shard_size", "100"], "folder", "(float16) is not finite"),
        (single + ["--method", "task_arithmetic", "--dtype", "float16"], "out.safetensors", "overflow float16"),
        (single + ["--method", "task_arithmetic", "--lam", "1e37"], "out.safetensors", "a lambda or weight too large for float32"),
        (single + ["--method", "task_arithmetic", "--lambdas", "0.5,1e39", "--pooling", "magmax"], "out.safetensors",
         "a lambda or weight too large for float32"),
        (single + ["--method", "task_arithmetic", "--lam", "1e39"], "out.safetensors", "lam=1e+39 overflows float32"),
    ]
    for args, output, message in cases:
        code, err = run_in_process(capsys, *args, "--output", str(tmp_path / output))
        errors = [line for line in err.splitlines() if line.startswith("weaving merge: error: ")]  # the progress bar aside
        assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, (args, err)
        assert "'visual.a.weight'" in errors[0] or "lam=" in errors[0]
        assert not (tmp_path / output).exists(), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors", "ft0.safetensors", "ft1.safetensors",
                                                          "pre.safetensors", "pre32.safetensors"]


def test_a_run_whose_index_and_files_disagree_is_refused_unless_tasks_are_named(files, capsys):
    """A stopped fit (tasks of the stream without a task vector) or a lost index entry is not the run's
    result: merge refuses the folder, and merges the files when they are named."""
    tmp, pretrained, tvs, _ = files
    folder = tmp / "run" / "task_vectors"
    folder.mkdir(parents=True)
    for name, tv in zip("abc", tvs):
        save_file(tv, folder / f"{name}.safetensors")
    entries = [{"task": name, "file": f"{name}.safetensors"} for name in "ab"]
    out = tmp / "never.safetensors"
    for tasks, message in ((["a", "b", "c"], "1 of its 3 tasks have no task vector (c"),
                           (["a", "b"], "1 task vector files are not in its index (c.safetensors)")):
        (folder / "index.json").write_text(json.dumps({"format": "weaving.run/1", "tasks": tasks, "task_vectors": entries}))
        code, err = run_in_process(capsys, "--pretrained", str(tmp / "pre.safetensors"), "--task_vectors", str(tmp / "run"),
                                   "--method", "task_arithmetic", "--output", str(out))
        assert code == 2 and message in err and "does not cover the run" in err and not out.exists(), err
    merge_main(["--pretrained", str(tmp / "pre.safetensors"), "--task_vectors", str(folder / "a.safetensors"),
                str(folder / "b.safetensors"), "--method", "task_arithmetic", "--output", str(out)])
    expected = weaving.merge(pretrained, tvs[:2], "task_arithmetic")
    assert all(torch.equal(load_file(out)[k], expected[k]) for k in pretrained)


def test_inputs_of_the_wrong_kind_are_refused_from_their_metadata(files, capsys):
    tmp, pretrained, tvs, finetuned = files
    save_file(pretrained, tmp / "theta_pre.safetensors", metadata={"format": "weaving.pretrained/1"})
    save_file(tvs[0], tmp / "fit_tv.safetensors", metadata={"format": "weaving.task_vector/1", "task": "a"})
    save_file(tvs[1], tmp / "imported_tv.safetensors", metadata={"format": "weaving.run/1", "kind": "task_vector"})
    pre, out = str(tmp / "pre.safetensors"), tmp / "never.safetensors"
    cases = [
        (["--task_vectors", str(tmp / "tv0.safetensors"), str(tmp / "theta_pre.safetensors")],
         "theta_pre.safetensors: its metadata says it is theta_pre (pretrained weights), not a task vector"),
        (["--finetuned", finetuned[0], str(tmp / "fit_tv.safetensors")],
         "fit_tv.safetensors: its metadata says it is a task vector (theta_t - theta_pre), not fine-tuned weights; give it with --task_vectors"),
        (["--finetuned", str(tmp / "imported_tv.safetensors")], "its metadata says it is a task vector"),
        (["--finetuned", finetuned[0], finetuned[1], finetuned[0]], "the same model as entry 0; give each model once"),
        (["--finetuned", pre], "is the pretrained model itself"),
        (["--finetuned", str(tmp / "theta_pre.safetensors")], "is theta_pre (pretrained weights) itself"),
        (["--task_vectors", str(tmp / "tv0.safetensors"), str(tmp / "tv0.safetensors")], "give each task once"),
    ]
    for args, message in cases:
        code, err = run_in_process(capsys, "--pretrained", pre, *args, "--method", "task_arithmetic", "--output", str(out))
        assert code == 2 and message in err and "Traceback" not in err and not out.exists(), (args, err)


def test_full_weights_given_as_task_vectors_are_warned_about(files, capsys):
    tmp, pretrained, tvs, finetuned = files
    out = tmp / "out.safetensors"
    done = run_cli("--pretrained", str(tmp / "pre.safetensors"), "--task_vectors", finetuned[0],
                   str(tmp / "tv1.safetensors"), "--method", "task_arithmetic", "--output", str(out))
    warnings_printed = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert len(warnings_printed) == 1 and warnings_printed[0].startswith(
        f"weaving merge: warning: task_vectors[0] {finetuned[0]} looks like full fine-tuned weights")
    assert done.returncode == 0 and out.exists()  # a warning: the file has no metadata to be sure
    with pytest.warns(InputWarning, match=r"\|\|tau\|\| / \|\|theta_pre\|\| = 1\.\d\d over 3 tensors"):
        weaving.run_recipe({"pretrained": str(tmp / "pre.safetensors"), "task_vectors": [finetuned[1]],
                            "method": "task_arithmetic", "output": str(tmp / "out2.safetensors")})


@pytest.mark.parametrize("extra", [[], ["--format", "open_clip", "--model", "ViT-B-32"]])
def test_a_billion_point_search_space_fails_before_any_tensor_is_read(files, monkeypatch, extra):
    tmp, _, _, finetuned = files

    def never(*args, **kwargs):
        raise AssertionError("a tensor file was opened before the search space was checked")

    import weaving.merging.recipe as recipe

    monkeypatch.setattr(recipe, "open_checkpoint", never)
    monkeypatch.setattr(recipe, "as_source", never)
    grid = "{k: " + json.dumps([round(0.1 + i * 1e-5, 6) for i in range(10_000)]) + ", beta: 0.1:1.0:0.1}"
    with pytest.raises(ValueError, match="has 1000000000 points; at most 10000"):  # 10^4 lambdas x 10^4 x 10
        merge_main(["--pretrained", str(tmp / "pre.safetensors"), "--finetuned", *finetuned, "--method", "breadcrumbs_ties",
                    "--lambdas", "0.0001:1.0:0.0001", "--grid", grid, *extra, "--output", str(tmp / "never.pt")])


def test_a_run_folder_passes_its_recorded_zero_entries_to_ties_and_pcb(files, capsys):
    """index.json's zero_entries (what `weaving fit` / `weaving import` record for a CLIP run) is the
    default population of the methods that count one; the user's own value wins; other methods ignore it."""
    from weaving.io.runs import RunIdentity, index_payload, write_index

    tmp, pretrained, tvs, _ = files
    run = tmp / "run"
    (run / "task_vectors").mkdir(parents=True)
    for i, tv in enumerate(tvs):
        save_file(tv, run / "task_vectors" / f"t{i}.safetensors")
    save_file(pretrained, run / "pretrained.safetensors")
    write_index(run, index_payload(RunIdentity(), pretrained_file="pretrained.safetensors", seed=None, stream=None,
                                   tasks=["t0", "t1", "t2"], entries=[{"task": f"t{i}", "file": f"t{i}.safetensors"}
                                                                      for i in range(3)], zero_entries=60))
    for method, args, expected in [("ties", "{}", {"zero_entries": 60}), ("pcb", "{}", {"zero_entries": 60}),
                                   ("ties", "{zero_entries: 0}", {"zero_entries": 0}),
                                   ("task_arithmetic", "{}", {})]:
        out = tmp / f"{method}{len(args)}.safetensors"
        merge_main(["--pretrained", str(run), "--task_vectors", str(run), "--method", method,
                    "--method_args", args, "--output", str(out)])
        want = weaving.merge(pretrained, tvs, method, **expected)
        got = load_file(out)
        assert all(torch.equal(got[k], want[k]) for k in pretrained), (method, args)
        assert json.loads(read_metadata(out)["weaving_recipe"])["hparams"] == expected
    plain = weaving.merge(pretrained, tvs, "ties")
    assert not all(torch.equal(load_file(tmp / "ties2.safetensors")[k], plain[k]) for k in pretrained)


def test_a_mergekit_yaml_goes_through_the_recipe_schema_and_its_flags(files, capsys):
    """`weaving merge --config mergekit.yml --output X` (a top-level merge_method): mergekit's file as it is,
    with weaving's flags on top (--lambdas weaves over it); --print_config shows the recipe it became."""
    import yaml

    from weaving.merging.mergekit import recipe_from_mergekit

    tmp, pretrained, tvs, finetuned = files
    config = {"merge_method": "ties", "base_model": str(tmp / "pre.safetensors"),
              "models": [{"model": f, "parameters": {"weight": 1.0, "density": 0.5}} for f in finetuned[:2]]}
    (tmp / "mk.yml").write_text(yaml.safe_dump(config))
    merge_main(["--config", str(tmp / "mk.yml"), "--output", str(tmp / "one.safetensors")])
    expected = load_file(weaving.run_recipe({**recipe_from_mergekit(config), "output": str(tmp / "api.safetensors")}))
    assert all(torch.equal(load_file(tmp / "one.safetensors")[k], expected[k]) for k in expected)
    merge_main(["--config", str(tmp / "mk.yml"), "--output", str(tmp / "woven.safetensors"), "--lambdas", "0.5,1.0"])
    assert json.loads(read_metadata(tmp / "woven.safetensors")["weaving_recipe"])["lambdas"] == "0.5,1.0"
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        merge_main(["--config", str(tmp / "mk.yml"), "--output", "x", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert done.value.code == 0 and printed["method"] == "mergekit_ties" and printed["finetuned"] == finetuned[:2]
    (tmp / "bad.yml").write_text(yaml.safe_dump({**config, "merge_method": "slerp"}))
    code, err = run_in_process(capsys, "--config", str(tmp / "bad.yml"), "--output", str(tmp / "never.safetensors"))
    assert code == 2 and "merge_method 'slerp' is not supported" in err and len(err.strip().splitlines()) == 1
