"""FineTuner: schedule, task streams (independent / sequential), resume, and configuration errors."""

from __future__ import annotations

import math
import pickle

import lightning.pytorch as pl
import pytest
import torch

from weaving.data.datamodule import TaskStreamDataModule
from weaving.models import load_clip, visual_state_dict
from weaving.training import FineTuner, WarmupCosine
from weaving.training.finetune import run_dir_name
from weaving.merging.task_vectors import load_task_vector

from .conftest import Crash, CrashAtStep, LrRecorder, WeightRecorder, fit_stream


def test_warmup_cosine_restarts_per_task_and_pickles():
    schedule = WarmupCosine(warmup_steps=2)
    schedule.start_task(0, start_step=0, total_steps=6)
    assert [schedule(s) for s in range(2)] == [0.5, 1.0]
    assert schedule(2) == pytest.approx(1.0)
    assert schedule(4) == pytest.approx(0.5)
    assert schedule(6) == pytest.approx(0.0) and schedule(9) == pytest.approx(0.0)
    schedule.start_task(1, start_step=6, total_steps=6)
    assert schedule(6) == 0.5 and schedule(10) == pytest.approx(0.5)
    clone = pickle.loads(pickle.dumps(schedule))
    assert clone.__dict__ == schedule.__dict__


@pytest.mark.parametrize("stream", ["sequential", "independent"])
def test_stream_start_points(tmp_path, stream):
    recorder = WeightRecorder()
    _, module = fit_stream(tmp_path, stream=stream, tasks=("digits", "digits_rot90", "digits_inverted"),
                           callbacks=[recorder])
    theta_pre = visual_state_dict(load_clip("weaving-tiny-vit", None, seed=0).model)
    assert len(recorder.starts) == len(recorder.ends) == 3
    for task in range(3):
        expected = theta_pre if (stream == "independent" or task == 0) else recorder.ends[task - 1]
        for key, value in recorder.starts[task].items():
            assert torch.equal(value, expected[key]), (stream, task, key)
        assert not torch.equal(recorder.ends[task]["visual.conv1.weight"], expected["visual.conv1.weight"])
    # every task restarts AdamW (empty state) and the warmup (first lr = lr / warmup_steps = 1e-3 / 1)
    assert recorder.state_sizes == [0, 0, 0]
    assert recorder.first_lrs == pytest.approx([1e-3] * 3)
    # each task trains with its own head: the stream's tasks, in order
    assert module.task_names == ["digits", "digits_rot90", "digits_inverted"]


def test_class_incremental_splits_swap_heads(tmp_path):
    trainer, module = fit_stream(tmp_path, tasks=("digits",), splits=3)
    assert module.task_names == ["digits_part1of3", "digits_part2of3", "digits_part3of3"]
    assert [head.num_classes for head in module._heads] == [3, 3, 4]
    assert trainer.current_epoch == 3  # the stream stopped itself after epochs_per_task x tasks epochs
    # the last step's logged value: the stream position, logged as a tensor on the module's device
    assert float(trainer.callback_metrics["train/task"]) == 2.0


def expected_lrs(lr: float, warmup: int, task_steps: list[int]) -> list[float]:
    """The task-vectors recipe's lr, written out: per task, (s + 1) / warmup during warmup, then
    0.5 * (1 + cos(pi * (s - warmup) / (total - warmup))), s counted from the task's first step."""
    lrs = []
    for total in task_steps:
        for s in range(total):
            if s < warmup:
                factor = (s + 1) / warmup
            else:
                factor = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, total - warmup))))
            lrs.append(lr * factor)
    return lrs


def test_lr_is_the_recipe_at_every_step(tmp_path):
    """A LambdaLR stepped by Lightning gives, step by step, exactly the per-task warmup + cosine: three class
    splits of 3, 3 and 4 batches (tasks of unequal length), two epochs each, warmup 2."""
    recorder = LrRecorder()
    trainer, module = fit_stream(tmp_path, tasks=("digits",), splits=3, batch_size=128, batches=1.0,
                                 epochs_per_task=2, warmup_steps=2, augment=False, callbacks=[recorder])
    scheduler = trainer.lr_scheduler_configs[0]
    assert isinstance(scheduler.scheduler, torch.optim.lr_scheduler.LambdaLR) and scheduler.interval == "step"
    assert [step for step, _ in recorder.steps] == list(range(20))
    assert [lr for _, lr in recorder.steps] == expected_lrs(1e-3, 2, [6, 6, 8])  # exactly, not approximately
    assert recorder.scheduler_state["lr_lambdas"][0] == {"warmup_steps": 2, "total_steps": 8, "start_step": 12,
                                                          "task": 2}


