"""Class orders of the class-incremental splits: sorted label order, MagMax's published orders, or seeded.

MagMax (Marczak et al., ECCV 2024; code: github.com/danielm1405/magmax) fixes one class order per dataset
(`default_class_order` in src/datasets/<dataset>.py) and splits it into n parts by position
(src/datasets/common.py, `get_class_incremental_classes_and_subset_indices`): part i (0-based) holds the
classes at positions floor(C / n * i) .. floor(C / n * (i + 1)) - 1 of the order, and a part's classes are
then sorted by label (`classes = sorted(class_order[start:end])`), which is also the order of the part's
training head (`build_subset_classification_head`) and of its remapped labels. A dataset without
`default_class_order` (their cars.py) uses list(range(C)), i.e. sorted order.

The orders below are data, copied from those files (commit 4f49f18):
- CIFAR100: cifar100.py's order, in torchvision's CIFAR100 label space (the same as ours).
- CUB200: cub200.py's order, in the label space of the sorted class folders "001.Black_footed_Albatross"
  ... (the same as ours).
- ImageNet-R: imagenetr.py's order (the same list as CUB200's). MagMax renames the class folders from
  WordNet ids to the names of imagenet-r/README.txt and reads them with ImageFolder, so its label k is the
  k-th README name in sorted order; ours is the k-th WordNet id in sorted order. `IMAGENET_R_README_NAMES`
  (README.txt's names, in WordNet-id order) translates one into the other.
- StanfordCars: no published order, so MagMax uses sorted label order (torchvision's labels, as ours).

A seed gives numpy's `RandomState(seed).permutation(C)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CLASS_ORDER_NAMES = ("sorted", "magmax")

# cifar100.py, default_class_order
MAGMAX_CIFAR100_ORDER = (
    70, 89, 11, 13, 63, 53, 86, 57, 41, 43, 14, 98, 52, 73, 95, 96, 33, 16, 39, 74,
    25, 88, 35, 28, 79, 82, 72, 4, 30, 17, 59, 97, 36, 38, 29, 55, 83, 7, 22, 48,
    19, 47, 2, 44, 67, 71, 34, 84, 6, 46, 61, 8, 80, 10, 49, 15, 68, 9, 99, 40,
    27, 45, 51, 37, 21, 64, 92, 24, 60, 31, 5, 91, 93, 90, 65, 66, 77, 20, 58, 62,
    23, 76, 75, 42, 0, 26, 87, 50, 3, 56, 81, 1, 94, 69, 18, 78, 54, 12, 85, 32,
)

# imagenetr.py and cub200.py, default_class_order (one list for both)
MAGMAX_IMAGENET_R_CUB200_ORDER = (
    186, 157, 67, 59, 117, 1, 122, 14, 131, 40, 66, 199, 92, 170, 197, 118, 173, 37, 146, 191,
    4, 198, 64, 56, 51, 165, 0, 107, 175, 148, 187, 161, 137, 180, 133, 181, 177, 12, 20, 74,
    143, 142, 110, 116, 194, 138, 183, 89, 45, 121, 190, 94, 36, 83, 130, 120, 21, 38, 125, 145,
    182, 103, 105, 61, 32, 141, 13, 112, 111, 104, 26, 69, 39, 156, 147, 108, 72, 10, 96, 188,
    16, 63, 152, 86, 160, 119, 184, 7, 172, 132, 44, 42, 82, 15, 114, 127, 85, 168, 55, 65,
    3, 95, 171, 176, 33, 43, 17, 97, 163, 62, 75, 123, 128, 124, 99, 29, 28, 166, 41, 35,
    76, 77, 5, 84, 102, 60, 78, 70, 164, 113, 30, 91, 81, 18, 155, 179, 73, 46, 80, 31,
    150, 79, 174, 153, 50, 144, 9, 167, 134, 135, 101, 49, 106, 154, 23, 100, 48, 25, 71, 139,
    162, 158, 159, 87, 90, 11, 24, 57, 19, 52, 129, 140, 178, 53, 169, 195, 126, 47, 151, 136,
    22, 58, 34, 8, 185, 54, 109, 193, 68, 192, 149, 115, 98, 88, 93, 6, 196, 189, 2, 27,
)

# The class folder names MagMax gives ImageNet-R (imagenet-r/README.txt), in WordNet-id order, i.e. in the
# order of weaving's imagenet_r labels (prompts.IMAGENET_R_WNIDS).
IMAGENET_R_README_NAMES = (
    "goldfish", "great_white_shark", "hammerhead", "stingray", "hen", "ostrich",
    "goldfinch", "junco", "bald_eagle", "vulture", "newt", "axolotl",
    "tree_frog", "iguana", "African_chameleon", "cobra", "scorpion", "tarantula",
    "centipede", "peacock", "lorikeet", "hummingbird", "toucan", "duck",
    "goose", "black_swan", "koala", "jellyfish", "snail", "lobster",
    "hermit_crab", "flamingo", "american_egret", "pelican", "king_penguin", "grey_whale",
    "killer_whale", "sea_lion", "chihuahua", "shih_tzu", "afghan_hound", "basset_hound",
    "beagle", "bloodhound", "italian_greyhound", "whippet", "weimaraner", "yorkshire_terrier",
    "boston_terrier", "scottish_terrier", "west_highland_white_terrier", "golden_retriever", "labrador_retriever", "cocker_spaniels",
    "collie", "border_collie", "rottweiler", "german_shepherd_dog", "boxer", "french_bulldog",
    "saint_bernard", "husky", "dalmatian", "pug", "pomeranian", "chow_chow",
    "pembroke_welsh_corgi", "toy_poodle", "standard_poodle", "timber_wolf", "hyena", "red_fox",
    "tabby_cat", "leopard", "snow_leopard", "lion", "tiger", "cheetah",
    "polar_bear", "meerkat", "ladybug", "fly", "bee", "ant",
    "grasshopper", "cockroach", "mantis", "dragonfly", "monarch_butterfly", "starfish",
    "wood_rabbit", "porcupine", "fox_squirrel", "beaver", "guinea_pig", "zebra",
    "pig", "hippopotamus", "bison", "gazelle", "llama", "skunk",
    "badger", "orangutan", "gorilla", "chimpanzee", "gibbon", "baboon",
    "panda", "eel", "clown_fish", "puffer_fish", "accordion", "ambulance",
    "assault_rifle", "backpack", "barn", "wheelbarrow", "basketball", "bathtub",
    "lighthouse", "beer_glass", "binoculars", "birdhouse", "bow_tie", "broom",
    "bucket", "cauldron", "candle", "cannon", "canoe", "carousel",
    "castle", "mobile_phone", "cowboy_hat", "electric_guitar", "fire_engine", "flute",
    "gasmask", "grand_piano", "guillotine", "hammer", "harmonica", "harp",
    "hatchet", "jeep", "joystick", "lab_coat", "lawn_mower", "lipstick",
    "mailbox", "missile", "mitten", "parachute", "pickup_truck", "pirate_ship",
    "revolver", "rugby_ball", "sandal", "saxophone", "school_bus", "schooner",
    "shield", "soccer_ball", "space_shuttle", "spider_web", "steam_locomotive", "scarf",
    "submarine", "tank", "tennis_ball", "tractor", "trombone", "vase",
    "violin", "military_aircraft", "wine_bottle", "ice_cream", "bagel", "pretzel",
    "cheeseburger", "hotdog", "cabbage", "broccoli", "cucumber", "bell_pepper",
    "mushroom", "Granny_Smith", "strawberry", "lemon", "pineapple", "banana",
    "pomegranate", "pizza", "burrito", "espresso", "volcano", "baseball_player",
    "scuba_diver", "acorn",
)


def _imagenet_r_order() -> tuple[int, ...]:
    """MagMax's ImageNet-R order translated into weaving's labels (sorted WordNet ids)."""
    magmax_labels = sorted(IMAGENET_R_README_NAMES)  # MagMax's ImageFolder: sorted renamed folders
    ours = {name: label for label, name in enumerate(IMAGENET_R_README_NAMES)}
    return tuple(ours[magmax_labels[k]] for k in MAGMAX_IMAGENET_R_CUB200_ORDER)


def magmax_order(task: str) -> tuple[int, ...] | None:
    """MagMax's class order of `task` in weaving's label space, or None when MagMax has none for it."""
    if task == "cifar100":
        return MAGMAX_CIFAR100_ORDER
    if task == "cub200":
        return MAGMAX_IMAGENET_R_CUB200_ORDER
    if task == "imagenet_r":
        return _imagenet_r_order()
    if task in ("cars", "stanford_cars"):
        return tuple(range(196))  # cars.py has no default_class_order: MagMax falls back to sorted order
    return None


def default_class_order(task: str) -> str:
    """"magmax" for the datasets MagMax splits (CIFAR100, ImageNet-R, CUB200, StanfordCars), else "sorted"."""
    return "magmax" if magmax_order(task) is not None else "sorted"


def check_class_order(class_order: str | int | None) -> str | int | None:
    """`class_order` if it is None, "sorted", "magmax" or a seed (int >= 0); else a one-line ValueError."""
    if class_order is None or class_order in CLASS_ORDER_NAMES:
        return class_order
    if isinstance(class_order, str) and class_order.startswith("seed") and class_order[4:].isdigit():
        return int(class_order[4:])
    if isinstance(class_order, int) and not isinstance(class_order, bool) and class_order >= 0:
        return class_order
    raise ValueError(f"class_order={class_order!r} is unknown; use sorted, magmax or a seed (an integer >= 0)")


def class_order(task: str, num_classes: int, order: str | int | None = None) -> tuple[int, ...]:
    """The class order of `task` (labels 0..num_classes-1 in some order) for `order`: "sorted", "magmax",
    a seed, or None (the task's default: `default_class_order`)."""
    order = check_class_order(order)
    if order is None:
        order = default_class_order(task)
    if order == "sorted":
        return tuple(range(num_classes))
    if order == "magmax":
        published = magmax_order(task)
        if published is None:
            raise ValueError(f"class_order=magmax: MagMax publishes no class order for {task!r} (only for "
                             "cifar100, imagenet_r, cub200, cars/stanford_cars); use sorted or a seed")
        if len(published) != num_classes:
            raise ValueError(f"class_order=magmax: the published order of {task!r} has {len(published)} classes, "
                             f"the task {num_classes}")
        return published
    import numpy as np

    return tuple(int(c) for c in np.random.RandomState(order).permutation(num_classes))


def part_bounds(num_classes: int, n: int, i: int) -> tuple[int, int]:
    """Positions [start, end) of part `i` (0-based) of `n` in a class order of `num_classes` classes.

    MagMax's expression, floats included: floor(C / n * i) .. floor(C / n * (i + 1)).
    """
    if num_classes < 1:
        raise ValueError(f"split_classes: num_classes must be >= 1, got {num_classes}")
    if not 1 <= n <= num_classes:
        raise ValueError(f"split count n={n} is invalid for {num_classes} classes: use 1 <= n <= {num_classes}")
    if not 0 <= i < n:
        raise ValueError(f"split index i={i} is out of range for n={n} parts: use 0 <= i < {n} (part {i + 1} of {n})")
    return math.floor(num_classes / n * i), math.floor(num_classes / n * (i + 1))


def part_of_order(order: Sequence[int], n: int, i: int) -> list[int]:
    """The labels of part `i` (0-based) of `n` of `order`, sorted (as MagMax sorts a part's classes)."""
    start, end = part_bounds(len(order), n, i)
    return sorted(order[start:end])
