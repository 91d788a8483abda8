"""`weaving merge --format open_clip|hf`: full checkpoints that open_clip and transformers load as merged."""

from __future__ import annotations

import json
import shutil
import os
from pathlib import Path

import open_clip
import pytest
import torch

import weaving
from weaving.formats.export import file_sha256
from weaving.formats.importer import import_run
from weaving.merging.cli import merge_main
from weaving.io.runs import read_run
from weaving.io.safetensors import read_metadata
from weaving.merging.task_vectors import load_task_vector


@pytest.fixture(scope="module")
def run(tiny_hf, tmp_path_factory):
    root = tiny_hf[0]
    out = tmp_path_factory.mktemp("export") / "run"
    second = out.parent / "ft_b"  # import refuses one source given twice: a copy stands for task b
    shutil.copytree(root / "ft", second)
    return import_run(str(root / "pre"), {"a": str(root / "ft"), "b": str(second)}, out, progress=False)


def merged_open_clip(run, name):
    """weaving's own merged model: theta_pre + TIES of the run's task vectors, loaded into open_clip."""
    theta_pre = load_task_vector(run / "pretrained.safetensors")
    tvs = [run / "task_vectors" / f"{t}.safetensors" for t in ("a", "b")]
    zeros = read_run(run).zero_entries  # a run folder's recorded population, which the CLI merges use
    merged = weaving.merge(theta_pre, tvs, "ties", lam=0.7, k=0.5, zero_entries=zeros)
    model = open_clip.create_model(name)
    model.load_state_dict(merged)
    return model.eval()


def test_hf_export_loads_in_transformers_and_matches_the_merged_model(run, tiny_hf, tmp_path, capsys):
    import transformers

    name = tiny_hf[3]
    out = tmp_path / "merged_hf"
    merge_main(["--pretrained", str(run), "--task_vectors", str(run), "--method", "ties", "--method_args", "{k: 0.5}",
                "--lam", "0.7", "--format", "hf", "--output", str(out)])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = merged_open_clip(run, name).encode_image(images)
        clip = transformers.CLIPModel.from_pretrained(out).eval()
        got = clip.get_image_features(pixel_values=images)
        got = getattr(got, "pooler_output", got)
        vision = transformers.CLIPVisionModel.from_pretrained(out).eval()
        pooled = vision(pixel_values=images).pooler_output
    assert float((got - want).norm() / want.norm()) < 1e-5
    torch.testing.assert_close(pooled @ clip.visual_projection.weight.T, want, rtol=1e-5, atol=1e-6)
    recipe = json.loads(read_metadata(out / "model.safetensors")["weaving_recipe"])
    assert recipe["method"] == "ties" and recipe["lam"] == 0.7 and recipe["model"] == name
    tv = str(run / "task_vectors" / "a.safetensors")
    assert recipe["input_sha256"][tv] == file_sha256(tv)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    card = (out / "README.md").read_text()
    assert file_sha256(tv).removeprefix("sha256:") in card and "ties" in card


def test_open_clip_export_loads_with_create_model(run, tiny_hf, tmp_path):
    name = tiny_hf[3]
    out = tmp_path / "merged.safetensors"
    merge_main(["--pretrained", str(run), "--task_vectors", str(run), "--method", "ties", "--method_args", "{k: 0.5}",
                "--lam", "0.7", "--format", "open_clip", "--output", str(out)])
    loaded = open_clip.create_model(name, pretrained=str(out)).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), merged_open_clip(run, name).encode_image(images))
    meta = read_metadata(out)
    recipe = json.loads(meta["weaving_recipe"])
    assert meta["model"] == name and recipe["pretrained"] == str(run / "pretrained.safetensors")
    assert set(recipe["input_sha256"]) == {recipe["pretrained"], *recipe["inputs"]}


