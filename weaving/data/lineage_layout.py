"""The task_vectors / TSV / ISO-C data layout: prepared train/val/test folders per dataset.

The published fine-tuned checkpoints of that lineage were trained and scored on these folders; reading the
same folders makes weaving's test sets the published ones. Under the data root:

| task     | prepared layout                                               | test split           |
|----------|---------------------------------------------------------------|----------------------|
| sun397   | sun397/{train,val[,test]}/<letter>_<category>/*.jpg            | test/, else val/     |
| dtd      | dtd/{train,val[,test]}/<texture>/*.jpg                        | test/, else val/     |
| eurosat  | EuroSAT_splits/{train,val,test}/<Class>/*.jpg                 | test/                |
| resisc45 | resisc45/NWPU-RESISC45/<class>/*.jpg + resisc45-{train,val,test}.txt | the test list |

When a dataset has both val/ and test/, "val" is val/; with train/ and val/ only (the usual preparation
of SUN397 and DTD, whose val/ holds the official test split), "test" is val/ and "val" is weaving's
validation split of train/. Class folders are checked against the task's class names, so labels and heads
always agree. The other datasets of the lineage (Cars, GTSRB, MNIST, SVHN) use torchvision's layouts,
which weaving reads already.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset, Subset

from weaving.data.splits import validation_split
from weaving.data.transforms import ToRGB

EUROSAT_FOLDERS = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake")

# task -> (folder under the data root, class folder name -> the task's class name, or None: by position)
LINEAGE_FOLDERS: dict[str, tuple[str, Callable[[str], str] | None]] = {
    "sun397": ("sun397", lambda folder: folder[2:].replace("_", " ")),
    "dtd": ("dtd", lambda folder: folder),
    "eurosat": ("EuroSAT_splits", None),
    "resisc45": ("resisc45", lambda folder: folder.replace("_", " ")),
}


def lineage_root(task: str, root: Path) -> Path | None:
    """The task's prepared folder under `root` when it is there (the lineage layout is then used)."""
    if task not in LINEAGE_FOLDERS:
        return None
    folder = root / LINEAGE_FOLDERS[task][0]
    if task == "resisc45":
        return folder if (folder / "resisc45-train.txt").is_file() else None
    return folder if (folder / "train").is_dir() else None


def _check_classes(task: str, found: list[str], classnames: tuple[str, ...], where: Path) -> None:
    if len(found) != len(classnames):
        raise ValueError(f"{task}: {where} has {len(found)} class folders, expected {len(classnames)}")
    to_name = LINEAGE_FOLDERS[task][1]
    expected = list(EUROSAT_FOLDERS) if to_name is None else list(classnames)
    got = found if to_name is None else [to_name(f) for f in found]
    for position, (have, want) in enumerate(zip(got, expected)):
        if have != want:
            raise ValueError(f"{task}: class folder {found[position]!r} in {where} is not the task's class "
                             f"{want!r} at label {position}; is this the prepared {task} data?")


def _image_folder(task: str, path: Path, classnames: tuple[str, ...], transform: Callable | None) -> Dataset:
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(path), transform=ToRGB(transform))
    _check_classes(task, dataset.classes, classnames, path)
    return dataset


def _resisc45(folder: Path, split: str, classnames: tuple[str, ...], transform: Callable | None) -> Dataset:
    images = folder / "NWPU-RESISC45"
    listing = folder / f"resisc45-{split}.txt"
    if not images.is_dir() or not listing.is_file():
        raise FileNotFoundError(f"resisc45: the prepared layout needs {images} and {listing}")
    dataset = _image_folder("resisc45", images, classnames, transform)
    wanted = {line.strip() for line in listing.read_text().splitlines() if line.strip()}
    indices = [i for i, (path, _) in enumerate(dataset.samples) if Path(path).name in wanted]
    if len(indices) != len(wanted):
        raise ValueError(f"resisc45: {listing} names {len(wanted)} images but {len(indices)} are in {images}")
    return Subset(dataset, indices)


def lineage_dataset(task: str, folder: Path, split: str, classnames: tuple[str, ...],
                    transform: Callable | None) -> Dataset:
    """`split` of `task` from its prepared folder (see the module doc for which folder each split is)."""
    if task == "resisc45":
        if split != "test" and not (folder / "resisc45-val.txt").is_file():
            train, val = validation_split(_resisc45(folder, "train", classnames, transform))
            return train if split == "train" else val
        return _resisc45(folder, split, classnames, transform)
    has_test = (folder / "test").is_dir()
    if split == "test":
        return _image_folder(task, folder / ("test" if has_test else "val"), classnames, transform)
    if has_test and (folder / "val").is_dir():
        return _image_folder(task, folder / split, classnames, transform)
    train, val = validation_split(_image_folder(task, folder / "train", classnames, transform))
    return train if split == "train" else val
