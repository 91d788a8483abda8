"""Task registry: class names and templates, error messages, and ImageFolder-based tasks on fake data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from weaving.data import TASKS, Task, get_task, register_task
from weaving.data.prompts import IMAGENET_R_WNIDS
from weaving.data.tasks import ToRGB

EXPECTED_CLASSES = {
    "sun397": 397, "cars": 196, "resisc45": 45, "eurosat": 10, "svhn": 10, "gtsrb": 43, "mnist": 10, "dtd": 47,
    "cifar100": 100, "imagenet_r": 200, "cub200": 200, "stanford_cars": 196,
    "digits": 10, "digits_rot90": 10, "digits_inverted": 10, "digits_mirrored": 10,
}
TORCHVISION_TASKS = {  # task -> folder named in its missing-data error
    "sun397": "SUN397", "eurosat": "eurosat", "svhn": "svhn", "gtsrb": "gtsrb", "mnist": "MNIST", "dtd": "dtd",
    "cifar100": "cifar-100-python",
}


def write_images(folder: Path, count: int, *, mode: str = "L", seed: int = 0) -> list[str]:
    """`count` tiny random images in `folder` (grayscale by default, to check the RGB conversion)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for k in range(count):
        shape = (6, 6) if mode == "L" else (6, 6, 3)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(folder / f"img_{k}.png")
        names.append(f"img_{k}.png")
    return names


def fake_resisc45(root: Path, per_class: int = 2) -> Path:
    for k in range(45):
        write_images(root / "NWPU-RESISC45" / f"class_{k:02d}", per_class, seed=k)
    return root


def sample_paths(dataset) -> list[str]:
    """The image file behind each item, following Subset chains down to the ImageFolder."""
    indices = list(range(len(dataset)))
    while isinstance(dataset, Subset):
        indices = [dataset.indices[j] for j in indices]
        dataset = dataset.dataset
    return [dataset.samples[j][0] for j in indices]


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)


def test_registry_holds_every_task_with_its_class_count():
    for name, count in EXPECTED_CLASSES.items():
        task = get_task(name)
        assert task.name == name == name.lower()
        assert task.num_classes == len(task.classnames) == count
        assert len(set(task.classnames)) == count, f"{name} has duplicate class names"
        assert task.templates and all(t.count("{}") == 1 for t in task.templates)
    assert set(EXPECTED_CLASSES) <= set(TASKS)


def test_templates_follow_clip():
    assert get_task("eurosat").classnames[0] == "annual crop land"
    assert get_task("cars").templates[3] == "i love my {}!"
    assert get_task("mnist").templates == ('a photo of the number: "{}".',)
    assert get_task("imagenet_r").classnames[0] == "goldfish"
    assert len(get_task("imagenet_r").templates) == 80
    assert list(IMAGENET_R_WNIDS) == sorted(IMAGENET_R_WNIDS)


def test_unknown_task_lists_known_names():
    with pytest.raises(ValueError, match="unknown task 'imagenet'") as info:
        get_task("imagenet")
    assert "cifar100" in str(info.value) and "digits_rot90" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(TORCHVISION_TASKS))
def test_missing_torchvision_dataset_names_path_and_download(tmp_path, name):
    with pytest.raises(FileNotFoundError) as info:
        get_task(name).dataset(tmp_path, "train")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / TORCHVISION_TASKS[name]) in message
    assert "download=True" in message


@pytest.mark.parametrize(
    ("name", "folder", "hint"),
    [
        ("cars", "stanford_cars", "download it by hand"),
        ("stanford_cars", "stanford_cars", "download it by hand"),
        ("resisc45", "NWPU-RESISC45", "NWPU-RESISC45"),
        ("imagenet_r", "imagenet-r", "imagenet-r.tar"),
        ("cub200", "CUB_200_2011", "CUB_200_2011.tgz"),
    ],
)
def test_missing_manual_dataset_says_how_to_get_it(tmp_path, name, folder, hint):
    with pytest.raises(FileNotFoundError) as info:
        get_task(name).dataset(tmp_path, "test")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / folder) in message and hint in message


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        get_task("digits").dataset("unused", "valid")