def test_export_checks_the_output_before_merging(run, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    with pytest.raises(ValueError, match="already exists"):
        merge_main(["--pretrained", str(run), "--task_vectors", str(run), "--method", "ties",
                    "--format", "hf", "--output", str(tmp_path / "taken")])
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        merge_main(["--pretrained", str(run), "--task_vectors", str(run), "--method", "ties",
                    "--format", "tflite", "--output", str(tmp_path / "m.safetensors")])
    assert not (tmp_path / "m.safetensors").exists() and (tmp_path / "taken" / "x").read_text() == "keep"


def test_visual_only_merge_cannot_pose_as_a_full_checkpoint(run, tiny_hf, tmp_path):
    from safetensors.torch import load_file, save_file

    visual = {k: v for k, v in load_file(run / "pretrained.safetensors").items() if k.startswith("visual.")}
    save_file(visual, tmp_path / "visual.safetensors")
    with pytest.raises(ValueError, match="not a full"):
        merge_main(["--pretrained", str(tmp_path / "visual.safetensors"), "--task_vectors", str(run),
                    "--method", "ties", "--format", "open_clip", "--output", str(tmp_path / "m.safetensors")])
    assert not (tmp_path / "m.safetensors").exists()


def test_every_merged_folder_describes_itself_and_re_runs_to_the_same_tensors(run, tiny_hf, tmp_path, capsys):
    """An open_clip folder loads with `local-dir:` (no model name needed), carries its recipe and model card,
    and `weaving merge --config FOLDER/weaving_recipe.yaml --output OTHER` gives the same tensors; files are
    readable by others under umask 022."""
    import stat

    import yaml

    from weaving.cli import main

    name = tiny_hf[3]
    out, again = tmp_path / "merged", tmp_path / "again"
    previous = os.umask(0o022)
    try:
        main(["merge", "--pretrained", str(run), "--task_vectors", str(run), "--method", "ties", "--method_args",
              "{k: 0.5}", "--lam", "0.7", "--format", "open_clip", "--output", str(out)])
        assert sorted(p.name for p in out.iterdir()) == ["README.md", "open_clip_config.json",
                                                         "open_clip_model.safetensors", "weaving_recipe.yaml"]
        assert stat.S_IMODE(out.stat().st_mode) == 0o755
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in out.iterdir())
        model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
        images = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            want = merged_open_clip(run, name).encode_image(images)
            torch.testing.assert_close(model.eval().encode_image(images), want)
        recipe = yaml.safe_load((out / "weaving_recipe.yaml").read_text())
        assert recipe["format"] == "open_clip" and recipe["model"] == name and recipe["lam"] == 0.7
        assert "ties" in (out / "README.md").read_text()
        main(["merge", "--config", str(out / "weaving_recipe.yaml"), "--output", str(again)])
    finally:
        os.umask(previous)
    first = load_task_vector(out / "open_clip_model.safetensors")
    second = load_task_vector(again / "open_clip_model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_the_format_model_is_checked_before_any_tensor_is_read(run, tiny_hf, tmp_path, monkeypatch, capsys):
    from weaving.cli import main
    from weaving.io.safetensors import SafetensorsFile

    def no_reads(self, key, *args):
        raise AssertionError(f"read {key} before the checks")

    for name in ("get", "view", "read_into"):
        monkeypatch.setattr(SafetensorsFile, name, no_reads)
    args = ["merge", "--pretrained", str(run), "--task_vectors", str(run), "--method", "ties", "--format", "open_clip",
            "--output", str(tmp_path / "m")]
    with pytest.raises(SystemExit) as info:
        main(args + ["--model", "ViT-B-31"])
    assert info.value.code == 2 and "unknown model 'ViT-B-31'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args + ["--model", str(tmp_path / "missing.json")])
    assert "missing.json: no such file" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_model_accepts_an_open_clip_config_file(run, tiny_hf, tmp_path):
    """`--model FILE.json` registers an open_clip model config (here the tiny CLIP's, under another name)."""
    from open_clip import factory

    config = open_clip.get_model_config(tiny_hf[3])
    (tmp_path / "my-tiny-clip.json").write_text(json.dumps(config))
    out = tmp_path / "m.safetensors"
    try:
        merge_main(["--pretrained", str(run), "--task_vectors", str(run), "--method", "ties", "--method_args",
                    "{k: 0.5}", "--lam", "0.7", "--format", "open_clip", "--model", str(tmp_path / "my-tiny-clip.json"),
                    "--output", str(out)])
        assert read_metadata(out)["model"] == "my-tiny-clip"
        loaded = open_clip.create_model("my-tiny-clip", pretrained=str(out)).eval()
        images = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            want = merged_open_clip(run, tiny_hf[3]).encode_image(images)
            torch.testing.assert_close(loaded.encode_image(images), want)
    finally:  # the same architecture under a second name would make the other tests' imports ambiguous
        for path in factory._MODEL_CONFIG_PATHS:
            if Path(path).name == "my-tiny-clip.json":
                Path(path).unlink(missing_ok=True)
        factory._MODEL_CONFIGS.pop("my-tiny-clip", None)
