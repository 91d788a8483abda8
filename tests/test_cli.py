"""`weaving` itself: one exit-code policy, one-line config errors, --version, test/optimizer refusals, env."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import weaving
from weaving.cli import main
from weaving.errors import error_line

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
    (["validate", "--config", str(CONFIGS / "merge" / "digits_task_arithmetic.yaml"), "--model.init_args.lam", "1e39"],
     "weaving validate: error: lam=1e+39 overflows float32 (largest 3.403e+38)"),
])
def test_user_errors_exit_2_with_one_line(args, message, capsys):
    code, _, err = run_main(capsys, *args)
    lines = [line for line in err.splitlines() if line.startswith("weaving")]  # Lightning's log lines aside
    assert code == 2 and len(lines) == 1 and lines[0].startswith(message), err
    assert "usage:" not in err


def test_missing_tensorboard_is_named(capsys, tmp_path, monkeypatch):
    import lightning.fabric.loggers.tensorboard as tensorboard

    # Installed or not here, the logger sees neither package (the flags its constructor checks).
    monkeypatch.setattr(tensorboard, "_TENSORBOARD_AVAILABLE", False)
    monkeypatch.setattr(tensorboard, "_TENSORBOARDX_AVAILABLE", False)
    code, _, err = run_main(capsys, "fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path),
                            "--trainer.logger", "TensorBoardLogger", "--trainer.logger.save_dir", str(tmp_path))
    assert code == 2 and "TensorBoardLogger: Neither `tensorboard` nor `tensorboardX` is available" in err


def test_user_error_line_keeps_key_class_and_cause():
    report = ('Parser key "trainer.logger":\n  Does not validate against any of the Union subtypes\n  Errors:\n'
              "    - Problem with given class_path 'a.B':\n        the real cause\n    - Expected a <class 'bool'>")
    assert error_line(ValueError(report)) == "trainer.logger: a.B: the real cause"
    assert error_line(ValueError("plain")) == "plain"


def test_environment_sets_keys_the_config_leaves_out(capsys, monkeypatch):
    monkeypatch.setenv("PL_FIT__TRAINER__MAX_STEPS", "7")
    code, out, _ = run_main(capsys, "fit", "--config", TINY, "--print_config")
    assert code in (0, None) and yaml.safe_load(out)["trainer"]["max_steps"] == 7


def test_nested_key_errors_name_the_key():
    report = ('Parser key "model":\n  Errors:\n    - Problem with given class_path \'w.FineTuner\':\n'
              '        Parser key "stream":\n          Expected a Literal. Got value: parallel\n'
              "    - Expected a <class 'NoneType'>")
    assert error_line(ValueError(report)) == "model: w.FineTuner: stream: Expected a Literal. Got value: parallel"


@pytest.mark.parametrize("command, entry", [
    ("merge", "weaving.merging.cli.merge_main"), ("import", "weaving.formats.importer.import_main"),
    ("demo", "weaving.evaluation.demo.demo_main"), ("fit", "weaving.lightning_cli.lightning_main"),
    ("validate", "weaving.lightning_cli.lightning_main"),
])
def test_ctrl_c_is_one_line_and_exit_130(command, entry, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(entry, interrupted)
    code, _, err = run_main(capsys, command, "--anything")
    assert code == 130 and err == f"weaving {command}: interrupted\n"


def test_ctrl_c_during_fit_runs_lightnings_shutdown_then_exits_130(capsys, monkeypatch, tmp_path):
    """Lightning catches Ctrl-C in fit, runs the on_exception hooks and calls sys.exit(1); weaving keeps that
    shutdown and reports the interrupt as every command does."""
    from weaving.training import FineTuner, TaskVectorWriter

    seen = []

    def interrupt(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(FineTuner, "training_step", interrupt)
    monkeypatch.setattr(TaskVectorWriter, "on_exception", lambda self, trainer, module, exception:
                        seen.append(type(exception)))
    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores further Ctrl-C while it shuts down
    try:
        code, _, err = run_main(capsys, "fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path))
    finally:
        signal.signal(signal.SIGINT, sigint)
    assert code == 130 and seen == [KeyboardInterrupt]
    assert err.splitlines()[-1] == "weaving fit: interrupted"


SLOW_MERGE = """
import signal, sys, time
from pathlib import Path

# Python's own Ctrl-C handler, as a process started from a terminal has: python keeps an inherited SIG_IGN,
# and in full clean-clone CI runs this child, started late in the suite, did not react to SIGINT at all.
signal.signal(signal.SIGINT, signal.default_int_handler)
import weaving.io.safetensors as sharded

write = sharded.SafetensorsStream.write

def slow_write(self, key, tensor):  # the second tensor: say so, then take long enough to be interrupted
    write(self, key, tensor)
    if self.position == 2:
        Path(sys.argv[1]).write_text("writing")
        time.sleep(120)

