import os

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from weaving.data import cache
from weaving.data.cache import DecodedTestSet, StreamedTestSet, cache_key, normalize, open_test_set, split_transform
from weaving.data.tasks import get_task
from weaving.models.clip import image_transforms

SUBSET = list(range(0, 120, 3))  # 40 test images


def _all(test_set, batch_size=16):
    batches = list(test_set.batches(batch_size, "cpu"))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def _reference(transform, subset=SUBSET):
    dataset = get_task("digits").dataset("data", "test", transform)
    return torch.stack([dataset[i][0] for i in subset]), torch.tensor([dataset[i][1] for i in subset])


def _open(tmp_path, transform, size=32, **kwargs):
    return open_test_set("digits", transform=transform, image_size=size, cache_dir=tmp_path, subset=SUBSET,
                         progress=False, num_workers=0, **kwargs)


def test_cached_batches_are_exactly_what_the_transform_gives(tmp_path):
    transform = image_transforms("weaving-tiny-vit")[1]
    test_set = _open(tmp_path, transform)
    assert isinstance(test_set, DecodedTestSet) and test_set.images.dtype == np.uint8
    images, labels = _all(test_set)
    expected_images, expected_labels = _reference(transform)
    assert torch.equal(labels, expected_labels)
    assert images.dtype == torch.float32 and torch.equal(images, expected_images)


def test_normalize_matches_to_tensor_then_normalize():
    image = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    expected = torch.stack([T.Normalize(mean, std)(T.ToTensor()(im.permute(1, 2, 0).numpy())) for im in image])
    assert torch.equal(normalize(image, mean, std), expected)


def test_a_second_open_reads_the_cache_and_decodes_nothing(tmp_path, monkeypatch):
    transform = image_transforms("weaving-tiny-vit")[1]
    first = _all(_open(tmp_path, transform))

    def fail(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache, "_build_entry", fail)
    again = _all(_open(tmp_path, transform))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert len([p for p in tmp_path.iterdir()]) == 1


def test_each_transform_size_split_and_subset_has_its_own_entry(tmp_path):
    small, large = image_transforms("weaving-tiny-vit")[1], T.Compose([T.Resize(40), T.CenterCrop(40), T.ToTensor()])
    a, b = _open(tmp_path, small), _open(tmp_path, large, size=40)
    assert a.folder != b.folder and b.images.shape[1:] == (3, 40, 40) and a.images.shape[1:] == (3, 32, 32)
    assert torch.equal(_all(b)[0], _reference(large)[0])
    text = split_transform(small).description
    base = cache_key("digits", "test", "data", text, 32)
    assert base == cache_key("digits", "test", "data", text, 32)
    assert len({base, cache_key("digits", "test", "data", text, 48), cache_key("digits", "val", "data", text, 32),
                cache_key("digits", "test", "data", text + "x", 32), cache_key("digits", "test", "other", text, 32),
                cache_key("digits", "test", "data", text, 32, [0, 1]), cache_key("digits_rot90", "test", "data", text, 32)}) == 7


def test_descriptions_have_no_memory_addresses():
    def crop(image):
        return image

    described = split_transform(T.Compose([crop, T.ToTensor()])).description
    assert "0x" not in described and "crop" in described


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta", "labels"])
def test_a_corrupt_or_partial_entry_is_rebuilt(tmp_path, damage):
    transform = image_transforms("weaving-tiny-vit")[1]
    good = _all(_open(tmp_path, transform))
    folder = next(tmp_path.iterdir())
    images = folder / "images.u8"
    if damage == "truncate":
        os.truncate(images, images.stat().st_size // 2)
    elif damage == "flip":
        data = bytearray(images.read_bytes())
        data[100] ^= 0xFF
        images.write_bytes(bytes(data))
    elif damage == "meta":
        (folder / "meta.json").unlink()
    else:
        (folder / "labels.i64").write_bytes(b"\0" * (folder / "labels.i64").stat().st_size)
    assert cache._read_entry(folder, folder.name) is None
    rebuilt = _all(_open(tmp_path, transform))
    assert torch.equal(good[0], rebuilt[0]) and torch.equal(good[1], rebuilt[1])
    assert cache._read_entry(folder, folder.name) is not None


def test_an_interrupted_build_leaves_no_entry(tmp_path, monkeypatch):
    class Broken(T.CenterCrop):
        calls = 0

        def forward(self, image):
            Broken.calls += 1
            if Broken.calls > 20:
                raise RuntimeError("disk gone")
            return super().forward(image)

    transform = T.Compose([T.Resize(32), Broken(32), T.ToTensor()])
    with pytest.raises(RuntimeError, match="disk gone"):
        _open(tmp_path, transform)
    assert list(tmp_path.iterdir()) == []


def test_a_transform_that_cannot_be_split_is_streamed(tmp_path):
    def transform(image):
        return T.ToTensor()(image.resize((32, 32)))

    test_set = _open(tmp_path, transform)
    assert isinstance(test_set, StreamedTestSet) and list(tmp_path.iterdir()) == []
    assert torch.equal(_all(test_set)[0], _reference(transform)[0])
    assert isinstance(_open(tmp_path, image_transforms("weaving-tiny-vit")[1], cache=False), StreamedTestSet)
