"""`weaving merge --format open_clip|hf`: full checkpoints that open_clip and transformers load as merged."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

import weaving
from weaving.formats.export import file_sha256
from weaving.formats.importer import import_run
from weaving.merging.cli import merge_main
from weaving.merging.task_vectors import load_task_vector, read_metadata


@pytest.fixture(scope="module")
def run(tiny_hf, tmp_path_factory):
    root = tiny_hf[0]
    out = tmp_path_factory.mktemp("export") / "run"
    return import_run(str(root / "pre"), {"a": str(root / "ft"), "b": str(root / "ft")}, out, progress=False)


def merged_open_clip(run, name):
    """weaving's own merged model: theta_pre + TIES of the run's task vectors, loaded into open_clip."""
    theta_pre = load_task_vector(run / "pretrained.safetensors")
    tvs = [run / "task_vectors" / f"{t}.safetensors" for t in ("a", "b")]
    merged = weaving.merge(theta_pre, tvs, "ties", lam=0.7, k=0.5)
    model = open_clip.create_model(name)
    model.load_state_dict(merged)
    return model.eval()


def test_hf_export_loads_in_transformers_and_matches_the_merged_model(run, tiny_hf, tmp_path, capsys):
    import transformers

    name = tiny_hf[3]
    out = tmp_path / "merged_hf"
    merge_main(["--pretrained", str(run), "--task-vectors", str(run), "--method", "ties", "--method_args", "{k: 0.5}",
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
    recipe = json.loads((out / "weaving_recipe.json").read_text())
    assert recipe["method"] == "ties" and recipe["lam"] == 0.7 and recipe["model"] == name
    tv = str(run / "task_vectors" / "a.safetensors")
    assert recipe["input_sha256"][tv] == file_sha256(tv)


def test_open_clip_export_loads_with_create_model(run, tiny_hf, tmp_path):
    name = tiny_hf[3]
    out = tmp_path / "merged.safetensors"
    merge_main(["--pretrained", str(run), "--task-vectors", str(run), "--method", "ties", "--method_args", "{k: 0.5}",
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
        merge_main(["--pretrained", str(run), "--task-vectors", str(run), "--method", "ties",
                    "--format", "hf", "--output", str(tmp_path / "taken")])
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        merge_main(["--pretrained", str(run), "--task-vectors", str(run), "--method", "ties",
                    "--format", "tflite", "--output", str(tmp_path / "m.safetensors")])
    assert not (tmp_path / "m.safetensors").exists() and (tmp_path / "taken" / "x").read_text() == "keep"


def test_visual_only_merge_cannot_pose_as_a_full_checkpoint(run, tiny_hf, tmp_path):
    from safetensors.torch import load_file, save_file

    visual = {k: v for k, v in load_file(run / "pretrained.safetensors").items() if k.startswith("visual.")}
    save_file(visual, tmp_path / "visual.safetensors")
    with pytest.raises(ValueError, match="not a full"):
        merge_main(["--pretrained", str(tmp_path / "visual.safetensors"), "--task-vectors", str(run),
                    "--method", "ties", "--format", "open_clip", "--output", str(tmp_path / "m.safetensors")])
    assert not (tmp_path / "m.safetensors").exists()
