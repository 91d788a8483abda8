"""The three evaluation setups of the paper and the mean rule, defined once.

- multi-task: merge every task vector once; score each task with its own head; mean over tasks.
- continual (class-incremental): merge the task vectors of the n parts of one task; score task-agnostically,
  i.e. with the head over ALL classes on the full test set, and report the accuracy on each part's classes;
  mean over samples (the task-agnostic accuracy on the full test set).
- domain generalization: for every task t, merge all task vectors but t's and score on t (leave one out);
  mean over held-out tasks.

A `Setup` is plain data, independent of models and data loaders. The one scoring path,
`weaving.evaluation.comparison.ComparisonModule` (and its presets `MergeModule`, `CheckpointModule`), builds
its setup with `setup_for_loaders` from the evaluated tasks and the task vectors it was given, and averages
with `Setup.mean_of` (the `mean_accuracy` rule below).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from weaving.merging.search_space import check_setup

MEAN_RULES = ("columns", "samples")


@dataclass(frozen=True)
class Tally:
    """Correct predictions and number of samples of one column."""

    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def mean_accuracy(tallies: Mapping[str, Tally], rule: str = "columns") -> float:
    """Mean over columns ("columns") or correct over total across columns ("samples")."""
    if not tallies:
        raise ValueError("no columns to average")
    if rule == "samples":
        total = sum(t.total for t in tallies.values())
        return sum(t.correct for t in tallies.values()) / total if total else float("nan")
    if rule != "columns":
        raise ValueError(f"unknown mean rule {rule!r}; expected one of: {', '.join(MEAN_RULES)}")
    return sum(t.accuracy for t in tallies.values()) / len(tallies)


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
    column's "individual" reference. `mean` is the rule of `mean_accuracy`: "columns" (mean over columns)
    or "samples" (correct over total across columns: for continual, the task-agnostic accuracy on the full
    test set). `extra` columns are scored by the same jobs and reported, but not averaged (continual: the
    full test set of the task, whose accuracy equals the samples mean when the parts cover every class).
    """

    name: str
    columns: tuple[Column, ...]
    jobs: tuple[MergeJob, ...]
    individual: Mapping[str, str]
    mean: str = "columns"
    extra: tuple[Column, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.mean not in MEAN_RULES:
            raise ValueError(f"unknown mean rule {self.mean!r}; expected one of: {', '.join(MEAN_RULES)}")

    @property
    def tasks(self) -> list[str]:
        """Column names, in table order."""
        return [column.name for column in self.columns]

    @property
    def eval_tasks(self) -> list[str]:
        """Distinct tasks whose test sets and heads are needed, in first-use order."""
        return list(dict.fromkeys(column.task for column in (*self.columns, *self.extra)))

    @property
    def task_vectors(self) -> list[str]:
        """Distinct task vector names the setup reads, in first-use order."""
        names = [name for job in self.jobs for name in job.task_vectors]
        return list(dict.fromkeys(names + list(self.individual.values())))

    def mean_of(self, tallies: Mapping[str, Tally]) -> float:
        """The setup's mean over its (non-extra) columns, by its rule."""
        missing = [name for name in self.tasks if name not in tallies]
        if missing:
            raise ValueError(f"no tally for columns {missing} of the {self.name} setup")
        return mean_accuracy({name: tallies[name] for name in self.tasks}, self.mean)


def _check_names(tasks: Sequence[str], what: str, minimum: int) -> tuple[str, ...]:
    if isinstance(tasks, str):
        raise ValueError(f"{what}: give a list of task names, not the string {tasks!r}")
    names = tuple(tasks)
    if len(names) < minimum:
        raise ValueError(f"{what} needs at least {minimum} task(s), got {list(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: task names repeat in {list(names)}; give each task once")
    return names


def _individual(columns: Sequence[Column], vectors: Sequence[str]) -> dict[str, str]:
    """Each column's own task vector (same name), where there is one."""
    return {column.name: column.name for column in columns if column.name in vectors}


def multi_task(tasks: Sequence[str], task_vectors: Sequence[str] | None = None) -> Setup:
    """Merge all task vectors (default: those of `tasks`) once and score every task with its own head."""
    names = _check_names(tasks, "multi-task setup", 1)
    vectors = names if task_vectors is None else _check_names(task_vectors, "multi-task setup", 1)
    columns = tuple(Column(name, name) for name in names)
    return Setup("multi_task", columns, (MergeJob(vectors, columns),), _individual(columns, vectors))


def domain_generalization(tasks: Sequence[str], task_vectors: Sequence[str] | None = None) -> Setup:
    """For each task, merge the task vectors of all the others (default: of `tasks`) and score on the held-out one."""
    names = _check_names(tasks, "domain generalization setup", 1 if task_vectors is not None else 2)
    vectors = names if task_vectors is None else _check_names(task_vectors, "domain generalization setup", 2)
    missing = [name for name in names if name not in vectors]
    if missing:
        raise ValueError(f"domain generalization holds out each evaluated task, but there are no task vectors "
                         f"for {missing}; available: {', '.join(vectors)}")
    columns = tuple(Column(name, name) for name in names)
    jobs = tuple(MergeJob(tuple(v for v in vectors if v != column.name), (column,)) for column in columns)
    return Setup("domain_generalization", columns, jobs, _individual(columns, vectors))


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


def continual(task: str, splits: int | None = None, parts: Sequence[str] | None = None,
              task_vectors: Sequence[str] | None = None) -> Setup:
    """Merge the task vectors of `task`'s class-incremental parts; score task-agnostically.

    Give `splits` (parts named "<task>_part<i>of<n>") or the part names themselves. Each column is one
    part's test images scored with the head over all of `task`'s classes; the mean is over samples, which
    is the task-agnostic accuracy on the full test set (also reported as the extra column `task`). The
    merge uses `task_vectors` when given (default: the parts).
    """
    if parts is None:
        if splits is None:
            raise ValueError("continual setup: give splits (number of parts) or the part names")
        parts = split_names(task, splits)
    return _continual({task: list(parts)}, task_vectors)


def _continual(parts_of: Mapping[str, Sequence[str]], task_vectors: Sequence[str] | None) -> Setup:
    columns, extra = [], []
    for task, parts in parts_of.items():
        names = _check_names(parts, "continual setup", 1)
        columns += [Column(name, task, part_classes(task, name)) for name in names]
        extra.append(Column(task, task))
    _check_names([c.name for c in columns], "continual setup", 1)
    vectors = tuple(c.name for c in columns) if task_vectors is None else _check_names(task_vectors, "continual setup", 1)
    # No "individual" reference: each part's own model is a different cumulative checkpoint, so a row of
    # them would average models that are not one model. The continual references are zero-shot and the
    # sequential model theta_pre + tau_T (`sequential_stages`).
    return Setup("continual", tuple(columns), (MergeJob(vectors, tuple(columns) + tuple(extra)),),
                 {}, mean="samples", extra=tuple(extra))


def incremental_stages(setup: Setup) -> list[Setup]:
    """The continual setup after each task, as MagMax evaluates it: stage i (0-based) merges the task
    vectors 1..i+1 of the setup's one job and scores every column. The last stage is `setup` itself."""
    if setup.name != "continual" or len(setup.jobs) != 1:
        raise ValueError(f"incremental stages need a continual setup with one merge job, got {setup.name!r} "
                         f"with {len(setup.jobs)} jobs")
    job = setup.jobs[0]
    stages = [Setup(setup.name, setup.columns, (MergeJob(job.task_vectors[: i + 1], job.columns),), {},
                    setup.mean, setup.extra) for i in range(len(job.task_vectors) - 1)]
    return [*stages, setup]


def make_setup(setup: str, tasks: Sequence[str], *, splits: int | None = None,
               task_vectors: Sequence[str] | None = None) -> Setup:
    """Build a setup by name. For "continual", `tasks` is [task] with `splits`, or [task, part1, part2, ...].

    `task_vectors` (default: the tasks, or the parts) are the names merged; see each setup's function.
    """
    check_setup(setup)
    if setup == "multi_task":
        return multi_task(tasks, task_vectors)
    if setup == "domain_generalization":
        return domain_generalization(tasks, task_vectors)
    if isinstance(tasks, str) or not tasks:
        raise ValueError("continual setup: tasks must start with the task whose parts are merged")
    return continual(tasks[0], splits=splits, parts=list(tasks[1:]) or None, task_vectors=task_vectors)


def setup_for_loaders(setup: str, loader_tasks: Sequence[str], task_vectors: Sequence[str]) -> Setup:
    """The setup `weaving validate` scores: one dataloader per task of `loader_tasks`, all `task_vectors` given.

    multi_task and domain_generalization score each loader's task; continual expects full tasks as
    loaders and their parts ("<task>_part<i>of<n>") among the task vectors, and scores each part.
    """
    check_setup(setup)
    vectors = list(task_vectors)
    if setup == "multi_task":
        return multi_task(loader_tasks, vectors)
    if setup == "domain_generalization":
        if len(vectors) < 2:
            raise ValueError("domain generalization needs at least two task vectors (one is held out)")
        return domain_generalization(loader_tasks, vectors)
    parts_of = {}
    for task in _check_names(loader_tasks, "continual setup", 1):
        parts_of[task] = [v for v in vectors if v.startswith(f"{task}_part")]
        if not parts_of[task]:
            raise ValueError(f"continual setup: no task vectors named '{task}_part<i>of<n>' among {vectors}")
    return _continual(parts_of, vectors)
