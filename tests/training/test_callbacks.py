"""TaskVectorWriter: one vector per task, exactly theta_t - theta_pre, with metadata and an ordered index."""

from __future__ import annotations

import json

import shutil

import lightning.pytorch as pl
import pytest
import torch

from weaving.data.datamodule import TaskStreamDataModule
from weaving.training import FineTuner
from weaving.io.safetensors import read_metadata
from weaving.merging.task_vectors import load_task_vector
from weaving.models import load_clip, visual_state_dict

from .conftest import Crash, CrashAtStep, WeightRecorder, fit_stream


def test_vectors_are_final_minus_pretrained_with_metadata_and_index(tmp_path):
    recorder = WeightRecorder()
    tasks = ("digits", "digits_rot90")
    trainer, _ = fit_stream(tmp_path, tasks=tasks, splits=None, callbacks=[recorder])
    folder = tmp_path / "task_vectors"
    assert sorted(p.name for p in folder.iterdir()) == ["digits.safetensors", "digits_rot90.safetensors",
                                                       "index.json"]
    assert (tmp_path / "pretrained.safetensors").is_file()
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
    # the run contract: one run id and theta_pre's hash in the index and in every file; theta_pre saved in full
    from weaving.io.runs import RUN_FORMAT, state_dict_hash

    full = load_clip("weaving-tiny-vit", None, seed=0).model.state_dict()
    assert index["format"] == RUN_FORMAT and index["pretrained_file"] == "pretrained.safetensors"
    assert index["pretrained_hash"] == state_dict_hash(full) == state_dict_hash(tmp_path / "pretrained.safetensors")
    from weaving.models.clip import harness_zero_entries

    assert index["zero_entries"] == harness_zero_entries(full) > 0  # the official harness's text-side entries
    for task in tasks:
        meta = read_metadata(folder / f"{task}.safetensors")
        assert (meta["run_id"], meta["pretrained_hash"]) == (index["run_id"], index["pretrained_hash"])


def test_fresh_fit_into_a_used_run_dir_refuses_unless_overwrite(tmp_path):
    fit_stream(tmp_path, tasks=("digits",), splits=2, batches=1)
    before = json.loads((tmp_path / "task_vectors" / "index.json").read_text())
    with pytest.raises(ValueError, match="already holds a run .* pass --overwrite"):
        fit_stream(tmp_path, tasks=("digits",), splits=2, batches=1)
    assert json.loads((tmp_path / "task_vectors" / "index.json").read_text()) == before  # untouched
    fit_stream(tmp_path, tasks=("digits",), splits=2, batches=1, overwrite=True)
    index = json.loads((tmp_path / "task_vectors" / "index.json").read_text())
    assert [e["task"] for e in index["task_vectors"]] == ["digits_part1of2", "digits_part2of2"]
    assert index["run_id"] != before["run_id"]


def test_overwritten_run_killed_midway_never_mixes_runs(tmp_path):
    """Issue reproduction: a finished 3-part run, rerun with another lr and killed after part 2."""
    from weaving.io.runs import read_run

    fit_stream(tmp_path, tasks=("digits",), splits=3, batches=2)
    old = json.loads((tmp_path / "task_vectors" / "index.json").read_text())["run_id"]
    with pytest.raises(Crash):
        fit_stream(tmp_path, tasks=("digits",), splits=3, batches=2, lr=5e-4, overwrite=True,
                   callbacks=[CrashAtStep(4)])  # step 4 = end of part 2
    index = json.loads((tmp_path / "task_vectors" / "index.json").read_text())
    assert index["run_id"] != old
    assert [e["task"] for e in index["task_vectors"]] == ["digits_part1of3", "digits_part2of3"]
    assert not (tmp_path / "task_vectors" / "digits_part3of3.safetensors").exists()  # the stale one is gone
    with pytest.raises(ValueError, match=r"1 of its 3 tasks have no task vector \(digits_part3of3"):
        read_run(tmp_path)  # a stopped run is not the run's result ...
    run = read_run(tmp_path, tasks=["digits_part1of3", "digits_part2of3"])  # ... unless its prefix is asked for
    assert list(run.paths) == ["digits_part1of3", "digits_part2of3"] and run.run_id == index["run_id"]
    assert {read_metadata(p)["run_id"] for p in run.paths.values()} == {index["run_id"]}


