"""The generated continual configs: they are generate.py's output, cover every dataset x parts x backbone x
stream of the paper, and follow MagMax's recipe; their output folder derives from model, dataset, parts
and stream. (Every shipped config is also parsed by tests/training/test_configs.py.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from weaving.cli import main

FOLDER = Path(__file__).resolve().parents[2] / "configs" / "continual"


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_continual_configs", FOLDER / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_files_are_the_generator_output():
    generator = load_generator()
    assert generator.main(["--check"]) == 0
    on_disk = {p.relative_to(FOLDER) for p in FOLDER.glob("*/*.yaml")}
    assert on_disk == set(generator.configs())


EPOCHS = {"cifar100": 10, "imagenet_r": 10, "cub200": 30, "stanford_cars": 30}
PARTS = {"cifar100": (5, 10, 20, 50), "imagenet_r": (5, 10, 20, 50), "cub200": (5, 10, 20), "stanford_cars": (5, 10, 20)}
CASES = [(slug, model, dataset, n, stream)
         for slug, model in (("vit_b32", "ViT-B-32"), ("vit_b16", "ViT-B-16"), ("vit_l14", "ViT-L-14"))
         for dataset in EPOCHS for n in PARTS[dataset] for stream in ("sequential", "independent")]


def test_every_run_of_the_paper_has_a_config():
    assert len(CASES) == 84 and len(list(FOLDER.glob("*/*.yaml"))) == 84


@pytest.mark.parametrize(("slug", "model", "dataset", "n", "stream"), CASES[::7])
def test_recipe_and_output_folder(slug, model, dataset, n, stream):
    name = f"{dataset}_{n}splits" + ("" if stream == "sequential" else "_independent")
    config = yaml.safe_load((FOLDER / slug / f"{name}.yaml").read_text())
    fit, data = config["model"]["init_args"], config["data"]["init_args"]
    assert (fit["model"], fit["stream"], fit["epochs_per_task"], fit["lr"], fit["warmup_steps"], fit["weight_decay"]) == (
        model, stream, EPOCHS[dataset], 1e-5, 500, 0.1)
    assert (data["tasks"], data["splits"], data["class_order"], data["batch_size"], data["model"]) == (
        [dataset], n, "magmax", 128, model)
    assert config["trainer"]["max_epochs"] == EPOCHS[dataset] * n
    assert config["trainer"]["default_root_dir"] == f"checkpoints/continual/{model}/{dataset}_{n}splits_{stream}"


def test_a_generated_config_prints_with_its_folder(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(FOLDER / "vit_l14" / "stanford_cars_20splits_independent.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["default_root_dir"] == "checkpoints/continual/ViT-L-14/stanford_cars_20splits_independent"
    assert printed["data"]["init_args"]["class_order"] == "magmax"
