import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from weaving.cli import main
from weaving.evaluation import report
from weaving.evaluation.demo import DemoConfig, parse_args
from weaving.models import load_clip



def test_fast_demo_end_to_end(warm, tmp_path, capsys):
    main(["demo", "--fast", "--output", str(tmp_path), "--progress", "false"])
    printed = capsys.readouterr().out
    for setup in ("multi_task", "continual", "domain_generalization"):
        folder = tmp_path / setup
        results = report.load_results(folder)
        assert results["setup"] == setup
        assert [(r["method"], r["variant"]) for r in results["rows"]] == [
            ("task_arithmetic", "lam"), ("task_arithmetic", "recommended"), ("task_arithmetic", "privileged"),
            ("task_arithmetic", "weave"), ("ties", "lam"), ("ties", "privileged"), ("ties", "weave"),
            ("magmax", "lam"), ("magmax", "recommended"), ("magmax", "privileged"), ("magmax", "weave")]
        analysis = json.loads((folder / "analysis.json").read_text())
        assert analysis["uses_evaluation_data"] is True and list(analysis["methods"]) == ["magmax"]
        for png in ("lambda_curves.png", "best_lambda.png"):
            assert (folder / png).read_bytes()[:4] == b"\x89PNG"
        assert f"### {setup}" in printed
    continual = report.load_results(tmp_path / "continual")
    assert len(continual["tasks"]) == 3  # the fast stream has 3 parts
    assert "individual" not in continual and len(continual["metrics"]["Seq-FT"]["accuracy_matrix"]) == 3
    assert "| Seq-FT | theta_pre + tau_T |" in printed and "| Seq-FT | " in printed.split("Forgetting |")[1]
    assert (tmp_path / "continual" / "continual_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "best_lambda.png").is_file()
    summary = (tmp_path / "summary.md").read_text()
    assert "| ties | + weaving (mean) |" in summary and summary.split("\n\n")[-1].strip() in printed
    assert sorted(p.name for p in (tmp_path / "runs" / "domains" / "task_vectors").glob("*.safetensors")) == [
        "digits.safetensors", "digits_inverted.safetensors", "digits_rot90.safetensors"]
    # step 0: theta_pre is a pre-trained local checkpoint, and every fine-tune run starts from it
    theta_pre = tmp_path / "pretrained" / "weaving-tiny-vit.safetensors"
    random_init = load_clip("weaving-tiny-vit", None, seed=0).model.state_dict()
    pretrained = load_file(theta_pre)
    assert set(pretrained) == set(random_init)
    assert not torch.equal(pretrained["visual.conv1.weight"], random_init["visual.conv1.weight"])
    assert torch.equal(pretrained["token_embedding.weight"], random_init["token_embedding.weight"])  # text untouched
    for run in ("domains", "continual"):
        index = json.loads((tmp_path / "runs" / run / "task_vectors" / "index.json").read_text())
        assert Path(index["pretrained"]).resolve() == theta_pre.resolve()
    recompute_from_the_kept_configs(warm, tmp_path)


def numbers(results):
    """results.json without the job record (its device count differs between the runs compared)."""
    return {k: v for k, v in results.items() if k != "job"}


def recompute_from_the_kept_configs(warm, demo):
    """Each setup's resolved config, kept by the demo, recomputes its results with `weaving validate`; two DDP
    processes (gloo) write the numbers of one process, also where a rank's share is padded (59 samples)."""
    for setup in ("multi_task", "domain_generalization", "continual"):
        config = demo / setup / "config.yaml"
        assert "class_path: weaving.evaluation.ComparisonModule" in config.read_text()
        again = demo / "again" / setup
        main(["validate", "--config", str(config), f"--model.init_args.output_dir={again}",
              "--trainer.enable_progress_bar=false"])
        assert numbers(report.load_results(again)) == numbers(report.load_results(demo / setup)), setup
        assert (again / "config.yaml").read_text() != config.read_text()  # the CLI's resolved config
    odd = ["--model.init_args.max_samples=59", "--model.init_args.batch_size=16", "--trainer.enable_progress_bar=false"]
    main(["validate", "--config", str(config), f"--model.init_args.output_dir={demo / 'one'}", *odd])
    # both ranks started as torchrun starts them (tests/training/test_ddp.py has Lightning start its ranks)
    for rank in warm.run_ranks(["validate", "--config", str(config), f"--model.init_args.output_dir={demo / 'ddp'}",
                                "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", *odd],
                               cwd=demo):
        assert rank.returncode == 0, rank.stderr[-3000:]
    one, ddp = report.load_results(demo / "one"), report.load_results(demo / "ddp")
    assert ddp["job"]["devices"] == 2 and one["job"]["devices"] == 1
    assert numbers(ddp) == numbers(one)
    assert numbers(one) != numbers(report.load_results(demo / "continual"))  # 59 samples, not 60


def test_options_override_the_fast_preset():
    config = parse_args(["--fast", "--methods", "tsv", "iso_c", "--poolings", "mean", "random", "--analysis_methods", "all"])
    assert config.methods == ("tsv", "iso_c") and config.poolings == ("mean", "random")
    assert config.analysis_methods is None and config.splits == DemoConfig().fast().splits
    assert parse_args([]) == DemoConfig()


@pytest.mark.parametrize("argv, message", [
    (["--methods", "tie"], "unknown merge method 'tie'"),
    (["--poolings", "median"], "median"),
    (["--lambdas", "1:0:0.1"], "--lambdas: search space"),
    (["--epochs_per_task", "0"], "--epochs_per_task"),
])
def test_bad_options_exit_with_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--output", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_cuda_without_a_gpu_fails_before_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--fast", "--device", "cuda", "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("weaving demo: error: --device cuda: no CUDA GPU is visible to torch; "
                                               "use --device cpu or leave it out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--device", "tpu9"], "is not a device"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_more_bad_options(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--output", str(tmp_path / "out"), *argv])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in error and len(error.splitlines()) == 1


def test_output_that_is_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--fast", "--output", str(tmp_path / "file")])
    assert exit_info.value.code == 2 and "is an existing file" in capsys.readouterr().err


def test_reuse_only_matching_seed_tasks_and_theta_pre():
    from weaving.evaluation.demo import _why_not_reusable
    from weaving.io.runs import state_dict_hash

    config = DemoConfig(seed=0)
    base = state_dict_hash(load_clip("weaving-tiny-vit", None, seed=0).model.state_dict())
    index = {"seed": 0, "pretrained_hash": base, "task_vectors": [{"task": "digits"}]}
    assert _why_not_reusable(index, ["digits"], config, None) is None
    assert "seed 0, not 5" in _why_not_reusable(index, ["digits"], DemoConfig(seed=5), None)
    assert "tasks" in _why_not_reusable(index, ["digits", "digits_rot90"], config, None)
    assert "another theta_pre" in _why_not_reusable({**index, "pretrained_hash": "sha256:0"}, ["digits"], config, None)