def test_stale_vector_in_a_run_folder_is_refused_on_read(tmp_path):
    """A file of another run copied into the folder (and listed): read_run refuses unless allow_mixed."""
    from weaving.io.runs import read_run

    fit_stream(tmp_path / "a", tasks=("digits",), splits=2, batches=1)
    fit_stream(tmp_path / "b", tasks=("digits",), splits=2, batches=1)
    stale = tmp_path / "b" / "task_vectors" / "digits_part2of2.safetensors"
    (tmp_path / "a" / "task_vectors" / "digits_part2of2.safetensors").write_bytes(stale.read_bytes())
    with pytest.raises(ValueError, match="different runs: .*digits_part2of2.safetensors has run_id="):
        read_run(tmp_path / "a")
    assert list(read_run(tmp_path / "a", allow_mixed=True).paths) == ["digits_part1of2", "digits_part2of2"]
    # separate runs of one base (one fine-tuning per folder) merge: only the base must agree
    both = read_run([tmp_path / "b" / "task_vectors" / "digits_part1of2.safetensors", stale])
    assert len(both.paths) == 2


def test_resume_checks_the_run_identity(tmp_path):
    """A checkpoint of another run (a stray last-v2.ckpt newer than this run's) is refused in one line."""
    with pytest.raises(Crash):
        fit_stream(tmp_path / "mine", tasks=("digits", "digits_rot90"), batches=2, callbacks=[CrashAtStep(3)])
    fit_stream(tmp_path / "other", tasks=("digits", "digits_rot90"), batches=2)
    shutil.copy(tmp_path / "other" / "ckpt" / "last.ckpt", tmp_path / "mine" / "ckpt" / "last-v2.ckpt")
    with pytest.raises(ValueError, match=r"checkpoint .*last-v2.ckpt belongs to run .* but .*index.json to run"):
        fit_stream(tmp_path / "mine", tasks=("digits", "digits_rot90"), batches=2, ckpt_path="last")
    (tmp_path / "mine" / "ckpt" / "last-v2.ckpt").unlink()
    fit_stream(tmp_path / "mine", tasks=("digits", "digits_rot90"), batches=2, ckpt_path="last")
    assert (tmp_path / "mine" / "task_vectors" / "digits_rot90.safetensors").is_file()


def test_checkpoint_of_another_base_model_is_refused(tmp_path):
    fit_stream(tmp_path / "a", tasks=("digits",), batches=1)
    ckpt = tmp_path / "a" / "ckpt" / "last.ckpt"
    with pytest.raises(ValueError, match="with pretrained_hash=.* but this run has pretrained_hash="):
        pl.seed_everything(0, verbose=False)
        data = TaskStreamDataModule(["digits"], batch_size=8, seed=0)
        trainer = pl.Trainer(default_root_dir=tmp_path / "b", accelerator="cpu", limit_train_batches=1,
                             logger=False, enable_progress_bar=False, limit_val_batches=0)
        trainer.fit(FineTuner(seed=1), data, ckpt_path=ckpt)


def test_vectors_feed_the_merge_side(tmp_path):
    """What the evaluation side reads: run dir -> task vector files, model recipe from metadata."""
    from weaving.io.runs import read_run

    fit_stream(tmp_path, tasks=("digits", "digits_mirrored"), batches=1)
    found = read_run(tmp_path)
    assert list(found.paths) == ["digits", "digits_mirrored"]
    assert (found.model, found.pretrained, found.seed) == ("weaving-tiny-vit", None, 0)


def test_resume_refuses_when_finished_tasks_lost_their_task_vectors(tmp_path):
    """Killed in task 3 of 3, task_vectors/ deleted, resumed: tasks 1-2 cannot be made again from the
    checkpoint of task 3, so the resume names them and stops before training or writing anything."""
    with pytest.raises(Crash):
        fit_stream(tmp_path, tasks=("digits",), splits=3, batches=2, callbacks=[CrashAtStep(5)])
    shutil.rmtree(tmp_path / "task_vectors")
    with pytest.raises(ValueError, match=r"cannot resume: 2 finished task\(s\) have no task vector in .*"
                                         r"\(digits_part1of3, digits_part2of3\)"):
        fit_stream(tmp_path, tasks=("digits",), splits=3, batches=2, ckpt_path="last")
    assert not (tmp_path / "task_vectors").exists()


def test_resume_of_a_finished_run_keeps_its_index(tmp_path):
    fit_stream(tmp_path, tasks=("digits", "digits_rot90"), batches=1)
    index = (tmp_path / "task_vectors" / "index.json").read_text()
    fit_stream(tmp_path, tasks=("digits", "digits_rot90"), batches=1, ckpt_path="last")  # nothing to do
    assert (tmp_path / "task_vectors" / "index.json").read_text() == index
    (tmp_path / "task_vectors" / "digits_rot90.safetensors").unlink()
    (tmp_path / "task_vectors" / "index.json").unlink()
    with pytest.raises(ValueError, match=r"2 finished task\(s\) have no task vector .*\(digits, digits_rot90\)"):
        fit_stream(tmp_path, tasks=("digits", "digits_rot90"), batches=1, ckpt_path="last")
    assert not (tmp_path / "task_vectors" / "index.json").exists()  # not rewritten without its task vectors
