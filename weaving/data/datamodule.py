"""LightningDataModules for one task, several tasks, and a task stream (the sequence a fine-tuning run walks).

Their `__init__` signatures are the YAML schema of `weaving fit|validate|test` (LightningCLI), e.g.

    data:
      class_path: weaving.data.TaskStreamDataModule
      init_args: {tasks: [digits], splits: 5, batch_size: 64}

`model` and `pretrained` (whose transforms the images get) are the LightningModule's: `weaving fit|validate`
link them to `model.init_args.model` and `model.init_args.pretrained` (`weaving.lightning_cli`), and a data
module left without a model asks the trainer's module (`image_model()`) when it builds its first dataset.

Images go through the model's own transforms (`weaving.models.image_transforms`): the train transform for
the "train" split (unless augment=False), the eval transform for "val" and "test". The training order is a
fixed function of (seed, epoch), so the same seed gives the same batches, also after resuming a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from weaving.data.class_orders import check_class_order
from weaving.data.splits import parse_split_name, split_name
from weaving.data.tasks import SPLITS, Task, get_task

DEFAULT_MODEL = "weaving-tiny-vit"  # the transforms of a data module that names no model and serves no module


def _check_loader_args(batch_size: int, num_workers: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")


class EpochShuffleSampler(Sampler[int]):
    """A random order of 0..n-1 that depends only on (seed, epoch); Lightning calls set_epoch every epoch.

    Unlike a generator that lives as long as the module, this order is the same whether a run is resumed
    from a checkpoint or not, because nothing but the epoch number carries over.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _TaskData(pl.LightningDataModule):
    """Shared machinery: transforms, cached datasets per (task, split), and dataloaders."""

    def __init__(
        self,
        root: str,
        model: str | None,
        pretrained: str | None,
        batch_size: int,
        num_workers: int,
        download: bool,
        seed: int,
        shuffle: bool = True,
        augment: bool = True,
    ) -> None:
        super().__init__()
        _check_loader_args(batch_size, num_workers)
        self.root = Path(root).expanduser()
        self.model = model
        self.pretrained = pretrained
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.download = download
        self.seed = seed
        self.shuffle = shuffle
        self.augment = augment
        self._transforms: tuple[Callable, Callable] | None = None
        self._datasets: dict[tuple[str, str], Dataset] = {}

    def image_model(self) -> tuple[str, str | None]:
        """(model, pretrained) whose transforms the images get: this module's own; when it names no model,
        those of the LightningModule it serves (`image_model()` of a FineTuner or a comparison module), or
        without one (a data module used on its own) the offline tiny CLIP, `DEFAULT_MODEL`."""
        if self.model is not None:
            return self.model, self.pretrained
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        if callable(getattr(module, "image_model", None)):
            return module.image_model()
        return DEFAULT_MODEL, self.pretrained

    def transforms(self) -> tuple[Callable, Callable]:
        """(train, eval) transforms of `image_model()`, built once."""
        if self._transforms is None:
            from weaving.models import image_transforms

            self._transforms = image_transforms(*self.image_model())
        return self._transforms

    def dataset(self, task: Task, split: str) -> Dataset:
        """The `split` of `task` with the model's transform for that split (cached)."""
        key = (task.name, split)
        if key not in self._datasets:
            train_transform, eval_transform = self.transforms()
            transform = train_transform if split == "train" and self.augment else eval_transform
            self._datasets[key] = task.dataset(self.root, split, transform, download=False)
        return self._datasets[key]

    def _download(self, tasks: list[Task]) -> None:
        """Fetch every split once (rank 0 only, from prepare_data) when download=True."""
        if not self.download:
            return
        seen: set[str] = set()
        for task in tasks:
            base = parse_split_name(task.name)
            name = base[0] if base is not None else task.name
            if name in seen:
                continue
            seen.add(name)
            for split in ("train", "test"):
                get_task(name).dataset(self.root, split, None, download=True)

    def loader(self, dataset: Dataset, *, train: bool) -> DataLoader:
        """A DataLoader over `dataset`; the train loader follows `shuffle` (seeded by (seed, epoch))."""
        sampler: Sampler | None = None
        if train and self.shuffle:
            sampler = EpochShuffleSampler(len(dataset), self.seed)
        elif train and _distributed():
            # Lightning would shuffle any other training sampler with its DistributedSampler; hand it one that
            # keeps the order (rank r takes items r, r + world, ...), so shuffle=False holds under DDP too.
            sampler = DistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            # A fresh seeded generator per loader: iterating never draws from the global RNG.
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )


class TaskDataModule(_TaskData):
    """One task: train / val / test dataloaders over its splits."""

    def __init__(
        self,
        task: str,
        root: str = "data",
        model: str | None = None,
        pretrained: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        download: bool = False,
        seed: int = 0,
        shuffle: bool = True,
        augment: bool = True,
    ) -> None:
        """
        Args:
            task: a registered task name (e.g. "eurosat", "digits") or a class split ("cifar100_part1of10").
            root: folder that holds the datasets (see docs/datasets.md for each task's layout).
            model: open_clip model name whose image transforms are used; None: the LightningModule's
                (`weaving fit|validate` link it to model.init_args.model), or on its own DEFAULT_MODEL.
            pretrained: the model's pretrained tag (it can change the normalization), or None; linked to
                model.init_args.pretrained like `model`.
            batch_size: images per batch.
            num_workers: DataLoader worker processes (0 = load in the main process).
            download: fetch torchvision datasets that are missing (in prepare_data).
            seed: seed of the training order (a fixed function of seed and epoch).
            shuffle: shuffle the training split (False: dataset order, e.g. for exact multi-device checks).
            augment: use the model's train transform for training (False: the eval transform, no random crops).
        """
        super().__init__(root, model, pretrained, batch_size, num_workers, download, seed, shuffle, augment)
        self.task = get_task(task)
        self.task_names = [self.task.name]

    def prepare_data(self) -> None:
        self._download([self.task])

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.dataset(self.task, "train"), train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.dataset(self.task, "val"), train=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.dataset(self.task, "test"), train=False)


class MultiTaskDataModule(_TaskData):
    """Several tasks evaluated side by side: one validation / test dataloader per task, in order."""

    def __init__(
        self,
        tasks: list[str],
        root: str = "data",
        model: str | None = None,
        pretrained: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        download: bool = False,
        eval_split: str = "test",
        seed: int = 0,
        decoded_cache: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        """
        Args:
            tasks: registered task names (or class splits), one dataloader each, in this order.
            root: folder that holds the datasets (see docs/datasets.md).
            model: open_clip model name whose image transforms are used; None: the LightningModule's
                (`weaving fit|validate` link it to model.init_args.model), or on its own DEFAULT_MODEL.
            pretrained: the model's pretrained tag (it can change the normalization), or None; linked to
                model.init_args.pretrained like `model`.
            batch_size: images per batch.
            num_workers: DataLoader worker processes (0 = load in the main process).
            download: fetch torchvision datasets that are missing (in prepare_data).
            eval_split: the split val_dataloader() serves ("val" for model selection, "test" to report).
            seed: seed of the loaders' generators (evaluation is not shuffled).
            decoded_cache: read the evaluation splits from the decoded uint8 cache (`weaving.data.cache`;
                decoded once, on first use, then memory-mapped), in `cache_dir` (default $WEAVING_CACHE_DIR
                or ~/.cache/weaving/test_sets).
        """
        super().__init__(root, model, pretrained, batch_size, num_workers, download, seed)
        self.decoded_cache, self.cache_dir = decoded_cache, cache_dir
        if not tasks:
            raise ValueError("tasks is empty: list at least one task name")
        if eval_split not in SPLITS:
            raise ValueError(f"eval_split {eval_split!r} is not a split; use one of: {', '.join(SPLITS)}")
        self.tasks = [get_task(name) for name in tasks]
        self.task_names = [task.name for task in self.tasks]
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"tasks lists a task twice: {self.task_names}")
        self.eval_split = eval_split

    def prepare_data(self) -> None:
        self._download(self.tasks)

    def eval_dataset(self, task: Task, split: str) -> Dataset:
        """The evaluation split, decoded once into the cache when `decoded_cache` is set."""
        if not self.decoded_cache:
            return self.dataset(task, split)
        from weaving.data.cache import DecodedDataset, DecodedTestSet, open_test_set
        from weaving.models.clip import input_size

        # the key's input size is the model's (height, width), as the evaluator gives it: one entry per test set
        test_set = open_test_set(task.name, root=self.root, split=split, transform=self.transforms()[1],
                                 image_size=input_size(*self.image_model()), cache_dir=self.cache_dir,
                                 num_workers=self.num_workers)
        return DecodedDataset(test_set) if isinstance(test_set, DecodedTestSet) else test_set.dataset

    def val_dataloader(self) -> list[DataLoader]:
        return [self.loader(self.eval_dataset(task, self.eval_split), train=False) for task in self.tasks]

    def test_dataloader(self) -> list[DataLoader]:
        return [self.loader(self.eval_dataset(task, "test"), train=False) for task in self.tasks]


