"""TaskVectorWriter: one vector per task, exactly theta_t - theta_pre, with metadata and an ordered index."""

from __future__ import annotations

import json

import torch

from weaving.merging.task_vectors import load_task_vector, read_metadata
from weaving.models import load_clip, visual_state_dict

from .conftest import WeightRecorder, fit_stream


def test_vectors_are_final_minus_pretrained_with_metadata_and_index(tmp_path):
    recorder = WeightRecorder()
    tasks = ("digits", "digits_rot90")
    trainer, _ = fit_stream(tmp_path, tasks=tasks, splits=None, callbacks=[recorder])
    folder = tmp_path / "task_vectors"
    assert sorted(p.name for p in folder.iterdir()) == ["digits.safetensors", "digits_rot90.safetensors",
                                                       "index.json"]
    theta_pre = visual_state_dict(load_clip("weaving-tiny-vit", None, seed=0).model)
    for i, task in enumerate(tasks):
        vector = load_task_vector(folder / f"{task}.safetensors")
        assert vector.keys() == theta_pre.keys() and all(k.startswith("visual.") for k in vector)
        for key, delta in vector.items():
            assert torch.equal(delta, recorder.ends[i][key] - theta_pre[key]), (task, key)
        meta = read_metadata(folder / f"{task}.safetensors")
        assert meta["model"] == "weaving-tiny-vit" and meta["pretrained"] == "" and meta["seed"] == "0"
        assert meta["task"] == task and meta["stream"] == "sequential" and meta["steps"] == "2"
        assert json.loads(meta["classes"]) == [str(d) for d in range(10)]
        assert meta["torch_version"] == torch.__version__ and "open_clip_version" in meta
    index = json.loads((folder / "index.json").read_text())
    assert [e["task"] for e in index["task_vectors"]] == list(tasks)
    assert [e["global_step"] for e in index["task_vectors"]] == [2, 4]
    assert index["model"] == "weaving-tiny-vit" and index["pretrained"] is None and index["seed"] == 0


def test_rerun_in_same_dir_keeps_one_entry_per_task(tmp_path):
    fit_stream(tmp_path, tasks=("digits",), splits=2, batches=1)
    fit_stream(tmp_path, tasks=("digits",), splits=2, batches=1)
    index = json.loads((tmp_path / "task_vectors" / "index.json").read_text())
    assert [e["task"] for e in index["task_vectors"]] == ["digits_part1of2", "digits_part2of2"]


def test_vectors_feed_the_merge_side(tmp_path):
    """What the evaluation side reads: run dir -> task vector files, model recipe from metadata."""
    from weaving.evaluation.runs import find_task_vectors

    fit_stream(tmp_path, tasks=("digits", "digits_mirrored"), batches=1)
    found = find_task_vectors(tmp_path)
    assert list(found.paths) == ["digits", "digits_mirrored"]
    assert (found.model, found.pretrained, found.seed) == ("weaving-tiny-vit", None, 0)
