"""The torchvision-backed datasets: Flowers-102, Oxford-IIIT Pets, Food-101, Caltech-256, CIFAR-100
and its few-shot class splits (CIFAR-FS, FC100).

Each builder registers itself with :func:`training.datasets.registry.register`; the package's
``__init__`` imports this module, so ``import training.datasets`` fills the registry. torchvision
reads (and, with ``--download``, fetches) the official files; the images are then read with the
one loading rule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.datasets.files import call_torchvision, data_root
from training.datasets.images import ImageArray, ImageFiles, LabeledImages
from training.datasets.registry import Builder, DatasetError, RawSplits, register
from training.datasets.splits import SALT_TEST, carve_val, take_per_class

__all__ = [
    "CIFAR100_CLASSES",
    "CIFAR100_SUPERCLASSES",
    "FEWSHOT_SPLITS",
    "build_fewshot_split",
    "fewshot_classes",
]

CALTECH256_TRAIN_PER_CLASS = 60  # CONTRACTS: Caltech-256 has no official split


@register("flowers102")
def _flowers102(root: Path | None, download: bool, seed: int, val_fraction: float) -> RawSplits:
    """Oxford Flowers-102, official train / val / test (10 / 10 / rest per class)."""
    from torchvision.datasets import Flowers102

    root = data_root(root, "flowers102")
    base = root / "flowers-102"
    required = [base / "jpg", base / "imagelabels.mat", base / "setid.mat"]

    def split(name: str) -> LabeledImages:
        ds = call_torchvision(
            lambda: Flowers102(root, split=name, download=download),
            "Flowers-102",
            base,
            "jpg/, imagelabels.mat and setid.mat",
            required,
            download,
        )
        return LabeledImages(ImageFiles(ds._image_files, ds._labels))

    return RawSplits(list(Flowers102.classes), split("train"), split("val"), split("test"))


@register("oxford-pets")
def _oxford_pets(root: Path | None, download: bool, seed: int, val_fraction: float) -> RawSplits:
    """Oxford-IIIT Pets (37 classes): official trainval / test; val = ``val_fraction`` of trainval."""
    from torchvision.datasets import OxfordIIITPet

    root = data_root(root, "oxford-pets")
    base = root / "oxford-iiit-pet"
    required = [base / "images", base / "annotations" / "trainval.txt", base / "annotations" / "test.txt"]
    files = "images/ and annotations/ (trainval.txt, test.txt)"
    parts = [
        call_torchvision(
            lambda s=s: OxfordIIITPet(root, split=s, download=download),
            "Oxford-IIIT Pets",
            base,
            files,
            required,
            download,
        )
        for s in ("trainval", "test")
    ]
    trainval, test = (LabeledImages(ImageFiles(ds._images, ds._labels)) for ds in parts)
    train, val = carve_val(trainval, val_fraction, seed)
    return RawSplits(list(parts[0].classes), train, val, test)


@register("food101")
def _food101(root: Path | None, download: bool, seed: int, val_fraction: float) -> RawSplits:
    """Food-101: official train (750 per class) / test (250); val = ``val_fraction`` of train."""
    from torchvision.datasets import Food101

    root = data_root(root, "food101")
    base = root / "food-101"
    required = [base / "images", base / "meta" / "train.json", base / "meta" / "test.json"]
    parts = [
        call_torchvision(
            lambda s=s: Food101(root, split=s, download=download),
            "Food-101",
            base,
            "images/ and meta/ (train.json, test.json)",
            required,
            download,
        )
        for s in ("train", "test")
    ]
    full_train, test = (LabeledImages(ImageFiles(ds._image_files, ds._labels)) for ds in parts)
    train, val = carve_val(full_train, val_fraction, seed)
    return RawSplits(list(parts[0].classes), train, val, test)


@register("caltech256")
def _caltech256(root: Path | None, download: bool, seed: int, val_fraction: float) -> RawSplits:
    """Caltech-256: the 256 object classes (``257.clutter`` left out), no official split.

    Per class, a seeded permutation: the first 60 images (``CALTECH256_TRAIN_PER_CLASS``) are the
    training pool, the rest the test split; the validation split is ``val_fraction`` of each class's
    pool (6 of 60), the training split the other 54.
    """
    root = data_root(root, "caltech256")
    folder = root / "caltech256" / "256_ObjectCategories"
    if not folder.is_dir():
        from torchvision.datasets import Caltech256

        call_torchvision(
            lambda: Caltech256(str(root), download=download),
            "Caltech-256",
            folder.parent,
            "256_ObjectCategories/ (one folder per class, e.g. 001.ak47/001_0001.jpg)",
            [folder],
            download,
        )
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and d.name != "257.clutter")
    classes = [d.name.split(".", 1)[-1] for d in class_dirs]
    paths: list[Path] = []
    targets: list[int] = []
    for label, d in enumerate(class_dirs):
        found = sorted(p for p in d.iterdir() if p.suffix.lower() == ".jpg" and not p.name.startswith("."))
        paths += found
        targets += [label] * len(found)
    if not paths:
        raise DatasetError(f"Caltech-256 in {folder} holds no .jpg images in its class folders")
    everything = LabeledImages(ImageFiles(paths, targets))
    pool = take_per_class(targets, CALTECH256_TRAIN_PER_CLASS, [seed, SALT_TEST])
    test_pos = np.setdiff1d(np.arange(len(paths)), pool)
    train, val = carve_val(everything.subset(pool), val_fraction, seed)
    return RawSplits(classes, train, val, everything.subset(test_pos))


# --------------------------------------------------------------------------- CIFAR-100 and its class splits

SPLITS_DIR = Path(__file__).parents[1] / "splits"  # copies of ../shared/data/splits/*.json
# CIFAR-100's 20 superclasses and their fine classes (names as torchvision's CIFAR100.classes spells them).
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_CLASSES: list[str] = sorted(
    c for fine in CIFAR100_SUPERCLASSES.values() for c in fine
)  # label order
FEWSHOT_SPLITS = ("cifar-fs", "fc100")


def fewshot_classes(name: str, split: str) -> list[str]:
    """CIFAR-100 fine class names of a few-shot split, in CIFAR-100 label order.

    ``cifar-fs``: val / test as listed, train = every other class (64 / 16 / 20). ``fc100``: the fine
    classes of the listed superclasses (60 / 20 / 20).
    """
    if name not in FEWSHOT_SPLITS:
        raise DatasetError(
            f"no few-shot class split for {name!r}; splits exist for: {', '.join(FEWSHOT_SPLITS)}"
        )
    if split not in ("train", "val", "test"):
        raise DatasetError(f"few-shot split must be train, val or test, got {split!r}")
    spec = json.loads((SPLITS_DIR / f"{name}.json").read_text())
    if name == "fc100":
        chosen = {c for superclass in spec[split] for c in CIFAR100_SUPERCLASSES[superclass]}
    elif split == "train":
        chosen = set(CIFAR100_CLASSES) - set(spec["val"]) - set(spec["test"])
    else:
        chosen = set(spec[split])
    return [c for c in CIFAR100_CLASSES if c in chosen]


def _cifar100_arrays(root: Path | None, download: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images (N, 32, 32, 3) uint8, labels (N,)), "test": ...} from torchvision's CIFAR100."""
    from torchvision.datasets import CIFAR100

    root = data_root(root, "cifar100")
    base = root / "cifar-100-python"
    required = [base / "train", base / "test", base / "meta"]
    out = {}
    for split in ("train", "test"):
        ds = call_torchvision(
            lambda s=split: CIFAR100(str(root), train=s == "train", download=download),
            "CIFAR-100",
            base,
            "the python-version files train, test and meta",
            required,
            download,
        )
        if list(ds.classes) != CIFAR100_CLASSES:
            raise DatasetError(f"CIFAR-100 in {base}: the meta file lists other class names than CIFAR-100's")
        out[split] = (ds.data, np.asarray(ds.targets, dtype=np.int64))
    return out


