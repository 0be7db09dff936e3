"""Datasets for fine-tuning: one image-loading rule, a registry of datasets, splits, transforms.

* :func:`load_image` is the one loading rule (CONTRACTS "Images"): EXIF orientation, transparency
  composited on white, RGB. Every file-based dataset reads through it; array datasets (CIFAR,
  Fashion-MNIST) convert their arrays to RGB.
* :func:`build_datasets` returns :class:`DatasetSplits` (train / val / test + class names). Every
  split carries ``targets`` (the integer labels, read without decoding an image) for the sampler.
  Adding a dataset = one builder function decorated with ``@register("name")``; the parametrised
  tests then ask for a fake of it in its on-disk format.
* :func:`build_transforms` gives the train / eval transforms; :class:`TwoViews` and
  :func:`two_view_collate` produce the CONTRACTS row layout for the two-view losses.

Splits and seeds: where a dataset has no validation split, ``val_fraction`` of each training class
is held out (seeded, at least one image of a class with two or more). ``train_per_class=K`` then
keeps K images per class of what is left (seeded; the K-subsets are nested: K=5 ⊂ K=10 for one seed),
so the validation split does not depend on K. Missing files raise :class:`DatasetError` with one
line that says where to put which files, or to pass ``--download``.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = [
    "AugConfig",
    "DatasetError",
    "DatasetSplits",
    "ImageArray",
    "ImageFiles",
    "LabeledImages",
    "TwoViews",
    "build_datasets",
    "build_fewshot_split",
    "build_transforms",
    "class_folder_images",
    "fewshot_classes",
    "list_datasets",
    "load_image",
    "register",
    "split_per_class",
    "stack_views",
    "take_per_class",
    "to_rgb",
    "two_view_collate",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

DATA_HOME_ENV = "CLCE_DATA_HOME"  # with no root given, a dataset lives in $CLCE_DATA_HOME/<folder>
DEFAULT_DATA_HOME = "~/.cache/clce/data"  # ... or here, when the variable is unset
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
CALTECH256_TRAIN_PER_CLASS = 60  # CONTRACTS: Caltech-256 has no official split
# Salts make independent seeded streams: the validation split does not change with K, etc.
_SALT_VAL, _SALT_K, _SALT_TEST = 0, 1, 2


class DatasetError(Exception):
    """A dataset cannot be built; ``str(e)`` is one line saying what to do (print it, no traceback)."""


# --------------------------------------------------------------------------- the image-loading rule


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to RGB: transparency composited on white, grey repeated to 3 channels.

    16-bit grey (``I;16``, or ``I`` with values above 255) is scaled to 8 bits. Always returns a new image.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or arr.max() > 255:
            arr = arr * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(src: str | os.PathLike[str] | BinaryIO | bytes) -> Image.Image:
    """Open an image file (path, binary file object or bytes) the one way: EXIF-oriented RGB.

    Raises:
        PIL.UnidentifiedImageError / OSError: the file is not a readable image.
    """
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    with Image.open(src) as image:
        try:
            oriented = ImageOps.exif_transpose(image)
        except Exception:  # malformed EXIF: nothing trustworthy to apply, keep the pixels as stored
            oriented = image
        return to_rgb(oriented)


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB array -> PIL RGB image."""
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


# --------------------------------------------------------------------------- datasets and splits