def test_resisc45_holdout_and_validation_splits(tmp_path):
    fake_resisc45(tmp_path, per_class=2)  # 90 images
    splits = {s: get_task("resisc45").dataset(tmp_path, s) for s in ("train", "val", "test")}
    # 20% test hold-out (18), then 10% of the remaining 72 as validation (7).
    assert {s: len(d) for s, d in splits.items()} == {"train": 65, "val": 7, "test": 18}
    files = {s: set(sample_paths(d)) for s, d in splits.items()}
    assert sum(len(f) for f in files.values()) == len(set.union(*files.values())) == 90  # disjoint, cover all
    image, label = splits["train"][0]
    assert isinstance(image, Image.Image) and image.mode == "RGB"  # grayscale files arrive as RGB
    assert 0 <= label < 45
    again = get_task("resisc45").dataset(tmp_path, "test")
    assert again.indices == splits["test"].indices  # fixed seed: same split every time


def test_resisc45_applies_transform_and_labels_follow_sorted_folders(tmp_path):
    fake_resisc45(tmp_path, per_class=2)
    test = get_task("resisc45").dataset(tmp_path, "test", transform=to_tensor)
    image, label = test[0]
    assert image.shape == (3, 6, 6)
    assert int(Path(sample_paths(test)[0]).parent.name.split("_")[1]) == label


def test_wrong_number_of_class_folders_is_reported(tmp_path):
    for k in range(3):
        write_images(tmp_path / "NWPU-RESISC45" / f"c{k}", 2)
    with pytest.raises(ValueError, match="found 3 class folders .* expected 45"):
        get_task("resisc45").dataset(tmp_path, "train")


def test_imagenet_r_labels_are_sorted_wnids(tmp_path):
    for k, wnid in enumerate(IMAGENET_R_WNIDS):
        write_images(tmp_path / "imagenet-r" / wnid, 1, mode="RGB", seed=k)
    train = get_task("imagenet_r").dataset(tmp_path, "train")
    test = get_task("imagenet_r").dataset(tmp_path, "test")
    assert len(test) == 40 and len(train) + len(get_task("imagenet_r").dataset(tmp_path, "val")) == 160
    _, label = test[0]
    assert IMAGENET_R_WNIDS[label] == Path(sample_paths(test)[0]).parent.name


def test_cub200_uses_official_split_file(tmp_path):
    base = tmp_path / "CUB_200_2011"
    lines, flags, image_id = [], [], 0
    for k in range(200):
        folder = f"{k + 1:03d}.Bird_{k}"
        for j, name in enumerate(write_images(base / "images" / folder, 2, seed=k)):
            image_id += 1
            lines.append(f"{image_id} {folder}/{name}")
            flags.append(f"{image_id} {1 if j == 0 else 0}")  # first image of each class trains
    (base / "images.txt").write_text("\n".join(lines) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(flags) + "\n")
    task = get_task("cub200")
    test = task.dataset(tmp_path, "test")
    train, val = task.dataset(tmp_path, "train"), task.dataset(tmp_path, "val")
    assert len(test) == 200 and len(train) + len(val) == 200 and len(val) == 20
    assert sorted(test[j][1] for j in range(len(test))) == list(range(200))
    assert all(Path(path).name == "img_1.png" for path in sample_paths(test))


def test_to_rgb_converts_before_the_transform():
    gray = Image.new("L", (4, 4), color=7)
    out = ToRGB(to_tensor)(gray)
    assert out.shape == (3, 4, 4) and torch.all(out == 7)
    assert ToRGB()(gray).mode == "RGB"


