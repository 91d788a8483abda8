"""`weaving` itself: one exit-code policy, one-line config errors, --version, test/optimizer refusals, env."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

import weaving
from weaving.cli import main, run_dir_name, user_error_line

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = str(CONFIGS / "finetune" / "digits_tiny.yaml")


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_version(capsys):
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"weaving {weaving.__version__}"


@pytest.mark.parametrize("args, message", [
    (["frob"], "weaving: error: unknown command 'frob'"),
    (["fit", "--config", TINY, "--model.init_args.lrr", "3"],
     "weaving fit: error: model: weaving.training.FineTuner: Option 'lrr' is not accepted"),
    (["fit", "--config", "nope.yaml"], "weaving fit: error: config: File does not exist"),
    (["fit", "--config", TINY, "--optimizer", "SGD"], "weaving fit: error: --optimizer is not supported: FineTuner"),
    (["fit", "--config", TINY, "--lr_scheduler.class_path", "StepLR"], "weaving fit: error: --lr_scheduler is not supported"),
    (["test", "--config", str(CONFIGS / "merge" / "digits_task_arithmetic.yaml")],
     "weaving test: error: MergeModule has no test loop; run `weaving validate`"),
    (["merge", "--pretrained", "x.safetensors", "--bogus", "1"], "weaving merge: error:"),
])
def test_user_errors_exit_2_with_one_line(args, message, capsys):
    code, _, err = run_main(capsys, *args)
    lines = [line for line in err.splitlines() if line.startswith("weaving")]  # Lightning's log lines aside
    assert code == 2 and len(lines) == 1 and lines[0].startswith(message), err
    assert "usage:" not in err


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="needs tensorboard absent")
def test_missing_tensorboard_is_named(capsys, tmp_path):
    code, _, err = run_main(capsys, "fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path),
                            "--trainer.logger", "TensorBoardLogger", "--trainer.logger.save_dir", str(tmp_path))
    assert code == 2 and "TensorBoardLogger: Neither `tensorboard` nor `tensorboardX` is available" in err


def test_user_error_line_keeps_key_class_and_cause():
    report = ('Parser key "trainer.logger":\n  Does not validate against any of the Union subtypes\n  Errors:\n'
              "    - Problem with given class_path 'a.B':\n        the real cause\n    - Expected a <class 'bool'>")
    assert user_error_line(ValueError(report)) == "trainer.logger: a.B: the real cause"
    assert user_error_line(ValueError("plain")) == "plain"


def test_environment_sets_keys_the_config_leaves_out(capsys, monkeypatch):
    monkeypatch.setenv("PL_FIT__TRAINER__MAX_STEPS", "7")
    code, out, _ = run_main(capsys, "fit", "--config", TINY, "--print_config")
    assert code in (0, None) and yaml.safe_load(out)["trainer"]["max_steps"] == 7


def test_run_dir_name():
    assert run_dir_name("ViT-B-32", ["cars"], None) == str(Path("checkpoints/ViT-B-32/cars"))
    assert run_dir_name("ViT-B-32", ["cifar100"], 10) == str(Path("checkpoints/ViT-B-32/cifar100_10splits"))
    assert run_dir_name("hf-hub:org/m", ["a", "b"], None) == str(Path("checkpoints/hf-hub-org-m/a+b"))


def test_nested_key_errors_name_the_key():
    report = ('Parser key "model":\n  Errors:\n    - Problem with given class_path \'w.FineTuner\':\n'
              '        Parser key "stream":\n          Expected a Literal. Got value: parallel\n'
              "    - Expected a <class 'NoneType'>")
    assert user_error_line(ValueError(report)) == "model: w.FineTuner: stream: Expected a Literal. Got value: parallel"