class ImageFiles:
    """Image files with integer labels; ``image(i)`` decodes file i with :func:`load_image`."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], targets: Sequence[int]) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} labels")
        self.paths = [Path(p) for p in paths]
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> Image.Image:
        return load_image(self.paths[i])


class ImageArray:
    """In-memory uint8 images ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` with integer labels."""

    def __init__(self, images: np.ndarray, targets: Sequence[int]) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> Image.Image:
        return array_to_rgb(self.images[i])


class LabeledImages(Dataset):
    """The items ``indices`` of a source, as ``(transform(RGB PIL image), int label)``.

    Splits of one dataset share their source (no copies); ``targets`` are the labels in item order.
    """

    def __init__(
        self,
        source: ImageFiles | ImageArray,
        indices: Sequence[int] | None = None,
        transform: Callable | None = None,
    ) -> None:
        self.source = source
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.targets: list[int] = source.targets[self.indices].tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image = self.source.image(int(self.indices[i]))
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[i]

    def subset(self, positions: Sequence[int]) -> LabeledImages:
        """The items at ``positions`` (positions in this split, not in the source)."""
        return LabeledImages(self.source, self.indices[np.asarray(positions, dtype=np.int64)], self.transform)

    def with_transform(self, transform: Callable | None) -> LabeledImages:
        """The same items with another transform (e.g. the eval transform on the training split)."""
        return LabeledImages(self.source, self.indices, transform)


@dataclass
class DatasetSplits:
    """What :func:`build_datasets` returns. ``test`` is None only for an imagefolder without ``test/``."""

    name: str
    classes: list[str]
    train: LabeledImages
    val: LabeledImages
    test: LabeledImages | None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> str:
        test = f"{len(self.test)}" if self.test is not None else "none"
        return (
            f"{self.name}: {self.num_classes} classes, train {len(self.train)} / val {len(self.val)} "
            f"/ test {test} images"
        )


def split_per_class(
    targets: Sequence[int], fraction: float, seed: int | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``round(fraction * n)`` items of each class, seeded.

    A class with n >= 2 items holds out at least one and keeps at least one; a single item is kept.

    Returns:
        ``(kept, held)``: sorted positions into ``targets``.
    """
    rng = np.random.default_rng(seed)
    targets_arr = np.asarray(targets, dtype=np.int64)
    kept, held = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c in np.unique(targets_arr):
        pos = rng.permutation(np.flatnonzero(targets_arr == c))
        k = min(max(round(fraction * len(pos)), 1), len(pos) - 1)
        held.append(pos[:k])
        kept.append(pos[k:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def take_per_class(targets: Sequence[int], k: int, seed: int | Sequence[int]) -> np.ndarray:
    """Sorted positions of ``k`` seeded items per class (all of a class with fewer; nested in k)."""
    rng = np.random.default_rng(seed)
    targets_arr = np.asarray(targets, dtype=np.int64)
    chosen = [np.zeros(0, np.int64)]
    short = 0
    for c in np.unique(targets_arr):
        pos = rng.permutation(np.flatnonzero(targets_arr == c))
        short += len(pos) < k
        chosen.append(pos[:k])
    if short:
        log.warning("%d classes have fewer than %d training images; all of theirs are kept", short, k)
    return np.sort(np.concatenate(chosen))


def _carve_val(train: LabeledImages, fraction: float, seed: int) -> tuple[LabeledImages, LabeledImages]:
    kept, held = split_per_class(train.targets, fraction, [seed, _SALT_VAL])
    return train.subset(kept), train.subset(held)


# --------------------------------------------------------------------------- registry


class RawSplits(NamedTuple):
    """What a builder returns: untransformed splits, validation already carved out."""

    classes: list[str]
    train: LabeledImages
    val: LabeledImages
    test: LabeledImages | None


Builder = Callable[[Path | None, bool, int, float], RawSplits]  # (root, download, seed, val_fraction)
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: add a dataset builder ``(root, download, seed, val_fraction) -> RawSplits``."""

    def add(builder: Builder) -> Builder:
        _REGISTRY[name] = builder
        return builder

    return add


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def build_datasets(
    name: str,
    root: str | os.PathLike[str] | None,
    download: bool,
    train_transform: Callable | None,
    eval_transform: Callable | None,
    train_per_class: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
) -> DatasetSplits:
    """Build the train / val / test splits of a registered dataset.

    Args:
        name: a name from :func:`list_datasets`.
        root: the data root (torchvision's layout: ``root/flowers-102``, ``root/cifar-100-python``, ...;
            the folder itself for ``imagefolder``). None: ``~/.cache/clce/data/NAME`` (``$CLCE_DATA_HOME``
            replaces ``~/.cache/clce/data``; cifar-fs and fc100 share ``cifar100``'s folder; Fashion-MNIST
            also looks in Debian's ``/usr/share/datasets/fashion-mnist``).
        download: let torchvision download missing files (needs a network).
        train_transform / eval_transform: applied to the RGB PIL images of train / (val, test).
        train_per_class: keep K training images per class (seeded), after the validation split.
        seed: seeds every split decision.
        val_fraction: held out of each training class where the dataset has no validation split.

    Raises:
        DatasetError: one line: unknown name, files missing (where to put which), download failed.
    """
    builder = _REGISTRY.get(name)
    if builder is None:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if train_per_class is not None and train_per_class < 1:
        raise DatasetError(f"train_per_class must be at least 1, got {train_per_class}")
    raw = builder(None if root is None else Path(root).expanduser(), download, seed, val_fraction)
    train = raw.train
    if train_per_class is not None:
        train = train.subset(take_per_class(train.targets, train_per_class, [seed, _SALT_K]))
    test = None if raw.test is None else raw.test.with_transform(eval_transform)
    return DatasetSplits(
        name,
        list(raw.classes),
        train.with_transform(train_transform),
        raw.val.with_transform(eval_transform),
        test,
    )


def _data_root(root: Path | None, folder: str) -> Path:
    """The given root, or the default one of a dataset: ``$CLCE_DATA_HOME/folder``."""
    if root is not None:
        return root
    return Path(os.environ.get(DATA_HOME_ENV) or DEFAULT_DATA_HOME).expanduser() / folder


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def _torchvision(
    make: Callable[[], T], title: str, where: Path, files: str, required: Sequence[Path], download: bool
) -> T:
    """Call a torchvision constructor; turn 'not found' and failed downloads into one-line DatasetErrors."""
    present = all(p.exists() for p in required)
    if not present and not download:
        raise DatasetError(
            f"{title} not found in {where}: put {files} there, or pass --download (needs a network)"
        )
    try:
        return make()
    except Exception as e:
        if present:
            raise DatasetError(
                f"{title} in {where} did not load ({_one_line(e)}): replace {files} with the official "
                "files, or remove them and pass --download"
            ) from e
        raise DatasetError(
            f"{title} download failed ({_one_line(e)}): put {files} in {where} by hand, "
            "or retry with a network"
        ) from e


# --------------------------------------------------------------------------- torchvision datasets


@register("flowers102")
def _flowers102(root: Path | None, download: bool, seed: int, val_fraction: float) -> RawSplits:
    """Oxford Flowers-102, official train / val / test (10 / 10 / rest per class)."""
    from torchvision.datasets import Flowers102

    root = _data_root(root, "flowers102")
    base = root / "flowers-102"
    required = [base / "jpg", base / "imagelabels.mat", base / "setid.mat"]

    def split(name: str) -> LabeledImages:
        ds = _torchvision(
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

    root = _data_root(root, "oxford-pets")
    base = root / "oxford-iiit-pet"
    required = [base / "images", base / "annotations" / "trainval.txt", base / "annotations" / "test.txt"]
    files = "images/ and annotations/ (trainval.txt, test.txt)"
    parts = [
        _torchvision(
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
    train, val = _carve_val(trainval, val_fraction, seed)
    return RawSplits(list(parts[0].classes), train, val, test)


@register("food101")
def _food101(root: Path | None, download: bool, seed: int, val_fraction: float) -> RawSplits:
    """Food-101: official train (750 per class) / test (250); val = ``val_fraction`` of train."""
    from torchvision.datasets import Food101

    root = _data_root(root, "food101")
    base = root / "food-101"
    required = [base / "images", base / "meta" / "train.json", base / "meta" / "test.json"]
    parts = [
        _torchvision(
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
    train, val = _carve_val(full_train, val_fraction, seed)
    return RawSplits(list(parts[0].classes), train, val, test)


@register("caltech256")
def _caltech256(root: Path | None, download: bool, seed: int, val_fraction: float) -> RawSplits:
    """Caltech-256: the 256 object classes (``257.clutter`` left out), no official split.

    Per class, a seeded permutation: the first 60 images (``CALTECH256_TRAIN_PER_CLASS``) are the
    training pool, the rest the test split; the validation split is ``val_fraction`` of each class's
    pool (6 of 60), the training split the other 54.
    """
    root = _data_root(root, "caltech256")
    folder = root / "caltech256" / "256_ObjectCategories"
    if not folder.is_dir():
        from torchvision.datasets import Caltech256

        _torchvision(
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
    pool = take_per_class(targets, CALTECH256_TRAIN_PER_CLASS, [seed, _SALT_TEST])
    test_pos = np.setdiff1d(np.arange(len(paths)), pool)
    train, val = _carve_val(everything.subset(pool), val_fraction, seed)
    return RawSplits(classes, train, val, everything.subset(test_pos))


# --------------------------------------------------------------------------- CIFAR-100 and its class splits

SPLITS_DIR = Path(__file__).with_name("splits")  # copies of ../shared/data/splits/*.json
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

    root = _data_root(root, "cifar100")
    base = root / "cifar-100-python"
    required = [base / "train", base / "test", base / "meta"]
    out = {}
    for split in ("train", "test"):
        ds = _torchvision(
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
    train, val = _carve_val(LabeledImages(ImageArray(*arrays["train"])), val_fraction, seed)
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
        train, val = _carve_val(LabeledImages(_cifar_subset(arrays["train"], classes)), val_fraction, seed)
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


# --------------------------------------------------------------------------- Fashion-MNIST (IDX files)

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def read_idx(path: Path) -> np.ndarray:
    """Read a uint8 IDX file (``*-ubyte`` or ``*-ubyte.gz``) into an array of its dimensions."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not a uint8 IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise DatasetError(
            f"{path} is truncated: header says {shape}, found {len(data) - offset} bytes of data"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _idx_files(folder: Path) -> dict[str, Path] | None:
    """The four Fashion-MNIST files in ``folder`` (plain or .gz), or None if any is missing."""
    found = {}
    for stem in (s for pair in _FASHION_FILES.values() for s in pair):
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            return None
    return found


@register("fashion-mnist")
def _fashion_mnist(root: Path | None, download: bool, seed: int, val_fraction: float) -> RawSplits:
    """Fashion-MNIST: ``<root>/FashionMNIST/raw/*-ubyte(.gz)``, read in place (no copy).

    With no root: ``~/.cache/clce/data/fashion-mnist`` (see :func:`build_datasets`), then Debian's ``/usr/share/datasets/fashion-mnist``.
    Official train / test; val = ``val_fraction`` of each training class. (torchvision 0.29's own
    FashionMNIST reads only uncompressed files, so the .gz files are decoded here; torchvision still
    does the downloading.)
    """
    raw = _data_root(root, "fashion-mnist") / "FashionMNIST" / "raw"
    candidates = [raw] if root is not None else [raw, DEBIAN_FASHION_MNIST]
    files = next((f for f in map(_idx_files, candidates) if f is not None), None)
    if files is None:
        names = ", ".join(f"{s}(.gz)" for pair in _FASHION_FILES.values() for s in pair)
        debian = "" if root is not None else ", install Debian's dataset-fashion-mnist (apt-get)"
        if not download:
            raise DatasetError(
                f"Fashion-MNIST not found in {raw}: put {names} there{debian}, "
                "or pass --download (needs a network)"
            )
        from torchvision.datasets import FashionMNIST

        _torchvision(
            lambda: FashionMNIST(str(_data_root(root, "fashion-mnist")), train=True, download=True),
            "Fashion-MNIST",
            raw,
            names,
            [raw / stem for pair in _FASHION_FILES.values() for stem in pair],  # absent: a download
            download,
        )
        files = _idx_files(raw)
        if files is None:
            raise DatasetError(f"Fashion-MNIST download left no files in {raw}: put {names} there by hand")
    splits = {}
    for split, (images, labels) in _FASHION_FILES.items():
        x, y = read_idx(files[images]), read_idx(files[labels])
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"Fashion-MNIST {split} files disagree: images {x.shape}, labels {y.shape}")
        splits[split] = LabeledImages(ImageArray(x, y))
    train, val = _carve_val(splits["train"], val_fraction, seed)
    return RawSplits(list(FASHION_MNIST_CLASSES), train, val, splits["test"])


# --------------------------------------------------------------------------- image folders


def _scan_class_folders(
    folder: Path, class_to_idx: dict[str, int] | None = None
) -> tuple[list[str], ImageFiles]:
    """Class folders of image files (any depth below the class folder; torchvision's extensions).

    With ``class_to_idx`` (a val/test folder) every class must be one of the training classes.
    """
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = [d.name for d in class_dirs]
    if class_to_idx is None:
        class_to_idx = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in classes if c not in class_to_idx]
    if unknown:
        raise DatasetError(f"{folder} has classes the training folder lacks: {', '.join(unknown[:5])}")
    paths: list[Path] = []
    targets: list[int] = []
    empty = []
    for d in class_dirs:
        found = sorted(
            p
            for p in d.rglob("*")
            if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith(".")
        )
        empty += [] if found else [d.name]
        paths += found
        targets += [class_to_idx[d.name]] * len(found)
    if not paths:
        raise DatasetError(f"no images in class folders under {folder} (expected {folder}/CLASS/IMAGE.jpg)")
    if empty:
        log.warning("%s: %d class folders hold no images (%s)", folder, len(empty), ", ".join(empty[:5]))
    return classes, ImageFiles(paths, targets)


def class_folder_images(
    folder: str | os.PathLike[str], transform: Callable | None = None
) -> tuple[LabeledImages, list[str]]:
    """A folder of class folders as one labelled set (e.g. few-shot classes): ``(images, classes)``."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder of class folders")
    classes, files = _scan_class_folders(folder)
    return LabeledImages(files, transform=transform), classes


@register("imagefolder")
def _imagefolder(root: Path | None, download: bool, seed: int, val_fraction: float) -> RawSplits:
    """``--data-dir DIR``: ``DIR/train`` + ``DIR/val`` (+ optional ``DIR/test``) of class folders.

    Without ``val/``: ``val_fraction`` of each training class. Without ``test/``: no test split. A single
    folder of class folders (no ``train/``) is split per class, seeded: ``val_fraction`` to test,
    ``val_fraction`` of the rest to val, the remainder to train.
    """
    usage = "a folder with train/ and val/ (optional test/) of class folders, or one folder of class folders"
    if root is None:
        raise DatasetError(f"imagefolder needs --data-dir DIR: {usage}")
    if not root.is_dir():
        raise DatasetError(f"imagefolder: {root} does not exist; pass --data-dir DIR: {usage}")
    if (root / "train").is_dir():
        classes, files = _scan_class_folders(root / "train")
        index = {c: i for i, c in enumerate(classes)}
        train = LabeledImages(files)
        if (root / "val").is_dir():
            val = LabeledImages(_scan_class_folders(root / "val", index)[1])
        else:
            train, val = _carve_val(train, val_fraction, seed)
        test = (
            LabeledImages(_scan_class_folders(root / "test", index)[1]) if (root / "test").is_dir() else None
        )
        return RawSplits(classes, train, val, test)
    classes, files = _scan_class_folders(root)
    everything = LabeledImages(files)
    rest, test_pos = split_per_class(everything.targets, val_fraction, [seed, _SALT_TEST])
    train, val = _carve_val(everything.subset(rest), val_fraction, seed)
    return RawSplits(classes, train, val, everything.subset(test_pos))


# --------------------------------------------------------------------------- transforms and two views


@dataclass
class AugConfig:
    """Training augmentation (the same for both views)."""

    scale: tuple[float, float] = (
        0.25,
        1.0,
    )  # RandomResizedCrop area range (config.py crop_scale; timm: 0.08)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range
    hflip: float = 0.5  # horizontal-flip probability; 0 for data where mirroring changes the class (glyphs)
    color_jitter: float = 0.4  # brightness = contrast = saturation strength; 0 disables


def build_transforms(
    data_config: dict[str, Any],
    img_size: int | None = None,
    two_views: bool = False,
    aug: AugConfig | None = None,
) -> tuple[Callable, Callable]:
    """Train and eval transforms for RGB PIL images.

    Args:
        data_config: timm's ``resolve_data_config`` output (input_size, interpolation, crop_pct, mean, std).
        img_size: square training / eval size; None keeps ``data_config["input_size"]``.
        two_views: wrap the train transform in :class:`TwoViews` (items become ``(2, 3, H, W)``).
        aug: augmentation settings; None = ``AugConfig()``.

    Returns:
        ``(train_transform, eval_transform)``. Eval = timm's ``create_transform(is_training=False)``
        (resize to size / crop_pct, centre crop, normalise), exactly what serving reproduces.
        Train = RandomResizedCrop -> horizontal flip -> ColorJitter -> ToTensor -> Normalize, with the
        eval interpolation.
    """
    from timm.data import create_transform
    from timm.data.transforms import str_to_interp_mode
    from torchvision import transforms as tvt

    aug = aug or AugConfig()
    lo, hi = aug.scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"aug.scale must satisfy 0 < low <= high <= 1, got {aug.scale}")
    if not 0 <= aug.hflip <= 1 or aug.color_jitter < 0:
        raise ValueError(
            f"aug.hflip must lie in [0, 1] and color_jitter be >= 0, got {aug.hflip}, {aug.color_jitter}"
        )
    cfg = dict(data_config)
    if img_size is not None:
        cfg["input_size"] = (3, img_size, img_size)
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    eval_tf = create_transform(**{k: cfg[k] for k in keys if k in cfg}, is_training=False)
    size = tuple(cfg["input_size"][-2:])
    interpolation = str_to_interp_mode(cfg.get("interpolation", "bilinear"))
    steps: list[Callable] = [
        tvt.RandomResizedCrop(size, scale=aug.scale, ratio=aug.ratio, interpolation=interpolation)
    ]
    if aug.hflip > 0:
        steps.append(tvt.RandomHorizontalFlip(aug.hflip))
    if aug.color_jitter > 0:
        steps.append(tvt.ColorJitter(aug.color_jitter, aug.color_jitter, aug.color_jitter))
    steps += [tvt.ToTensor(), tvt.Normalize(cfg["mean"], cfg["std"])]
    train_tf: Callable = tvt.Compose(steps)
    return (TwoViews(train_tf) if two_views else train_tf), eval_tf


class TwoViews:
    """Apply a random transform twice: image -> ``(2, 3, H, W)``, two independent augmentations."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.stack([self.transform(image), self.transform(image)])  # (2, 3, H, W)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"


def stack_views(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, V, 3, H, W)``, ``(B,)`` -> ``(V*B, 3, H, W)``, ``(V*B,)`` in the CONTRACTS row layout.

    Rows are ``[view 1 of images 0..B-1; view 2 of images 0..B-1; ...]``; row ``v*B + i`` is view v+1
    of image i, and the labels are the image labels repeated V times.
    """
    b, v = images.shape[:2]
    rows = images.transpose(0, 1).reshape(v * b, *images.shape[2:])  # (V*B, 3, H, W)
    return rows, labels.repeat(v)  # (V*B,)


def two_view_collate(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """DataLoader ``collate_fn`` for :class:`TwoViews` items: ``(2B, 3, H, W)`` rows, ``(2B,)`` labels."""
    images, labels = default_collate(batch)  # (B, 2, 3, H, W), (B,)
    return stack_views(images, labels)