def test_register_task_checks_names_and_templates():
    def factory(root, split, transform, download):
        return []

    with pytest.raises(ValueError, match="already registered"):
        register_task(Task("digits", ("a",), ("{}",), factory))
    with pytest.raises(ValueError, match="reserved"):
        register_task(Task("mine_part1of2", ("a",), ("{}",), factory))
    with pytest.raises(ValueError, match="lowercase"):
        register_task(Task("Mine", ("a",), ("{}",), factory))
    with pytest.raises(ValueError, match="exactly one"):
        Task("mine", ("a",), ("no placeholder",), factory)
    try:
        task = register_task(Task("weaving_test_task", ("a", "b"), ("a {}.",), factory))
        assert get_task("weaving_test_task") is task
    finally:
        TASKS.pop("weaving_test_task", None)


def fake_mnist(root: Path, train: int = 50, test: int = 20) -> None:
    """MNIST's four idx files (what torchvision reads after its download), with random 28x28 digits."""
    import struct

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 255, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.tobytes())


def test_torchvision_task_on_fake_mnist(tmp_path):
    fake_mnist(tmp_path)
    task = get_task("mnist")
    sizes = {split: len(task.dataset(tmp_path, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 45, "val": 5, "test": 20}  # val = 10% of the official train split
    image, label = task.dataset(tmp_path, "train")[0]
    assert image.mode == "RGB" and image.size == (28, 28)  # MNIST's grayscale arrives as RGB
    tensor, _ = task.dataset(tmp_path, "test", transform=to_tensor)[0]
    assert tensor.shape == (3, 28, 28) and torch.equal(tensor[0], tensor[2])
    part = get_task("mnist_part2of2").dataset(tmp_path, "test")
    assert len(part) == 10 and {part[j][1] for j in range(len(part))} == {0, 1, 2, 3, 4}


def test_imagenet_prompts_come_from_open_clip():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    from weaving.data import prompts

    assert len(prompts.IMAGENET_TEMPLATES) == 80 and prompts.IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    assert [t.format("dog") for t in prompts.IMAGENET_TEMPLATES] == [t("dog") for t in OPENAI_IMAGENET_TEMPLATES]
    indices = prompts.IMAGENET_R_IMAGENET_INDICES
    assert len(indices) == len(set(indices)) == 200 and list(indices) == sorted(indices)  # wnid order = label order
    assert prompts.IMAGENET_R_OPEN_CLIP_CLASSNAMES[0] == IMAGENET_CLASSNAMES[1] == "goldfish"
    assert prompts.IMAGENET_R_OPEN_CLIP_CLASSNAMES[-1] == "acorn"


# MagMax's own lists (https://github.com/danielm1405/magmax), recorded here to compare the registry with:
# src/datasets/imagenetr.py `_ImageNetR.CLASSES` (its class folder names; labels follow this sorted order),
# torchvision's CIFAR100 `classes` (src/datasets/cifar100.py uses them as they are) and
# src/datasets/templates.py `imagenet_template` (its CUB200 templates), as format strings.
MAGMAX_IMAGENET_R_CLASSES = [
    'African_chameleon', 'Granny_Smith', 'accordion', 'acorn', 'afghan_hound', 'ambulance', 'american_egret',
    'ant', 'assault_rifle', 'axolotl', 'baboon', 'backpack', 'badger', 'bagel', 'bald_eagle', 'banana', 'barn',
    'baseball_player', 'basketball', 'basset_hound', 'bathtub', 'beagle', 'beaver', 'bee', 'beer_glass',
    'bell_pepper', 'binoculars', 'birdhouse', 'bison', 'black_swan', 'bloodhound', 'border_collie',
    'boston_terrier', 'bow_tie', 'boxer', 'broccoli', 'broom', 'bucket', 'burrito', 'cabbage', 'candle',
    'cannon', 'canoe', 'carousel', 'castle', 'cauldron', 'centipede', 'cheeseburger', 'cheetah', 'chihuahua',
    'chimpanzee', 'chow_chow', 'clown_fish', 'cobra', 'cocker_spaniels', 'cockroach', 'collie', 'cowboy_hat',
    'cucumber', 'dalmatian', 'dragonfly', 'duck', 'eel', 'electric_guitar', 'espresso', 'fire_engine',
    'flamingo', 'flute', 'fly', 'fox_squirrel', 'french_bulldog', 'gasmask', 'gazelle', 'german_shepherd_dog',
    'gibbon', 'golden_retriever', 'goldfinch', 'goldfish', 'goose', 'gorilla', 'grand_piano', 'grasshopper',
    'great_white_shark', 'grey_whale', 'guillotine', 'guinea_pig', 'hammer', 'hammerhead', 'harmonica', 'harp',
    'hatchet', 'hen', 'hermit_crab', 'hippopotamus', 'hotdog', 'hummingbird', 'husky', 'hyena', 'ice_cream',
    'iguana', 'italian_greyhound', 'jeep', 'jellyfish', 'joystick', 'junco', 'killer_whale', 'king_penguin',
    'koala', 'lab_coat', 'labrador_retriever', 'ladybug', 'lawn_mower', 'lemon', 'leopard', 'lighthouse',
    'lion', 'lipstick', 'llama', 'lobster', 'lorikeet', 'mailbox', 'mantis', 'meerkat', 'military_aircraft',
    'missile', 'mitten', 'mobile_phone', 'monarch_butterfly', 'mushroom', 'newt', 'orangutan', 'ostrich',
    'panda', 'parachute', 'peacock', 'pelican', 'pembroke_welsh_corgi', 'pickup_truck', 'pig', 'pineapple',
    'pirate_ship', 'pizza', 'polar_bear', 'pomegranate', 'pomeranian', 'porcupine', 'pretzel', 'puffer_fish',
    'pug', 'red_fox', 'revolver', 'rottweiler', 'rugby_ball', 'saint_bernard', 'sandal', 'saxophone', 'scarf',
    'school_bus', 'schooner', 'scorpion', 'scottish_terrier', 'scuba_diver', 'sea_lion', 'shield', 'shih_tzu',
    'skunk', 'snail', 'snow_leopard', 'soccer_ball', 'space_shuttle', 'spider_web', 'standard_poodle',
    'starfish', 'steam_locomotive', 'stingray', 'strawberry', 'submarine', 'tabby_cat', 'tank', 'tarantula',
    'tennis_ball', 'tiger', 'timber_wolf', 'toucan', 'toy_poodle', 'tractor', 'tree_frog', 'trombone', 'vase',
    'violin', 'volcano', 'vulture', 'weimaraner', 'west_highland_white_terrier', 'wheelbarrow', 'whippet',
    'wine_bottle', 'wood_rabbit', 'yorkshire_terrier', 'zebra',
]

TORCHVISION_CIFAR100_CLASSES = [
    'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle', 'bottle', 'bowl',
    'boy', 'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle', 'caterpillar', 'cattle', 'chair',
    'chimpanzee', 'clock', 'cloud', 'cockroach', 'couch', 'crab', 'crocodile', 'cup', 'dinosaur', 'dolphin',
    'elephant', 'flatfish', 'forest', 'fox', 'girl', 'hamster', 'house', 'kangaroo', 'keyboard', 'lamp',
    'lawn_mower', 'leopard', 'lion', 'lizard', 'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain',
    'mouse', 'mushroom', 'oak_tree', 'orange', 'orchid', 'otter', 'palm_tree', 'pear', 'pickup_truck',
    'pine_tree', 'plain', 'plate', 'poppy', 'porcupine', 'possum', 'rabbit', 'raccoon', 'ray', 'road', 'rocket',
    'rose', 'sea', 'seal', 'shark', 'shrew', 'skunk', 'skyscraper', 'snail', 'snake', 'spider', 'squirrel',
    'streetcar', 'sunflower', 'sweet_pepper', 'table', 'tank', 'telephone', 'television', 'tiger', 'tractor',
    'train', 'trout', 'tulip', 'turtle', 'wardrobe', 'whale', 'willow_tree', 'wolf', 'woman', 'worm',
]

MAGMAX_IMAGENET_TEMPLATE = [
    'a bad photo of a {}.', 'a photo of many {}.', 'a sculpture of a {}.', 'a photo of the hard to see {}.',
    'a low resolution photo of the {}.', 'a rendering of a {}.', 'graffiti of a {}.', 'a bad photo of the {}.',
    'a cropped photo of the {}.', 'a tattoo of a {}.', 'the embroidered {}.', 'a photo of a hard to see {}.',
    'a bright photo of a {}.', 'a photo of a clean {}.', 'a photo of a dirty {}.', 'a dark photo of the {}.',
    'a drawing of a {}.', 'a photo of my {}.', 'the plastic {}.', 'a photo of the cool {}.',
    'a close-up photo of a {}.', 'a black and white photo of the {}.', 'a painting of the {}.',
    'a painting of a {}.', 'a pixelated photo of the {}.', 'a sculpture of the {}.',
    'a bright photo of the {}.', 'a cropped photo of a {}.', 'a plastic {}.', 'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.', 'a blurry photo of the {}.', 'a photo of the {}.',
    'a good photo of the {}.', 'a rendering of the {}.', 'a {} in a video game.', 'a photo of one {}.',
    'a doodle of a {}.', 'a close-up photo of the {}.', 'a photo of a {}.', 'the origami {}.',
    'the {} in a video game.', 'a sketch of a {}.', 'a doodle of the {}.', 'a origami {}.',
    'a low resolution photo of a {}.', 'the toy {}.', 'a rendition of the {}.', 'a photo of the clean {}.',
    'a photo of a large {}.', 'a rendition of a {}.', 'a photo of a nice {}.', 'a photo of a weird {}.',
    'a blurry photo of a {}.', 'a cartoon {}.', 'art of a {}.', 'a sketch of the {}.', 'a embroidered {}.',
    'a pixelated photo of a {}.', 'itap of the {}.', 'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.', 'a plushie {}.', 'a photo of the nice {}.', 'a photo of the small {}.',
    'a photo of the weird {}.', 'the cartoon {}.', 'art of the {}.', 'a drawing of the {}.',
    'a photo of the large {}.', 'a black and white photo of a {}.', 'the plushie {}.', 'a dark photo of a {}.',
    'itap of a {}.', 'graffiti of the {}.', 'a toy {}.', 'itap of my {}.', 'a photo of a cool {}.',
    'a photo of a small {}.', 'a tattoo of the {}.',
]


def test_continual_heads_are_magmaxs():
    """cifar100, imagenet_r and cub200 name their classes and prompt them as MagMax's heads do."""
    from weaving.data import prompts
    from weaving.data.class_orders import IMAGENET_R_README_NAMES

    cifar100, imagenet_r, cub200 = get_task("cifar100"), get_task("imagenet_r"), get_task("cub200")
    assert list(cifar100.classnames) == TORCHVISION_CIFAR100_CLASSES  # underscores kept: "aquarium_fish"
    assert list(cifar100.templates) == list(prompts.CIFAR100_TEMPLATES)
    # MagMax's label k is the k-th sorted folder name; weaving's label is the WordNet-id order: same names
    by_folder = dict(zip(IMAGENET_R_README_NAMES, imagenet_r.classnames))
    assert sorted(by_folder) == MAGMAX_IMAGENET_R_CLASSES
    assert all(by_folder[folder] == folder.replace("_", " ") for folder in MAGMAX_IMAGENET_R_CLASSES)
    assert {"newt", "panda", "timber wolf", "African chameleon"} <= set(imagenet_r.classnames)
    assert list(imagenet_r.templates) == MAGMAX_IMAGENET_TEMPLATE
    assert list(cub200.templates) == MAGMAX_IMAGENET_TEMPLATE and len(MAGMAX_IMAGENET_TEMPLATE) == 80
    assert cub200.classnames[0] == "Black footed Albatross"  # folder "001.Black_footed_Albatross"[4:], "_" -> " "
    # open_clip's ImageNet names stay available, in the same label order
    assert prompts.IMAGENET_R_OPEN_CLIP_CLASSNAMES[:2] == ("goldfish", "great white shark")
    assert len(prompts.IMAGENET_R_OPEN_CLIP_CLASSNAMES) == 200