sharded.SafetensorsStream.write = slow_write
from weaving.cli import main
main(sys.argv[2:])
"""


def test_sigint_during_a_merge_exits_130_with_one_line_and_no_temporary_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    pretrained = {f"w{i}": torch.randn(4, 4, generator=g) for i in range(4)}
    save_file(pretrained, tmp_path / "pre.safetensors")
    save_file({k: v + 0.1 for k, v in pretrained.items()}, tmp_path / "ft.safetensors")
    out, ready = tmp_path / "out", tmp_path / "ready"
    process = subprocess.Popen([sys.executable, "-c", SLOW_MERGE, str(ready), "merge", "--pretrained",
                                str(tmp_path / "pre.safetensors"), "--finetuned", str(tmp_path / "ft.safetensors"),
                                "--method", "task_arithmetic", "--output", str(out / "merged.safetensors")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not ready.exists() and process.poll() is None:
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not line.startswith("merge[")]
    assert process.returncode == 130 and lines == ["weaving merge: interrupted"], err
    assert os.listdir(out) == []  # the temporary file of the half-written output is gone


def test_validate_config_numbers_read_as_yaml_1_2(capsys, tmp_path):
    """A merge config's `lambdas: 1:3:1` stays a range (YAML 1.1: 3781) and `lam: 1e-3` is a number."""
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  init_args:\n    lambdas: 1:3:1\n    lam: 1e-3\n")
    code, out, _ = run_main(capsys, "validate", "--config", str(CONFIGS / "merge" / "digits_ties_weave.yaml"),
                            "--config", str(extra), "--print_config")
    init_args = yaml.safe_load(out)["model"]["init_args"]
    assert code in (0, None) and init_args["lambdas"] == "1:3:1" and init_args["lam"] == 1e-3


def test_sigterm_during_fit_ends_with_one_line_and_a_non_zero_exit(capsys, monkeypatch, tmp_path):
    """A cluster's time limit sends SIGTERM: Lightning stops the loop with a SystemExit of code 0, which
    would report the stopped run as finished."""
    from weaving.training import FineTuner

    step = FineTuner.training_step

    def terminated(self, batch, batch_idx):
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler notes it; the loop stops after this step
        return step(self, batch, batch_idx)

    monkeypatch.setattr(FineTuner, "training_step", terminated)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        code, _, err = run_main(capsys, "fit", "--config", TINY, "--trainer.default_root_dir", str(tmp_path))
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert code == 143
    assert err.splitlines()[-1] == "weaving fit: terminated by SIGTERM before the end; resume with --ckpt_path last"
    assert "Traceback" not in err


POINTS = "[" + ", ".join(["{lam: 0.5}"] * 10_001) + "]"
BILLION = "0.000001:1000:0.000001"  # 10^9 lambdas
MERGE = ["merge", "--pretrained", "nowhere/pre.safetensors", "--finetuned", "nowhere/a.safetensors", "--method", "ties",
         "--output", "nowhere/out.safetensors"]
WEAVE = ["validate", "--config", str(CONFIGS / "merge" / "digits_ties_weave.yaml"), "--model.init_args.task_vectors",
         "nowhere"]
COMPARE = ["validate", "--model", "weaving.evaluation.ComparisonModule", "--model.init_args.task_vectors", "nowhere",
           "--model.init_args.methods", "[ties]"]


@pytest.mark.parametrize("args, message", [
    (MERGE + ["--lambdas", BILLION], "has 1000000000 points; at most 10000"),
    (MERGE + ["--lambdas", "{distribution: uniform, low: 0.1, high: 1.0, n: 1000000000}"], "n must be a whole number in [1, 10000]"),
    (MERGE + ["--points", POINTS], "has 10001 points; at most 10000"),
    (MERGE + ["--lambdas", "0.0001:1.0:0.0001", "--grid", "{k: 0.0001:1.0:0.0001}"], "has 100000000 points"),
    (["demo", "--lambdas", BILLION, "--output", "nowhere/demo"], "has 1000000000 points; at most 10000"),
    (WEAVE + ["--model.init_args.lambdas", BILLION], "has 1000000000 points; at most 10000"),
    (WEAVE + ["--model.init_args.lambdas", "0.0001:1.0:0.0001", "--model.init_args.grid", "{k: 0.0001:1.0:0.0001}"],
     "has 100000000 points"),
    (COMPARE + ["--model.init_args.lambdas", "{distribution: uniform, low: 0.1, high: 1.0, n: 1000000000}"],
     "n must be a whole number in [1, 10000]"),
])
def test_a_huge_search_space_is_refused_before_anything_is_read(args, message, capsys):
    """Every entry point with a search space checks it (and every option) before it reads a file: the inputs
    here do not exist, so any other order would fail on them instead."""
    code, _, err = run_main(capsys, *args)
    lines = [line for line in err.splitlines() if line.startswith("weaving")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err


STARTUP = """
import sys
from weaving.cli import main

def run(*args):
    try:
        main(list(args))
    except SystemExit as stop:
        assert stop.code in (0, 2, None), stop.code

run("--version")
print("torch after --version:", "torch" in sys.modules)
run("merge", "--pretrained", "p.safetensors", "--finetuned", "a.safetensors", "--method", "ties", "--lam", "abc",
    "--output", "o.safetensors")
run("merge", "--help")
run("import", "--pretrained", "p", "--finetuned", "a=b", "--output", "o", "--format", "nope")
run("import", "--help")
print("lightning after merge and import:", sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning")))
"""


def test_start_up_imports_only_what_each_command_needs(tmp_path):
    """One process: `weaving --version` imports no torch; `weaving merge` and `weaving import` (a refused
    option and --help) import no Lightning."""
    result = subprocess.run([sys.executable, "-c", STARTUP], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "torch after --version: False" in result.stdout
    assert "lightning after merge and import: []" in result.stdout, result.stdout
    assert "weaving merge: error: --lam: expected float, got abc" in result.stderr
    assert "weaving import: error: --format: expected one of" in result.stderr
