"""DataModules on the embedded digits tasks with the tiny offline model's transforms."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser

from weaving.data import MultiTaskDataModule, TaskDataModule, TaskStreamDataModule


def labels_of(loader) -> list[int]:
    return [int(y) for _, ys in loader for y in ys]


def test_task_datamodule_serves_transformed_batches():
    dm = TaskDataModule("digits", batch_size=32)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and int(labels.max()) < 10
    assert len(dm.val_dataloader().dataset) == 180 and len(dm.test_dataloader().dataset) == 360
    assert dm.task.name == "digits" and dm.task_names == ["digits"]


def order_of(loader) -> list[int]:
    """The labels a pass over the train loader yields, from its sampler and the dataset's labels, without
    decoding the images (test_shuffling_is_seeded checks that real passes yield exactly these)."""
    return [loader.dataset.targets[i] for i in loader.sampler]


def test_shuffling_is_seeded():
    first = order_of(TaskDataModule("digits", batch_size=64, seed=3).train_dataloader())
    second = order_of(TaskDataModule("digits", batch_size=64, seed=3).train_dataloader())
    other = order_of(TaskDataModule("digits", batch_size=64, seed=4).train_dataloader())
    assert first == second and first != other
    dm = TaskDataModule("digits", batch_size=64, seed=3)
    loader = dm.train_dataloader()
    epoch0 = labels_of(loader)  # a real pass: images and labels, in the sampler's order
    assert order_of(loader) == epoch0 == first  # the order is a function of (seed, epoch) only
    loader.sampler.set_epoch(1)  # Lightning calls this every epoch
    epoch1 = labels_of(loader)
    assert order_of(loader) == epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0)
    fresh = dm.train_dataloader()  # a reloaded loader (or a resumed run) at epoch 1 repeats that order
    fresh.sampler.set_epoch(1)
    assert order_of(fresh) == epoch1
    assert labels_of(dm.val_dataloader()) == labels_of(dm.val_dataloader())  # evaluation is not shuffled


def test_shuffle_and_augment_can_be_switched_off():
    dm = TaskStreamDataModule(["digits"], splits=2, batch_size=64, shuffle=False, augment=False)
    loader = dm.train_dataloader()
    assert labels_of(loader) == dm.dataset(dm.get_task(0), "train").targets  # dataset order
    train_image = loader.dataset[0][0]
    dm.current_task = 0
    assert torch.equal(train_image, loader.dataset[0][0])  # no random crops: the same tensor every time
    augmented = TaskDataModule("digits", augment=True).dataset(dm.get_task(0), "train")
    assert "RandomResizedCrop" in repr(augmented.dataset.transform)
    assert "RandomResizedCrop" not in repr(loader.dataset.dataset.transform)


def test_loader_settings():
    dm = TaskDataModule("digits", num_workers=1)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1
    assert loader.pin_memory == torch.cuda.is_available()
    assert not TaskDataModule("digits").val_dataloader().persistent_workers


def test_multitask_gives_one_loader_per_task_in_order():
    dm = MultiTaskDataModule(["digits_rot90", "digits", "digits_part2of2"], batch_size=128)
    assert dm.task_names == ["digits_rot90", "digits", "digits_part2of2"]
    loaders = dm.val_dataloader()
    assert [len(loader.dataset) for loader in loaders][:2] == [360, 360]
    assert set(labels_of(loaders[2])) == {0, 1, 2, 3, 4}
    val = MultiTaskDataModule(["digits"], eval_split="val").val_dataloader()
    assert len(val) == 1 and len(val[0].dataset) == 180
    assert len(dm.test_dataloader()) == 3


def test_multitask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="eval_split 'dev'"):
        MultiTaskDataModule(["digits"], eval_split="dev")
    with pytest.raises(ValueError, match="empty"):
        MultiTaskDataModule([])
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        MultiTaskDataModule(["digits", "nope"])
    with pytest.raises(ValueError, match="batch_size"):
        MultiTaskDataModule(["digits"], batch_size=0)


def test_stream_over_class_splits():
    dm = TaskStreamDataModule(["digits"], splits=3, batch_size=256)
    assert dm.task_names == ["digits_part1of3", "digits_part2of3", "digits_part3of3"]
    assert dm.num_tasks == 3 and dm.base_task.name == "digits" and dm.base_task.num_classes == 10
    seen = []
    for i in range(dm.num_tasks):
        dm.current_task = i
        task = dm.get_task(i)
        train = labels_of(dm.train_dataloader())
        assert set(train) == set(range(task.num_classes))  # labels remapped to 0..k-1
        assert set(labels_of(dm.val_dataloader())) == set(range(task.num_classes))
        seen.extend(task.classnames)
    assert seen == list(dm.base_task.classnames)


def test_stream_over_tasks():
    dm = TaskStreamDataModule(["digits", "digits_inverted"], batch_size=64)
    assert dm.base_task is None and dm.task_names == ["digits", "digits_inverted"]
    dm.current_task = 1
    assert dm.get_task(dm.current_task).name == "digits_inverted"
    first = dm.train_dataloader().dataset[0][0]
    dm.current_task = 0
    assert not torch.equal(first, dm.train_dataloader().dataset[0][0])


def test_stream_rejects_bad_arguments():
    with pytest.raises(ValueError, match="exactly one task"):
        TaskStreamDataModule(["digits", "digits_rot90"], splits=2)
    with pytest.raises(ValueError, match="splits=11"):
        TaskStreamDataModule(["digits"], splits=11)
    with pytest.raises(ValueError, match="splits=0"):
        TaskStreamDataModule(["digits"], splits=0)
    dm = TaskStreamDataModule(["digits"], splits=2)
    with pytest.raises(ValueError, match="current_task=2"):
        dm.current_task = 2
    with pytest.raises(ValueError, match="index -1"):
        dm.get_task(-1)


def test_signatures_are_a_yaml_schema():
    parser = ArgumentParser()
    parser.add_class_arguments(TaskStreamDataModule, "data")
    config = parser.parse_string("data:\n  tasks: [digits]\n  splits: 5\n  batch_size: 16\n")
    assert config.data.splits == 5 and config.data.batch_size == 16 and config.data.model is None
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in 4.49
    init = instantiate(config)
    assert init.data.task_names[-1] == "digits_part5of5"
    for cls, key, value in ((TaskDataModule, "task", "digits_rot90"), (MultiTaskDataModule, "tasks", ["digits", "digits_rot90"])):
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "data")
        config = parser.parse_string(f"data:\n  {key}: {value}\n  batch_size: 8\n")
        assert config.data[key] == value and config.data.batch_size == 8, cls
        with pytest.raises(Exception, match="batch_size"):  # a typed schema: a wrong type is refused
            parser.parse_string(f"data:\n  {key}: {value}\n  batch_size: many\n")


def test_decoded_test_sets_share_one_cache_entry_with_the_evaluator(tmp_path):
    """The datamodule keys a decoded test set by the model's input size, as the evaluator does: one entry
    (the model name as the size made a second entry of every test set)."""
    from weaving.data.cache import open_test_set
    from weaving.models import load_clip

    data = MultiTaskDataModule(["digits"], batch_size=64, decoded_cache=True, cache_dir=str(tmp_path))
    data.eval_dataset(data.tasks[0], "test")
    clip = load_clip("weaving-tiny-vit")
    open_test_set("digits", split="test", transform=clip.eval_transform, image_size=clip.model.visual.image_size,
                  cache_dir=tmp_path, progress=False)
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 1
