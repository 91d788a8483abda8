"""Tasks and data: the task registry, embedded digits tasks, class-incremental splits and DataModules.

`weaving.data` itself does not import Lightning; the DataModules load on first access.
"""

from weaving.data.splits import ClassSubset, dataset_targets, holdout_split, split_classes, validation_split
from weaving.data.tasks import SPLITS, TASKS, Task, get_task, register_task, split_task

import weaving.data.digits  # noqa: E402,F401  (registers the embedded digits tasks)

_DATAMODULES = ("TaskDataModule", "MultiTaskDataModule", "TaskStreamDataModule")

__all__ = [
    "SPLITS",
    "TASKS",
    "ClassSubset",
    "Task",
    "dataset_targets",
    "get_task",
    "holdout_split",
    "register_task",
    "split_classes",
    "split_task",
    "validation_split",
    *_DATAMODULES,
]


def __getattr__(name: str):
    if name in _DATAMODULES:
        import weaving.data.datamodule as datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'weaving.data' has no attribute {name!r}")
