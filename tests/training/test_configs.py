"""Every YAML under configs/ that is not a part of a composition (`# Part:`, parsed in its combinations by
tests/training/test_composed_configs.py and tests/evaluation/test_configs.py) parses with
`weaving <subcommand> --config X --print_config`, and the printed config is complete (it parses again to
itself). The subcommand comes from, in order: a comment
`# subcommand: <name>`, a comment showing the command for this file (`weaving validate --config
.../X.yaml`), the folder
(`validate` for configs/merge/ and configs/demo/), else `fit`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from weaving.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
VALIDATE_FOLDERS = {"merge", "demo"}


def subcommand_of(path: Path) -> str:
    comments = [line for line in path.read_text().splitlines() if line.lstrip().startswith("#")]
    own_command = r"weaving (fit|validate|test|predict) --config \S*" + re.escape(path.name)
    for pattern in (r"#\s*subcommand:\s*(fit|validate|test|predict)\b", own_command):
        for line in comments:
            match = re.search(pattern, line)
            if match:
                return match.group(1)
    relative = path.relative_to(CONFIGS)
    return "validate" if relative.parts[0] in VALIDATE_FOLDERS else "fit"


def print_config(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    out = capsys.readouterr().out
    assert exit_info.value.code in (0, None), out
    return out


def is_part(path: Path) -> bool:
    """A part of a composition (a backbone base or an overlay: first line `# Part: ...`), which runs only
    with the others (tests/training/test_composed_configs.py parses every combination)."""
    return path.read_text().startswith("# Part:")


CONFIG_FILES = [p for p in sorted(CONFIGS.rglob("*.yaml")) + sorted(CONFIGS.rglob("*.yml")) if not is_part(p)]


def test_configs_exist():
    names = {p.relative_to(CONFIGS).as_posix() for p in CONFIG_FILES}
    assert {"finetune/digits_tiny.yaml", "continual/digits_tiny_5splits.yaml"} <= names
    parts = {p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml") if is_part(p)}
    assert {f"finetune/{name}.yaml" for name in ("vit_b32", "vit_b16", "vit_l14", "cars", "dtd", "eurosat", "gtsrb",
                                                  "mnist", "resisc45", "sun397", "svhn")} <= parts
    assert {f"continual/{name}.yaml" for name in ("vit_b32", "vit_b16", "vit_l14", "cifar100", "imagenet_r", "cub200",
                                                   "stanford_cars", "5splits", "10splits", "20splits", "50splits",
                                                   "sequential", "independent")} <= parts


def output_dirs(path: Path) -> list[str]:
    """Where a fit config writes: its run folder and the checkpoint and log folders, as `weaving fit` completes
    them (FineTuner.fill_trainer_defaults)."""
    from jsonargparse import dict_to_namespace

    from weaving.training import FineTuner

    config = dict_to_namespace(yaml.safe_load(path.read_text()))
    FineTuner.fill_trainer_defaults(config)
    trainer = config.trainer
    dirs = [trainer.default_root_dir]
    for callback in trainer.get("callbacks") or []:
        dirpath = (callback.get("init_args") or {}).get("dirpath")
        if dirpath and dirpath != str(Path(trainer.default_root_dir) / "ckpt"):
            dirs.append(dirpath)
    return dirs


def test_every_fit_config_writes_to_its_own_folder():
    """No two shipped fit configs share an output folder (a second run would overwrite the first one's task
    vectors, and `--ckpt_path last` would resume the wrong run)."""
    seen: dict[str, Path] = {}
    for path in CONFIG_FILES:
        if subcommand_of(path) != "fit":
            continue
        for folder in output_dirs(path):
            assert folder not in seen, f"{path} and {seen[folder]} both write to {folder}"
            seen[folder] = path


@pytest.mark.parametrize("path", CONFIG_FILES,
                         ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_config_prints_a_complete_config(path, tmp_path, capsys):
    command = subcommand_of(path)
    printed = print_config(capsys, command, "--config", str(path))
    config = yaml.safe_load(printed)
    # a ComparisonModule reads its test sets itself: its configs have no data section
    reads_own_data = config["model"]["class_path"] == "weaving.evaluation.ComparisonModule"
    assert config["model"]["class_path"] and (reads_own_data or config["data"]["class_path"]), printed
    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    assert yaml.safe_load(print_config(capsys, command, "--config", str(again))) == config


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if "FineTuner" in p.read_text()],
                         ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_finetune_configs_are_consistent(path):
    """max_epochs (when given) = epochs_per_task x tasks, and the data uses the model's transforms."""
    assert subcommand_of(path) == "fit"
    config = yaml.safe_load(path.read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    tasks = data.get("splits") or len(data["tasks"])
    assert config["trainer"].get("max_epochs", model.get("epochs_per_task", 1) * tasks) == \
        model.get("epochs_per_task", 1) * tasks
    assert "model" not in data and "pretrained" not in data  # named once, in the model section (linked)
    assert config["trainer"].get("reload_dataloaders_every_n_epochs", 1) == 1
    names = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert "weaving.training.TaskVectorWriter" in names


TINY = CONFIGS / "continual" / "digits_tiny_5splits.yaml"


@pytest.mark.parametrize("override, message", [
    (["--data.init_args.tasks", "[digitz]"], "unknown task 'digitz'"),
    (["--data.init_args.splits", "11"], "splits=11 is invalid for digits with 10 classes"),
    (["--model.init_args.stream", "parallel"], "parallel"),
])
def test_bad_config_is_reported_without_traceback(override, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(TINY), "--trainer.default_root_dir", str(tmp_path), *override])
    err = capsys.readouterr().err
    assert exit_info.value.code not in (0, None)
    assert message in err and "Traceback" not in err