@register("cifar100")
def _cifar100(root: Path | None, download: bool, seed: int, val_fraction: float) -> RawSplits:
    """CIFAR-100: official train / test; val = ``val_fraction`` of each training class."""
    arrays = _cifar100_arrays(root, download)
    train, val = carve_val(LabeledImages(ImageArray(*arrays["train"])), val_fraction, seed)
    return RawSplits(list(CIFAR100_CLASSES), train, val, LabeledImages(ImageArray(*arrays["test"])))


def _cifar_subset(arrays: tuple[np.ndarray, np.ndarray], classes: list[str]) -> ImageArray:
    """Images of ``classes`` only, relabelled 0..len(classes)-1 in the order of ``classes``."""
    images, labels = arrays
    new_label = np.full(len(CIFAR100_CLASSES), -1, dtype=np.int64)
    new_label[[CIFAR100_CLASSES.index(c) for c in classes]] = np.arange(len(classes))
    keep = new_label[labels] >= 0
    return ImageArray(images[keep], new_label[labels[keep]])


def _fewshot_builder(name: str) -> Builder:
    def build(root: Path | None, download: bool, seed: int, val_fraction: float) -> RawSplits:
        classes = fewshot_classes(name, "train")
        arrays = _cifar100_arrays(root, download)
        train, val = carve_val(LabeledImages(_cifar_subset(arrays["train"], classes)), val_fraction, seed)
        return RawSplits(classes, train, val, LabeledImages(_cifar_subset(arrays["test"], classes)))

    build.__doc__ = (
        f"{name}: CIFAR-100 restricted to the {name} 'train' classes (training/splits/{name}.json), "
        "relabelled in CIFAR-100 order; val = val_fraction of each class's CIFAR-100 training images; "
        "test = CIFAR-100 test images of those classes."
    )
    return build


register("cifar-fs")(_fewshot_builder("cifar-fs"))
register("fc100")(_fewshot_builder("fc100"))


def build_fewshot_split(
    name: str,
    split: str,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    transform: Callable | None = None,
) -> tuple[LabeledImages, list[str]]:
    """All 600 CIFAR-100 images (train + test files) of each class of a few-shot split.

    Returns:
        ``(images, classes)``: labels are positions in ``classes`` (CIFAR-100 order).
    """
    classes = fewshot_classes(name, split)
    arrays = _cifar100_arrays(None if root is None else Path(root).expanduser(), download)
    parts = [_cifar_subset(arrays[s], classes) for s in ("train", "test")]
    both = ImageArray(np.concatenate([p.images for p in parts]), np.concatenate([p.targets for p in parts]))
    return LabeledImages(both, transform=transform), classes
