"""The fit configs compose: a backbone base plus small parts, combined with LightningCLI's several
`--config`. Continual (configs/continual/): a base + a dataset + a split count (+ a stream); every run of
the paper's class-incremental protocol (3 backbones x CIFAR100 / ImageNet-R in 5, 10, 20, 50 parts, CUB200 /
StanfordCars in 5, 10, 20 x 2 streams) resolves to exactly what its generated file held before the
composition replaced the 84 files (continual_configs.json: those files' values, captured from them).
Multi-task (configs/finetune/): a base + a task; each of the 8 ViT-B-32 runs resolves to what its own file
held (finetune_configs.json). "Resolved" is `weaving fit --print_config` completed by
`FineTuner.fill_trainer_defaults` (the run folder, max_epochs, log and checkpoint folders) as `weaving fit`
completes it; the data's model and pretrained source are the model section's (linked)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from jsonargparse import dict_to_namespace

from weaving.cli import main
from weaving.lightning_cli import fill_trainer_defaults

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FOLDER = CONFIGS / "continual"
EXPECTED = [json.loads(line) for line in Path(__file__).with_name("continual_configs.json").read_text().splitlines()]
FINETUNE = [json.loads(line) for line in Path(__file__).with_name("finetune_configs.json").read_text().splitlines()]
BACKBONES = ("vit_b32", "vit_b16", "vit_l14")
MODELS = {"vit_b32": "ViT-B-32", "vit_b16": "ViT-B-16", "vit_l14": "ViT-L-14"}


def parts(generated: str, index: int) -> list[Path]:
    """The documented combination for a generated file name: <backbone>.yaml <dataset>.yaml <n>splits.yaml,
    then independent.yaml, or for a sequential run nothing (every other case: sequential.yaml, the same)."""
    slug, name = generated.removesuffix(".yaml").split("/")
    dataset, n, independent = re.fullmatch(r"(.+)_(\d+)splits(_independent)?", name).groups()
    stream = ["independent.yaml"] if independent else (["sequential.yaml"] if index % 2 else [])
    return [FOLDER / f for f in (f"{slug}.yaml", f"{dataset}.yaml", f"{n}splits.yaml", *stream)]


def flatten(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value and key != "method_args":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolved(capsys, command: str, files: list[Path], *flags: str) -> dict:
    """The config `weaving <command>` runs with for these files and flags: printed, then completed as the
    command completes it before it builds anything (weaving.lightning_cli.fill_trainer_defaults)."""
    args = [command] + [item for path in files for item in ("--config", str(path))] + [*flags, "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr().out
    assert exit_info.value.code in (0, None), out
    config = dict_to_namespace(yaml.safe_load(out))
    fill_trainer_defaults(config)
    return flatten(config.as_dict())


def assert_holds(values: dict, expected: dict) -> None:
    """Every value the generated file set, in the resolved config (callbacks: their class and the init_args
    the file set; the data's model and pretrained: the model section's, which the data is linked to)."""
    for key, value in expected.items():
        if key in ("data.init_args.model", "data.init_args.pretrained"):
            key = key.replace("data.", "model.")
        if key == "trainer.callbacks":
            got = values[key]
            assert [c["class_path"] for c in got] == [c["class_path"] for c in value]
            for mine, theirs in zip(got, value):
                assert {k: mine["init_args"][k] for k in theirs.get("init_args", {})} == theirs.get("init_args", {})
            continue
        assert values.get(key) == value, (key, values.get(key), value)


def test_the_generated_runs_are_all_covered():
    assert len(EXPECTED) == 84
    assert {e["file"].split("/")[0] for e in EXPECTED} == set(BACKBONES)


@pytest.mark.parametrize("index", range(len(EXPECTED)), ids=[e["file"] for e in EXPECTED])
def test_a_combination_resolves_to_its_generated_file(index, capsys):
    entry = EXPECTED[index]
    assert_holds(resolved(capsys, "fit", parts(entry["file"], index)), entry["values"])


@pytest.mark.parametrize("entry", FINETUNE, ids=[e["file"] for e in FINETUNE])
def test_a_finetune_combination_resolves_to_its_former_file(entry, capsys):
    task = entry["file"].removeprefix("vit_b32_").removesuffix(".yaml")
    files = [CONFIGS / "finetune" / "vit_b32.yaml", CONFIGS / "finetune" / f"{task}.yaml"]
    values = resolved(capsys, "fit", files)
    assert_holds(values, entry["values"])
    assert values["trainer.default_root_dir"] == f"checkpoints/ViT-B-32/{task}"  # derived, as before


def test_finetune_covers_the_8_tasks():
    assert len(FINETUNE) == 8
    assert {p.stem for p in (CONFIGS / "finetune").glob("*.yaml")} >= {
        e["file"].removeprefix("vit_b32_").removesuffix(".yaml") for e in FINETUNE}


@pytest.mark.parametrize("folder", ["continual", "finetune"])
def test_the_backbone_bases_differ_only_in_the_backbone(folder):
    texts = {slug: (CONFIGS / folder / f"{slug}.yaml").read_text() for slug in BACKBONES}
    same = {slug: text.replace(MODELS[slug], "<model>").replace(slug, "<slug>") for slug, text in texts.items()}
    assert len(set(same.values())) == 1