def test_the_data_takes_the_model_named_in_the_model_section(monkeypatch, tmp_path):
    """`model.init_args.model` and `pretrained` are linked to the data's: the images get that model's
    transforms without the config naming it twice."""
    from weaving.data.datamodule import TaskStreamDataModule

    class Stop(Exception):
        pass

    seen = {}

    def stop(self):
        seen["data"] = (self.model, self.pretrained)
        raise Stop

    monkeypatch.setattr(TaskStreamDataModule, "prepare_data", stop)
    with pytest.raises(Stop):
        main(["fit", "--config", str(TINY), "--trainer.default_root_dir", str(tmp_path),
              "--model.init_args.model", "weaving-tiny-vit-b"])
    assert seen["data"] == ("weaving-tiny-vit-b", None)
    with pytest.raises(Stop):  # a data section that names the same model is accepted
        main(["fit", "--config", str(TINY), "--trainer.default_root_dir", str(tmp_path),
              "--data.init_args.model", "weaving-tiny-vit"])
    assert seen["data"] == ("weaving-tiny-vit", None)


@pytest.mark.parametrize("override, message", [
    (["--data.init_args.model", "weaving-tiny-vit-b"],
     "data.init_args.model='weaving-tiny-vit-b' but model.init_args.model='weaving-tiny-vit': name the model once"),
    (["--data.init_args.pretrained", "openai"],
     "data.init_args.pretrained='openai' but model.init_args.pretrained=None: name the pretrained source once"),
])
def test_a_data_section_naming_another_model_is_one_line(override, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(TINY), "--trainer.default_root_dir", str(tmp_path), *override])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"weaving fit: error: {message}"), err  # the link's cause, not jsonargparse's wrapper


def test_stream_length_mismatch_is_one_line(capsys, tmp_path):
    """Caught by FineTuner.setup during fit; `weaving fit` prints it as one line (weaving/cli.py)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(TINY), "--trainer.default_root_dir", str(tmp_path),
              "--trainer.max_epochs", "3", "--trainer.logger", "false", "--trainer.callbacks", "[]"])
    err = capsys.readouterr().err
    assert exit_info.value.code not in (0, None)
    lines = [line for line in err.splitlines() if "trainer.max_epochs=3" in line]
    assert lines and "set trainer.max_epochs to 5" in lines[0] and "Traceback" not in err


OFFLINE_MODELS = ("weaving-tiny-vit", "weaving-tiny-vit-b")
WALKED = [p for p in CONFIG_FILES if p.relative_to(CONFIGS).parts[0] in ("finetune", "demo")]


@pytest.mark.parametrize("path", WALKED, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_config_runs_offline_or_says_what_it_needs_first(path):
    """A config that needs more than this checkout (data, weights, a GPU, an earlier run) says so in line 1."""
    first = path.read_text().splitlines()[0]
    if first.startswith("# Needs:"):
        return
    config = yaml.safe_load(path.read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert model["model"] in OFFLINE_MODELS and model.get("pretrained") is None, first
    assert all(t.startswith("digits") for t in data["tasks"]), first
    assert config["model"]["class_path"] == "weaving.training.FineTuner", first


def test_fit_derives_the_run_folder_and_default_root_dir_moves_everything(tmp_path, monkeypatch):
    """digits_tiny as written (shortened): logs, checkpoints, theta_pre and task vectors in one run folder."""
    from weaving.training.finetune import run_dir_name

    monkeypatch.chdir(tmp_path)
    config = CONFIGS / "finetune" / "digits_tiny.yaml"
    short = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
             "--trainer.enable_progress_bar", "false", "--data.init_args.tasks", "[digits, digits_rot90]",
             "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1"]
    main(["fit", "--config", str(config), *short])
    run = tmp_path / run_dir_name("weaving-tiny-vit", ["digits", "digits_rot90"], None)
    assert run == tmp_path / "checkpoints" / "weaving-tiny-vit" / "digits+digits_rot90"
    assert (run / "pretrained.safetensors").is_file() and (run / "ckpt" / "last.ckpt").exists()
    assert sorted(p.name for p in (run / "task_vectors").glob("*.safetensors")) == [
        "digits.safetensors", "digits_rot90.safetensors"]
    metrics = (run / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    lr_column = metrics[0].split(",").index("train/lr")  # the config's LearningRateMonitor
    assert [float(line.split(",")[lr_column]) for line in metrics[1:] if line.split(",")[lr_column]] == [5e-4, 5e-4]
    with pytest.raises(SystemExit) as exit_info:  # a second fresh fit into the same folder
        main(["fit", "--config", str(config), *short])
    assert exit_info.value.code == 2
    main(["fit", "--config", str(config), *short, "--trainer.default_root_dir", str(tmp_path / "elsewhere")])
    moved = sorted(p.relative_to(tmp_path / "elsewhere").parts[0] for p in (tmp_path / "elsewhere").rglob("*")
                   if p.is_file())
    assert set(moved) == {"ckpt", "lightning_logs", "pretrained.safetensors", "task_vectors"}
    assert sorted(p.name for p in (tmp_path / "checkpoints").rglob("*.ckpt")) == ["epoch=1-step=2.ckpt", "last.ckpt"]