@pytest.mark.parametrize("crash_step", [7, 5], ids=["mid_task", "task_boundary"])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, crash_step):
    """Killed in task 2's second epoch (its checkpoint is mid-task 2) or in its first epoch (the checkpoint is
    task 1's end), resumed from last.ckpt: same vectors, the same lr at every step, the same scheduler state;
    task 1's file is not rewritten."""
    tasks, kwargs = ("digits", "digits_rot90"), {"epochs_per_task": 2, "batches": 2, "warmup_steps": 2}
    whole_lrs, broken_lrs, resumed_lrs = LrRecorder(), LrRecorder(), LrRecorder()
    fit_stream(tmp_path / "whole", tasks=tasks, callbacks=[whole_lrs], **kwargs)
    broken = tmp_path / "broken"
    with pytest.raises(Crash):
        fit_stream(broken, tasks=tasks, callbacks=[CrashAtStep(crash_step), broken_lrs], **kwargs)
    first = broken / "task_vectors" / "digits.safetensors"
    written = first.stat().st_mtime_ns
    assert not (broken / "task_vectors" / "digits_rot90.safetensors").exists()
    fit_stream(broken, tasks=tasks, ckpt_path="last", callbacks=[resumed_lrs], **kwargs)
    assert first.stat().st_mtime_ns == written
    for task in tasks:
        whole = load_task_vector(tmp_path / "whole" / "task_vectors" / f"{task}.safetensors")
        resumed = load_task_vector(broken / "task_vectors" / f"{task}.safetensors")
        assert whole.keys() == resumed.keys()
        for key in whole:
            assert torch.equal(whole[key], resumed[key]), (task, key)
    resumed_from = 2 * (crash_step // 2)  # epoch-end checkpoints: the last one before the crash
    assert resumed_lrs.steps[0][0] == resumed_from
    assert broken_lrs.steps[:resumed_from] + resumed_lrs.steps == whole_lrs.steps
    assert [lr for _, lr in whole_lrs.steps] == expected_lrs(1e-3, 2, [4, 4])
    assert resumed_lrs.scheduler_state == whole_lrs.scheduler_state


def test_too_few_max_epochs_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"trainer.max_epochs=3 .* 2 x 2 = 4; set trainer.max_epochs to 4"):
        fit_stream(tmp_path, max_epochs=3, epochs_per_task=2)


def test_more_max_epochs_stops_after_the_stream(tmp_path):
    recorder = WeightRecorder()
    trainer, _ = fit_stream(tmp_path, max_epochs=7, callbacks=[recorder])
    assert trainer.current_epoch == 2 and len(recorder.ends) == 2


def test_run_dir_name():
    assert run_dir_name("ViT-B-32", ["cars"], None) == "checkpoints/ViT-B-32/cars"
    assert run_dir_name("ViT-B-32", ["cifar100"], 10) == "checkpoints/ViT-B-32/cifar100_10splits"
    assert run_dir_name("hf-hub:org/m", ["a", "b"], None) == "checkpoints/hf-hub-org-m/a+b"
    assert run_dir_name("ViT-L-14", ["cub200"], 20, "independent", "checkpoints/continual/{model}/{tasks}_{stream}") == \
        "checkpoints/continual/ViT-L-14/cub200_20splits_independent"


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="model.stream='parallel' is unknown"):
        FineTuner(stream="parallel")
    with pytest.raises(ValueError, match="epochs_per_task=0"):
        FineTuner(epochs_per_task=0)
    with pytest.raises(ValueError, match=r"model.run_dir='runs/\{task\}' names \{task\}; a run folder pattern may use"):
        FineTuner(run_dir="runs/{task}")


def test_a_data_module_without_a_model_takes_the_modules(tmp_path):
    """From Python too the images get the fine-tuned model's transforms: a data module that names no model
    asks the trainer's module (`weaving fit` links the names in the config instead)."""
    data = TaskStreamDataModule(["digits"], batch_size=8)
    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(FineTuner("weaving-tiny-vit-b"), data)
    assert data.image_model() == ("weaving-tiny-vit-b", None)
    assert TaskStreamDataModule(["digits"], batch_size=8).image_model() == ("weaving-tiny-vit", None)  # on its own


def test_needs_a_task_stream(tmp_path):
    from weaving.data.datamodule import TaskDataModule

    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, limit_train_batches=1, limit_val_batches=0)
    with pytest.raises(ValueError, match="FineTuner needs a task stream"):
        trainer.fit(FineTuner(), TaskDataModule("digits", batch_size=8))


@pytest.mark.parametrize("setting, fused", [(None, None), (True, True), (False, None)])
def test_fused_adamw_switch(setting, fused):
    # None picks the fused kernel only on CUDA; on this CPU module it stays the default implementation
    optimizer = FineTuner(fused_adamw=setting).configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is fused
