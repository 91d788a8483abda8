"""`weaving fit` progress lines and `validate_seen_tasks` (the sequential model's accuracy matrix)."""

from __future__ import annotations

import json
import logging

import pytest

from weaving.evaluation.setups import continual
from weaving.merging.task_vectors import load_task_vector
from weaving.models import load_clip
from weaving.models.clip import visual_state_dict

from ..evaluation.direct import add_scaled, direct_accuracies
from .conftest import Crash, CrashAtStep, fit_stream



@pytest.fixture
def progress():
    """The lines `rank_zero_info` prints (Lightning's handler writes them to stderr), collected."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_seen_task_matrix_equals_scoring_each_checkpoint(tmp_path, progress):
    fit_stream(tmp_path, tasks=("digits",), splits=3, batches=3, module_kwargs={"validate_seen_tasks": True})
    seen = json.loads((tmp_path / "seen_tasks.json").read_text())
    names = ["digits_part1of3", "digits_part2of3", "digits_part3of3"]
    assert seen["tasks"] == names and seen["task_agnostic"] is True
    setup = continual("digits", 3)
    clip = load_clip("weaving-tiny-vit", None, seed=0)
    pre = visual_state_dict(clip.model)
    for i, name in enumerate(names):  # theta_pre + tau_i is the model after task i
        tau = load_task_vector(tmp_path / "task_vectors" / f"{name}.safetensors")
        accuracy = direct_accuracies(clip, add_scaled(pre, tau), setup.columns)
        assert seen["accuracy_matrix"][i] == [accuracy[n] for n in names], i
    text = "\n".join(progress)
    assert "after task 1/3: accuracy on the seen tasks: digits_part1of3 " in text


def test_progress_lines_and_resume(tmp_path, progress):
    tasks, kwargs = ("digits", "digits_rot90"), {"epochs_per_task": 2, "batches": 2}
    with pytest.raises(Crash):
        fit_stream(tmp_path, tasks=tasks, callbacks=[CrashAtStep(7)], **kwargs)  # step 7 = mid epoch 3 (task 2)
    text = "\n".join(progress)
    assert "task 1/2 digits: 4 steps (2 epochs x 2 batches), from theta_pre" in text
    assert "task 2/2 digits_rot90: 4 steps (2 epochs x 2 batches), from the weights after task 1" in text
    assert f"wrote task vector {tmp_path / 'task_vectors' / 'digits.safetensors'}" in text
    progress.clear()
    fit_stream(tmp_path, tasks=tasks, ckpt_path="last", **kwargs)
    text = "\n".join(progress)
    assert ("resumed at epoch 3: kept tasks 1-1 (digits) and their task vectors; continuing with task 2/2 "
            "digits_rot90 at epoch 2/2 of it") in text
    assert "task 1/2" not in text and "wrote task vector" in text


def test_seen_tasks_of_separate_tasks_use_their_own_heads(tmp_path):
    fit_stream(tmp_path, tasks=("digits", "digits_rot90"), module_kwargs={"validate_seen_tasks": True})
    matrix = json.loads((tmp_path / "seen_tasks.json").read_text())["accuracy_matrix"]
    assert matrix[0][1] is None and all(0.0 <= a <= 1.0 for a in (matrix[0][0], *matrix[1]))
