"""Task registry: a task name -> dataset factory, class names and CLIP prompt templates.

Each task reads its data from `<root>/...` as laid out below (also in docs/datasets.md). torchvision
datasets download themselves with `download=True`; the others are read from the archive as its authors
ship it (extract it under `root`). A missing dataset gives a one-line FileNotFoundError that says where the
data is expected and how to get it.

| task          | source                          | expected under root                           | splits         |
|---------------|---------------------------------|-----------------------------------------------|----------------|
| sun397        | torchvision SUN397 (download)   | SUN397/<letter>/<category>/sun_*.jpg          | 80/20 hold-out |
| cars          | torchvision StanfordCars        | stanford_cars/{devkit,cars_train,cars_test}   | train/test     |
| resisc45      | ImageFolder (manual download)   | NWPU-RESISC45/<class>/*.jpg                   | 80/20 hold-out |
| eurosat       | torchvision EuroSAT (download)  | eurosat/2750/<Class>/*.jpg                    | 80/20 hold-out |
| svhn          | torchvision SVHN (download)     | svhn/{train,test}_32x32.mat                   | train/test     |
| gtsrb         | torchvision GTSRB (download)    | gtsrb/GTSRB/..., gtsrb/GT-final_test.csv      | train/test     |
| mnist         | torchvision MNIST (download)    | MNIST/raw/*                                   | train/test     |
| dtd           | torchvision DTD (download)      | dtd/dtd/{images,labels}                       | train/val/test |
| cifar100      | torchvision CIFAR100 (download) | cifar-100-python/                             | train/test     |
| imagenet_r    | ImageFolder (manual download)   | imagenet-r/<wnid>/*.jpg                       | 80/20 hold-out |
| cub200        | ImageFolder (manual download)   | CUB_200_2011/{images/,images.txt,...}         | official split |
| stanford_cars | the same data as "cars"         | stanford_cars/...                             | train/test     |

"80/20 hold-out": datasets without an official test split get a fixed random 20% test split (seed 0).
SUN397, DTD, EuroSAT and RESISC45 are read from the task_vectors lineage's prepared train/val/test folders
instead when those are under root (`weaving.data.lineage_layout`; the recommended layout: the published
checkpoints' own test sets, while the hold-out may contain images those checkpoints were trained on).
Datasets without a validation split get `splits.validation_split` of their training split (10%, at most
5000 images, seed 0), and "train" is the rest, so validation images are never trained on.
Images are converted to RGB before the transform.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset, Subset

import weaving.data.prompts as prompts
from weaving.data.class_orders import IMAGENET_R_README_NAMES, class_order as order_of_classes
from weaving.data.lineage_layout import lineage_dataset, lineage_root
from weaving.data.splits import ClassSubset, holdout_split, parse_split_name, split_classes, split_name, validation_split
from weaving.data.transforms import ToRGB

SPLITS = ("train", "val", "test")
TEST_FRACTION = 0.2  # hold-out test share for datasets without an official test split
TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")

# A factory builds one split: (root, split, transform, download) -> Dataset of (transformed image, int label).
Factory = Callable[[Path, str, "Callable | None", bool], Dataset]


@dataclass(frozen=True)
class Task:
    """A classification task: its class names (in label order), CLIP templates and dataset factory."""

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    factory: Factory = field(repr=False, compare=False)
    source: str = ""  # where the data comes from (shown in errors and docs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classnames", tuple(self.classnames))
        object.__setattr__(self, "templates", tuple(self.templates))
        if not self.classnames:
            raise ValueError(f"task {self.name!r}: classnames is empty")
        if not self.templates:
            raise ValueError(f"task {self.name!r}: templates is empty")
        for template in self.templates:
            if template.count("{}") != 1:
                raise ValueError(f"task {self.name!r}: template {template!r} must contain exactly one '{{}}'")

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def dataset(
        self, root: str | Path, split: str, transform: Callable | None = None, download: bool = False
    ) -> Dataset:
        """The `split` ("train", "val" or "test") of this task; items are (transform(RGB image), int label)."""
        if split not in SPLITS:
            raise ValueError(f"task {self.name!r}: unknown split {split!r}; use one of: {', '.join(SPLITS)}")
        return self.factory(Path(root).expanduser(), split, transform, download)


TASKS: dict[str, Task] = {}


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Add `task` to TASKS under its name (lowercase; "<name>_part<i>of<n>" is reserved for splits)."""
    if not TASK_NAME.match(task.name):
        raise ValueError(f"task name {task.name!r} must be lowercase letters, digits, '_' or '-'")
    if parse_split_name(task.name) is not None:
        raise ValueError(f"task name {task.name!r} ends in '_part<i>of<n>', which is reserved for class splits")
    if task.name in TASKS and not overwrite:
        raise ValueError(f"task {task.name!r} is already registered; pass overwrite=True to replace it")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task `name`, or part i of n of a task for "<task>_part<i>of<n>" (i is 1-based)."""
    if isinstance(name, Task):
        return name
    if name in TASKS:
        return TASKS[name]
    parsed = parse_split_name(name)
    if parsed is not None and parsed.base in TASKS:
        base, n, i, order = parsed
        if not 1 <= n <= TASKS[base].num_classes or not 0 <= i < n:
            raise ValueError(
                f"task {name!r}: {base} has {TASKS[base].num_classes} classes, so '_part<i>of<n>' needs "
                f"1 <= n <= {TASKS[base].num_classes} and 1 <= i <= n"
            )
        return split_task(TASKS[base], n, i, order)
    known = ", ".join(sorted(TASKS))
    raise ValueError(f"unknown task {name!r}; known tasks: {known} (or '<task>_part<i>of<n>' for class splits, "
                     "optionally with _sorted, _magmax or _seed<k> for the class order)")


@lru_cache(maxsize=8)
def _cached_dataset(base: Task, root: Any, split: str, transform: Callable | None, download: bool) -> Dataset:
    return base.dataset(root, split, transform, download)


def _split_factory(
    base: Task, classes: tuple[int, ...], root: Any, split: str, transform: Callable | None, download: bool
) -> Dataset:
    # The n parts of a task share one loaded base dataset (CIFAR-100 in 50 parts must not load 50 copies).
    try:
        dataset = _cached_dataset(base, root, split, transform, download)
    except TypeError:  # an unhashable transform: build it uncached
        dataset = base.dataset(root, split, transform, download)
    return ClassSubset(dataset, classes)


def split_task(task: Task | str, n: int, i: int, class_order: str | int | None = None) -> Task:
    """Part `i` (0-based) of `n` class-incremental parts of `task` in `class_order` (None: the task's default).

    The part keeps the classes `split_classes(C, n, i, order)`, sorted by label (labels remapped to 0..k-1 in
    that order, which is also the order of its head's classes, as MagMax's per-part head), and the task's
    templates; its datasets hold only the images of those classes. Named by `split_name`.
    """
    base = get_task(task) if isinstance(task, str) else task
    order = order_of_classes(base.name, len(base.classnames), class_order)
    classes = tuple(split_classes(len(base.classnames), n, i, order))
    return replace(
        base,
        name=split_name(base.name, n, i, class_order),
        classnames=tuple(base.classnames[c] for c in classes),
        factory=partial(_split_factory, base, classes),
    )


# --- helpers shared by the dataset factories ------------------------------------------------------------


def _missing(task: str, path: Path, how: str) -> FileNotFoundError:
    return FileNotFoundError(f"{task}: no dataset at {path}; {how}")


_DOWNLOAD = "pass download=True (YAML: data.init_args.download: true) to fetch it with torchvision"


def _torchvision(
    task: str, cls: type, root: Path, where: str, how: str, transform: Callable | None, download: bool, **kwargs: Any
) -> Dataset:
    """Build a torchvision dataset; its "Dataset not found" RuntimeError becomes a one-line FileNotFoundError."""
    try:
        return cls(str(root), transform=ToRGB(transform), download=download, **kwargs)
    except RuntimeError as error:
        message = str(error).lower()
        if "not found" in message or "corrupted" in message:
            raise _missing(task, root / where, how) from None
        raise


def _image_folder(task: str, path: Path, num_classes: int, how: str, transform: Callable | None) -> Dataset:
    """An ImageFolder at `path` with exactly `num_classes` class folders (sorted folder names = label order)."""
    from torchvision.datasets import ImageFolder

    if not path.is_dir():
        raise _missing(task, path, how)
    dataset = ImageFolder(str(path), transform=ToRGB(transform))
    if len(dataset.classes) != num_classes:
        raise ValueError(
            f"{task}: found {len(dataset.classes)} class folders in {path}, expected {num_classes}; "
            "check that the archive was extracted there unchanged"
        )
    return dataset


def _with_validation(
    load: Callable[..., Dataset], root: Path, split: str, transform: Callable | None, download: bool
) -> Dataset:
    """For datasets with train/test only: "val" is validation_split(train) and "train" is the rest."""
    if split == "test":
        return load(root, "test", transform, download)
    train, val = validation_split(load(root, "train", transform, download))
    return train if split == "train" else val


def _with_holdout(
    load_all: Callable[..., Dataset], root: Path, split: str, transform: Callable | None, download: bool
) -> Dataset:
    """For datasets without an official split: a fixed 20% hold-out (seed 0) is "test", the rest "train"."""
    train, test = holdout_split(load_all(root, transform, download), TEST_FRACTION, seed=0)
    return train if split == "train" else test


def _holdout_task(load_all: Callable[..., Dataset]) -> Factory:
    return partial(_with_validation, partial(_with_holdout, load_all))


# --- the dataset loaders ----------------------------------------------------------------------------------


def _load_sun397(root: Path, transform: Callable | None, download: bool) -> Dataset:
    from torchvision.datasets import SUN397

    dataset = _torchvision("sun397", SUN397, root, "SUN397", _DOWNLOAD, transform, download)
    # torchvision lists the files in filesystem order (rglob); sort them so the hold-out split is the same
    # on every machine.
    pairs = sorted(zip(dataset._image_files, dataset._labels))
    dataset._image_files = [path for path, _ in pairs]
    dataset._labels = [label for _, label in pairs]
    return dataset


_CARS_HOW = (
    "Stanford Cars' original URL is offline, so download it by hand (see "
    "https://github.com/pytorch/vision/issues/7545) and place devkit/, cars_train/, cars_test/ and "
    "cars_test_annos_withlabels.mat in that folder"
)


def _load_cars(root: Path, split: str, transform: Callable | None, download: bool) -> Dataset:
    from torchvision.datasets import StanfordCars

    # torchvision's StanfordCars.download() only raises (its URL is dead): never ask it to download.
    return _torchvision("cars", StanfordCars, root, "stanford_cars", _CARS_HOW, transform, False, split=split)


def _load_resisc45(root: Path, transform: Callable | None, download: bool) -> Dataset:
    how = (
        "download NWPU-RESISC45 (https://gcheng-nwpu.github.io/#Datasets; torchvision has no downloader for it) "
        "and extract it into the data root so that NWPU-RESISC45/<class>/<image>.jpg exist"
    )
    return _image_folder("resisc45", root / "NWPU-RESISC45", 45, how, transform)


def _load_eurosat(root: Path, transform: Callable | None, download: bool) -> Dataset:
    from torchvision.datasets import EuroSAT

    return _torchvision("eurosat", EuroSAT, root, "eurosat/2750", _DOWNLOAD, transform, download)


def _load_svhn(root: Path, split: str, transform: Callable | None, download: bool) -> Dataset:
    from torchvision.datasets import SVHN

    # SVHN keeps its .mat files directly in the folder it is given: use <root>/svhn.
    return _torchvision("svhn", SVHN, root / "svhn", f"{split}_32x32.mat", _DOWNLOAD, transform, download, split=split)


def _load_gtsrb(root: Path, split: str, transform: Callable | None, download: bool) -> Dataset:
    from torchvision.datasets import GTSRB

    return _torchvision("gtsrb", GTSRB, root, "gtsrb", _DOWNLOAD, transform, download, split=split)


def _load_mnist(root: Path, split: str, transform: Callable | None, download: bool) -> Dataset:
    from torchvision.datasets import MNIST

    return _torchvision("mnist", MNIST, root, "MNIST/raw", _DOWNLOAD, transform, download, train=split == "train")


def _load_dtd(root: Path, split: str, transform: Callable | None, download: bool) -> Dataset:
    from torchvision.datasets import DTD

    # DTD ships its own train/val/test split; partition 1 is the one everyone reports.
    return _torchvision("dtd", DTD, root, "dtd/dtd", _DOWNLOAD, transform, download, split=split, partition=1)


def _load_cifar100(root: Path, split: str, transform: Callable | None, download: bool) -> Dataset:
    from torchvision.datasets import CIFAR100

    train = split == "train"
    return _torchvision("cifar100", CIFAR100, root, "cifar-100-python", _DOWNLOAD, transform, download, train=train)


def _load_imagenet_r(root: Path, transform: Callable | None, download: bool) -> Dataset:
    how = (
        "download https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar (torchvision has no downloader "
        "for it) and extract it into the data root so that imagenet-r/<wnid>/<image>.jpg exist"
    )
    return _image_folder("imagenet_r", root / "imagenet-r", 200, how, transform)


def _load_cub200(root: Path, split: str, transform: Callable | None, download: bool) -> Dataset:
    """CUB-200-2011 as extracted from CUB_200_2011.tgz, split by its own train_test_split.txt."""
    base = root / "CUB_200_2011"
    how = (
        "download CUB_200_2011.tgz (https://www.vision.caltech.edu/datasets/cub_200_2011/; torchvision has no "
        "downloader for it) and extract it into the data root so that CUB_200_2011/images/<NNN.Name>/, "
        "images.txt and train_test_split.txt exist"
    )
    for needed in (base / "images.txt", base / "train_test_split.txt"):
        if not needed.is_file():
            raise _missing("cub200", needed, how)
    images = _image_folder("cub200", base / "images", 200, how, transform)
    paths = dict(line.split() for line in (base / "images.txt").read_text().splitlines() if line.strip())
    is_train = dict(line.split() for line in (base / "train_test_split.txt").read_text().splitlines() if line.strip())
    wanted = "1" if split == "train" else "0"
    keep_files = {paths[image_id] for image_id, flag in is_train.items() if flag == wanted}
    folder = base / "images"
    indices = [
        j for j, (path, _) in enumerate(images.samples) if Path(path).relative_to(folder).as_posix() in keep_files
    ]
    return Subset(images, indices)


# --- the registry ------------------------------------------------------------------------------------------


def _prefer_lineage(task: str, classnames: tuple[str, ...], factory: Factory) -> Factory:
    """Read the task_vectors lineage's prepared folders when they are under root (weaving.data.lineage_layout)."""

    def load(root: Path, split: str, transform: Callable | None, download: bool) -> Dataset:
        folder = lineage_root(task, root)
        if folder is None:
            return factory(root, split, transform, download)
        return lineage_dataset(task, folder, split, tuple(classnames), transform)

    return load


# MagMax's ImageNet-R head: its class folder names with underscores replaced (src/datasets/imagenetr.py:
# `c.replace('_', ' ')`), "newt", "panda", "timber wolf", in the order of weaving's labels (WordNet ids).
IMAGENET_R_CLASSNAMES = tuple(name.replace("_", " ") for name in IMAGENET_R_README_NAMES)


def _register_builtin_tasks() -> None:
    cars = partial(_with_validation, _load_cars)
    builtin = [
        ("sun397", prompts.SUN397_CLASSNAMES, prompts.SUN397_TEMPLATES, _holdout_task(_load_sun397),
         "torchvision SUN397 (download=True)"),
        ("cars", prompts.CARS_CLASSNAMES, prompts.CARS_TEMPLATES, cars, "torchvision StanfordCars (manual download)"),
        ("resisc45", prompts.RESISC45_CLASSNAMES, prompts.RESISC45_TEMPLATES, _holdout_task(_load_resisc45),
         "NWPU-RESISC45 archive (manual download)"),
        ("eurosat", prompts.EUROSAT_CLASSNAMES, prompts.EUROSAT_TEMPLATES, _holdout_task(_load_eurosat),
         "torchvision EuroSAT (download=True)"),
        ("svhn", prompts.SVHN_CLASSNAMES, prompts.SVHN_TEMPLATES, partial(_with_validation, _load_svhn),
         "torchvision SVHN (download=True)"),
        ("gtsrb", prompts.GTSRB_CLASSNAMES, prompts.GTSRB_TEMPLATES, partial(_with_validation, _load_gtsrb),
         "torchvision GTSRB (download=True)"),
        ("mnist", prompts.MNIST_CLASSNAMES, prompts.MNIST_TEMPLATES, partial(_with_validation, _load_mnist),
         "torchvision MNIST (download=True)"),
        ("dtd", prompts.DTD_CLASSNAMES, prompts.DTD_TEMPLATES, _load_dtd, "torchvision DTD (download=True)"),
        ("cifar100", prompts.CIFAR100_CLASSNAMES, prompts.CIFAR100_TEMPLATES, partial(_with_validation, _load_cifar100),
         "torchvision CIFAR100 (download=True)"),
        ("imagenet_r", IMAGENET_R_CLASSNAMES, prompts.IMAGENET_TEMPLATES, _holdout_task(_load_imagenet_r),
         "ImageNet-R archive (manual download)"),
        ("cub200", prompts.CUB200_CLASSNAMES, prompts.CUB200_TEMPLATES, partial(_with_validation, _load_cub200),
         "CUB-200-2011 archive (manual download)"),
        ("stanford_cars", prompts.CARS_CLASSNAMES, prompts.CARS_TEMPLATES, cars,
         "torchvision StanfordCars (manual download)"),
    ]
    for name, classnames, templates, factory, source in builtin:
        if name in ("sun397", "dtd", "eurosat", "resisc45"):
            factory = _prefer_lineage(name, classnames, factory)
            source += "; or the task_vectors lineage's prepared folders"
        register_task(Task(name, classnames, templates, factory, source))


_register_builtin_tasks()
