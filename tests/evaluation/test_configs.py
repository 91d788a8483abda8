"""The YAML configs of the evaluation stage: they parse, they run, and configs/demo matches the demo."""

import json
import re
from pathlib import Path

import pytest
import yaml

from weaving.cli import main
from weaving.evaluation import report
from weaving.evaluation.demo import DOMAIN_TASKS, DemoConfig

from tests.training.test_composed_configs import assert_holds, resolved

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "merge").glob("*.yaml")) + sorted((ROOT / "configs" / "demo").glob("*.yaml"))


def test_there_are_configs_for_every_setup():
    setups = {yaml.safe_load(p.read_text())["model"]["init_args"].get("setup") for p in CONFIGS}
    assert {"multi_task", "continual", "domain_generalization"} <= setups


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_parses(path, capsys):
    subcommand = "fit" if path.name.startswith("finetune") else "validate"
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


def test_demo_configs_match_the_demo_defaults():
    config = DemoConfig()
    for name, tasks, splits in (("finetune_domains", list(DOMAIN_TASKS), None), ("finetune_continual", ["digits"], config.splits)):
        data = yaml.safe_load((ROOT / "configs" / "demo" / f"{name}.yaml").read_text())
        model, datamodule = data["model"]["init_args"], data["data"]["init_args"]
        assert (model["lr"], model["warmup_steps"], model["epochs_per_task"], model["seed"]) == (
            config.lr, config.warmup_steps, config.epochs_per_task, config.seed)
        assert (datamodule["tasks"], datamodule.get("splits"), datamodule["batch_size"]) == (tasks, splits, config.batch_size)


def test_validate_runs_a_merge_config_end_to_end(domain_run, head_cache, tmp_path):
    out = tmp_path / "out"
    main(["validate", "--config", str(ROOT / "configs" / "merge" / "digits_ties_weave.yaml"),
          f"--model.init_args.task_vectors={domain_run}", f"--model.init_args.head_cache_dir={head_cache}",
          f"--model.init_args.output_dir={out}", f"--trainer.default_root_dir={out}",
          "--model.init_args.lambdas=0.5:1.5:0.5",
          "--data.init_args.tasks=[digits, digits_rot90, digits_inverted]", "--trainer.enable_progress_bar=false"])
    results = report.load_results(out)
    assert results["tasks"] == ["digits", "digits_rot90", "digits_inverted"]
    row = results["rows"][0]
    assert (row["method"], row["weave"], row["lambdas"], row["pooling"]) == ("ties", True, [0.5, 1.0, 1.5], "mean")


def test_demo_configs_fit_then_validate(tmp_path, head_cache):
    run, out = tmp_path / "run", tmp_path / "out"
    main(["fit", "--config", str(ROOT / "configs" / "demo" / "finetune_continual.yaml"),
          f"--trainer.default_root_dir={run}", "--trainer.limit_train_batches=1", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false", "--model.init_args.epochs_per_task=1",
          f"--model.init_args.head_cache_dir={head_cache}", "--data.init_args.splits=2"])
    assert sorted(p.name for p in (run / "task_vectors").glob("*.safetensors")) == [
        "digits_part1of2.safetensors", "digits_part2of2.safetensors"]
    main(["validate", "--config", str(ROOT / "configs" / "demo" / "merge_continual.yaml"),
          f"--model.init_args.task_vectors={run}", f"--model.init_args.head_cache_dir={head_cache}",
          f"--model.init_args.output_dir={out}", f"--trainer.default_root_dir={out}", "--trainer.enable_progress_bar=false"])
    results = report.load_results(out)
    assert results["setup"] == "continual" and results["tasks"] == ["digits_part1of2", "digits_part2of2"]


COMPARE = ROOT / "configs" / "compare"
# The values of the 51 files configs/compare/generate.py wrote (captured from them before the composition
# replaced the 48 paper jobs; the 3 digits jobs stay files of their own).
EXPECTED = [json.loads(line) for line in Path(__file__).with_name("compare_configs.json").read_text().splitlines()]
MODELS = {"vit_b32": "ViT-B-32", "vit_b16": "ViT-B-16", "vit_l14": "ViT-L-14"}


def paper_job(generated: str) -> tuple[list[Path], list[str]]:
    """The documented command of one job of the paper's comparison: paper.yaml, its setup file, and the
    task vectors and output folder of the paper's layout (docs/evaluation.md): runs/<backbone> (multi_task,
    domain_generalization) or the continual configs' sequential run, outputs/compare/<backbone>/<job>."""
    slug, job = generated.removesuffix(".yaml").split("/")
    match = re.fullmatch(r"continual_(.+)_(\d+)splits", job)
    if match:
        dataset, n = match.groups()
        files, vectors = ["paper.yaml", f"continual_{dataset}.yaml"], \
            f"checkpoints/continual/{MODELS[slug]}/{dataset}_{n}splits_sequential"
    else:
        files, vectors = ["paper.yaml", f"{job}.yaml"], f"runs/{slug}"
    return [COMPARE / f for f in files], [f"--model.init_args.task_vectors={vectors}",
                                          f"--model.init_args.output_dir=outputs/compare/{slug}/{job}"]


def test_every_job_of_the_paper_is_covered():
    jobs = {e["file"] for e in EXPECTED}
    continual = {"cifar100": (5, 10, 20, 50), "imagenet_r": (5, 10, 20, 50), "cub200": (5, 10, 20),
                 "stanford_cars": (5, 10, 20)}
    assert jobs == {f"{slug}/{job}.yaml" for slug in MODELS for job in ["multi_task", "domain_generalization"] + [
        f"continual_{d}_{n}splits" for d, parts in continual.items() for n in parts]} | {
        f"digits/{setup}.yaml" for setup in ("multi_task", "continual", "domain_generalization")}


@pytest.mark.parametrize("entry", EXPECTED, ids=[e["file"] for e in EXPECTED])
def test_a_compare_job_resolves_to_its_generated_file(entry, capsys):
    if entry["file"].startswith("digits/"):
        values = resolved(capsys, "validate", [COMPARE / entry["file"]])
    else:
        files, flags = paper_job(entry["file"])
        values = resolved(capsys, "validate", files, *flags)
    assert_holds(values, entry["values"])
    assert values["model.init_args.rows"] == ["zeroshot", "individual", "lam", "recommended", "privileged", "weave"]


def test_digits_compare_configs_have_the_demos_settings():
    config = DemoConfig()
    for setup in config.setups:
        args = yaml.safe_load((COMPARE / "digits" / f"{setup}.yaml").read_text())["model"]["init_args"]
        assert args["setup"] == setup and args["methods"] is None and args["lambdas"] == config.lambdas
        assert args["poolings"] == list(config.poolings) and args["analysis"] == list(config.analysis_methods)
        assert args["tasks"] == (["digits"] if setup == "continual" else list(DOMAIN_TASKS))
        assert args.get("max_samples") == config.max_test_samples and args["reference"] is None
