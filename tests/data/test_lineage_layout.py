"""The task_vectors lineage's prepared train/val/test folders: which folder each split reads, and labels."""

from pathlib import Path

import pytest
from PIL import Image

from weaving.data.lineage_layout import EUROSAT_FOLDERS
from weaving.data.tasks import get_task


def _images(folder: Path, classes, per_class: int, tag: str) -> None:
    for i, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            Image.new("RGB", (4, 4), (i, j, 0)).save(folder / name / f"{tag}_{name}_{j}.png")


def _labels(dataset):
    return [label for _, label in dataset]


def test_eurosat_splits_read_train_val_test_folders(tmp_path):
    base = tmp_path / "EuroSAT_splits"
    _images(base / "train", EUROSAT_FOLDERS, 3, "tr")
    _images(base / "val", EUROSAT_FOLDERS, 1, "va")
    _images(base / "test", EUROSAT_FOLDERS, 2, "te")
    task = get_task("eurosat")
    sizes = {split: len(task.dataset(tmp_path, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 30, "val": 10, "test": 20}
    assert _labels(task.dataset(tmp_path, "test")) == [i for i in range(10) for _ in range(2)]


def test_dtd_with_train_and_val_only_scores_on_val(tmp_path):
    task = get_task("dtd")
    base = tmp_path / "dtd"
    _images(base / "train", task.classnames, 2, "tr")
    _images(base / "val", task.classnames, 1, "va")
    test = task.dataset(tmp_path, "test")
    assert len(test) == task.num_classes
    assert all("/val/" in path for path, _ in test.samples)
    train, val = task.dataset(tmp_path, "train"), task.dataset(tmp_path, "val")
    assert len(train) + len(val) == 2 * task.num_classes and len(val) >= 1  # val is held out of train/
    assert set(train.indices).isdisjoint(val.indices)


def test_sun397_folder_names_map_to_class_names_and_wrong_folders_are_one_line(tmp_path):
    task = get_task("sun397")
    folders = [f"{name[0]}_{name.replace(' ', '_')}" for name in task.classnames]
    _images(tmp_path / "sun397" / "train", folders, 1, "tr")
    _images(tmp_path / "sun397" / "val", folders, 1, "va")
    test = task.dataset(tmp_path, "test")
    assert _labels(test)[:3] == [0, 1, 2] and len(test) == 397
    bad = tmp_path / "bad"
    _images(bad / "sun397" / "train", folders[:-1] + ["z_zzz_not_a_class"], 1, "tr")
    _images(bad / "sun397" / "val", folders[:-1] + ["z_zzz_not_a_class"], 1, "va")
    with pytest.raises(ValueError, match="class folder 'z_zzz_not_a_class'.*prepared sun397"):
        task.dataset(bad, "test")


def test_resisc45_split_lists(tmp_path):
    task = get_task("resisc45")
    folders = [name.replace(" ", "_") for name in task.classnames]
    base = tmp_path / "resisc45"
    _images(base / "NWPU-RESISC45", folders, 3, "img")
    files = sorted(p.name for p in (base / "NWPU-RESISC45").rglob("*.png"))
    (base / "resisc45-train.txt").write_text("\n".join(f for f in files if f.endswith(("_0.png", "_1.png"))))
    (base / "resisc45-test.txt").write_text("\n".join(f for f in files if f.endswith("_2.png")))
    test = task.dataset(tmp_path, "test")
    assert len(test) == 45 and sorted(_labels(test)) == list(range(45))
    assert len(task.dataset(tmp_path, "train")) + len(task.dataset(tmp_path, "val")) == 90
