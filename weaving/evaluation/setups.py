"""The three evaluation setups of the paper, as plain data: what is merged and what each merge is scored on.

- multi-task: merge every task vector once; score each task with its own head.
- continual (class-incremental): merge the task vectors of the n parts of one task; score task-agnostically,
  i.e. with the head over ALL classes on the full test set, and report the accuracy on each part's classes.
- domain generalization: for every task t, merge all task vectors but t's and score on t (leave one out).

A `Setup` is independent of models and data loaders, so it is cheap to build and easy to test; the
evaluator (`weaving.evaluation.evaluate`) and the comparison runner (`weaving.evaluation.compare`) consume it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from weaving.evaluation.search_spaces import check_setup


@dataclass(frozen=True)
class Column:
    """One column of a results table: a task's test set scored with that task's head.

    `classes` restricts the score to test samples whose label is in it (a continual part scored with the
    head over all classes); None scores every sample.
    """

    name: str
    task: str
    classes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class MergeJob:
    """One merged model: the task vectors it merges and the columns it is scored on."""

    task_vectors: tuple[str, ...]
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Setup:
    """An evaluation setup: the table's columns, the merges that fill them, and the reference models.

    `individual` maps each column to the task vector whose fine-tuned model (theta_pre + tau) is that
    column's "individual" reference. `mean` is "columns" (mean over columns) or "samples" (correct over
    total across columns: for continual, the task-agnostic accuracy on the full test set).
    """

    name: str
    columns: tuple[Column, ...]
    jobs: tuple[MergeJob, ...]
    individual: Mapping[str, str]
    mean: str = "columns"

    @property
    def tasks(self) -> list[str]:
        """Column names, in table order."""
        return [column.name for column in self.columns]

    @property
    def eval_tasks(self) -> list[str]:
        """Distinct tasks whose test sets and heads are needed, in first-use order."""
        return list(dict.fromkeys(column.task for column in self.columns))

    @property
    def task_vectors(self) -> list[str]:
        """Distinct task vector names the setup reads, in first-use order."""
        names = [name for job in self.jobs for name in job.task_vectors]
        return list(dict.fromkeys(names + list(self.individual.values())))


def _check_names(tasks: Sequence[str], what: str, minimum: int) -> tuple[str, ...]:
    names = tuple(tasks)
    if len(names) < minimum:
        raise ValueError(f"{what} needs at least {minimum} task(s), got {list(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: task names repeat in {list(names)}; give each task once")
    return names


def multi_task(tasks: Sequence[str]) -> Setup:
    """Merge all task vectors once and score every task with its own head."""
    names = _check_names(tasks, "multi-task setup", 1)
    columns = tuple(Column(name, name) for name in names)
    return Setup("multi_task", columns, (MergeJob(names, columns),), {name: name for name in names})


def domain_generalization(tasks: Sequence[str]) -> Setup:
    """For each task, merge the task vectors of all the others and score on the held-out one."""
    names = _check_names(tasks, "domain generalization setup", 2)
    columns = tuple(Column(name, name) for name in names)
    jobs = tuple(
        MergeJob(tuple(other for other in names if other != column.name), (column,)) for column in columns
    )
    return Setup("domain_generalization", columns, jobs, {name: name for name in names})


def part_classes(task: str, part: str) -> tuple[int, ...]:
    """Labels (in `task`'s label space) of the classes of `part`, a class-incremental split of `task`.

    Matched by class name so it holds for any fixed class order the split uses.
    """
    from weaving.data.tasks import get_task

    if not part.startswith(f"{task}_part"):
        raise ValueError(f"task {part!r} is not a class-incremental part of {task!r}; expected '{task}_part<i>of<n>'")
    full, sub = get_task(task).classnames, get_task(part).classnames
    missing = [name for name in sub if name not in full]
    if missing:
        raise ValueError(f"task {part!r} has classes {missing} that task {task!r} lacks")
    return tuple(full.index(name) for name in sub)


def split_names(task: str, splits: int) -> list[str]:
    """Names of the `splits` class-incremental parts of `task` ("<task>_part<i>of<n>", i from 1)."""
    if splits < 1:
        raise ValueError(f"splits must be a positive number of parts, got {splits}")
    return [f"{task}_part{i}of{splits}" for i in range(1, splits + 1)]


def continual(task: str, splits: int | None = None, parts: Sequence[str] | None = None) -> Setup:
    """Merge the task vectors of `task`'s class-incremental parts; score task-agnostically.

    Give `splits` (parts named "<task>_part<i>of<n>") or the part names themselves. Each column is one
    part's test images scored with the head over all of `task`'s classes; the mean is over samples, which
    is the task-agnostic accuracy on the full test set.
    """
    if parts is None:
        if splits is None:
            raise ValueError("continual setup: give splits (number of parts) or the part names")
        parts = split_names(task, splits)
    names = _check_names(parts, "continual setup", 1)
    columns = tuple(Column(name, task, part_classes(task, name)) for name in names)
    return Setup("continual", columns, (MergeJob(names, columns),), {name: name for name in names}, mean="samples")


def make_setup(setup: str, tasks: Sequence[str], *, splits: int | None = None) -> Setup:
    """Build a setup by name. For "continual", `tasks` is [task] with `splits`, or [task, part1, part2, ...]."""
    check_setup(setup)
    if setup == "multi_task":
        return multi_task(tasks)
    if setup == "domain_generalization":
        return domain_generalization(tasks)
    if not tasks:
        raise ValueError("continual setup: tasks must start with the task whose parts are merged")
    return continual(tasks[0], splits=splits, parts=list(tasks[1:]) or None)