class TaskStreamDataModule(_TaskData):
    """The sequence of tasks a fine-tuning run walks through; the dataloaders serve `current_task`.

    With `splits=n`, `tasks` holds one task and the stream is its n class-incremental parts
    ("<task>_part1of<n>" .. "<task>_part<n>of<n>"); `base_task` is then the full task, for task-agnostic
    evaluation over all classes. Set `current_task` and reload the dataloaders (the trainer's
    `reload_dataloaders_every_n_epochs=1`, or a new `fit`) to move to the next task.
    """

    def __init__(
        self,
        tasks: list[str],
        root: str = "data",
        model: str | None = None,
        pretrained: str | None = None,
        splits: int | None = None,
        class_order: str | int | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        download: bool = False,
        seed: int = 0,
        shuffle: bool = True,
        augment: bool = True,
    ) -> None:
        """
        Args:
            tasks: the tasks in training order, or exactly one task when `splits` is set.
            root: folder that holds the datasets (see docs/datasets.md).
            model: open_clip model name whose image transforms are used; None: the LightningModule's
                (`weaving fit|validate` link it to model.init_args.model), or on its own DEFAULT_MODEL.
            pretrained: the model's pretrained tag (it can change the normalization), or None; linked to
                model.init_args.pretrained like `model`.
            splits: split the single task into this many class-incremental parts (None: no split).
            class_order: class order of the split: "sorted", "magmax" (MagMax's published order) or a seed;
                None: the task's default (magmax for cifar100, imagenet_r, cub200, cars; sorted otherwise).
            batch_size: images per batch.
            num_workers: DataLoader worker processes (0 = load in the main process).
            download: fetch torchvision datasets that are missing (in prepare_data).
            seed: seed of the training order (a fixed function of seed and epoch).
            shuffle: shuffle the training split (False: dataset order, e.g. for exact multi-device checks).
            augment: use the model's train transform for training (False: the eval transform, no random crops).
        """
        super().__init__(root, model, pretrained, batch_size, num_workers, download, seed, shuffle, augment)
        if not tasks:
            raise ValueError("tasks is empty: list at least one task name")
        self.splits = splits
        self.class_order = check_class_order(class_order)
        if splits is None:
            if class_order is not None:
                raise ValueError(f"class_order={class_order!r} needs splits (the number of class-incremental parts)")
            self.base_task: Task | None = None
            self.task_names = [get_task(name).name for name in tasks]
        else:
            if len(tasks) != 1:
                raise ValueError(f"splits={splits} needs exactly one task in tasks, got {len(tasks)}: {list(tasks)}")
            self.base_task = get_task(tasks[0])
            if not 1 <= splits <= self.base_task.num_classes:
                raise ValueError(
                    f"splits={splits} is invalid for {self.base_task.name} with {self.base_task.num_classes} "
                    f"classes: use 1 <= splits <= {self.base_task.num_classes}"
                )
            self.task_names = [split_name(self.base_task.name, splits, i, class_order) for i in range(splits)]
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"tasks lists a task twice: {self.task_names}")
        self._tasks = [get_task(name) for name in self.task_names]
        self._current_task = 0

    @property
    def num_tasks(self) -> int:
        return len(self._tasks)

    @property
    def current_task(self) -> int:
        """Index (0-based) of the task the dataloaders serve."""
        return self._current_task

    @current_task.setter
    def current_task(self, index: int) -> None:
        if not 0 <= index < self.num_tasks:
            raise ValueError(
                f"current_task={index} is out of range: the stream has {self.num_tasks} tasks (0..{self.num_tasks - 1})"
            )
        self._current_task = index

    def get_task(self, index: int) -> Task:
        """The `index`-th task of the stream (0-based)."""
        if not 0 <= index < self.num_tasks:
            raise ValueError(
                f"task index {index} is out of range: the stream has {self.num_tasks} tasks (0..{self.num_tasks - 1})"
            )
        return self._tasks[index]

    def prepare_data(self) -> None:
        self._download(self._tasks)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.dataset(self.get_task(self.current_task), "train"), train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.dataset(self.get_task(self.current_task), "val"), train=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.dataset(self.get_task(self.current_task), "test"), train=False)
