"""Datasets for fine-tuning: a registry of datasets, their splits, the offline ones.

* :func:`build_datasets` returns :class:`DatasetSplits` (train / val / test + class names). Every
  split carries ``targets`` (the integer labels, read without decoding an image) for the sampler.
  Adding a dataset = one builder function decorated with ``@register("name")``; the parametrised
  tests then ask for a fake of it in its on-disk format.
* Here: the registry and the split helpers. The builders live in :mod:`training.fashion_mnist`
  (the offline default), :mod:`training.image_folders` (``imagefolder``) and
  :mod:`training.torchvision_datasets` (Flowers-102, CIFAR-100, ...), imported at the end of this
  module so that ``import training.data`` fills the registry. Images are read with the one
  loading rule of :mod:`clce_core.preprocessing`; transforms are in :mod:`training.transforms`.

Splits and seeds: where a dataset has no validation split, ``val_fraction`` of each training class
is held out (seeded, at least one image of a class with two or more). ``train_per_class=K`` then
keeps K images per class of what is left (seeded; the K-subsets are nested: K=5 ⊂ K=10 for one seed),
so the validation split does not depend on K. Missing files raise :class:`DatasetError` with one
line that says where to put which files, or to pass ``--download``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from clce_core.preprocessing import array_to_rgb, load_image

__all__ = [
    "DatasetError",
    "DatasetSplits",
    "ImageArray",
    "ImageFiles",
    "LabeledImages",
    "RawSplits",
    "build_datasets",
    "list_datasets",
    "register",
    "split_per_class",
    "take_per_class",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

DATA_HOME_ENV = "CLCE_DATA_HOME"  # with no root given, a dataset lives in $CLCE_DATA_HOME/<folder>
DEFAULT_DATA_HOME = "~/.cache/clce/data"  # ... or here, when the variable is unset
# Salts make independent seeded streams: the validation split does not change with K, etc.
_SALT_VAL, _SALT_K, _SALT_TEST = 0, 1, 2


class DatasetError(Exception):
    """A dataset cannot be built; ``str(e)`` is one line saying what to do (print it, no traceback)."""


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


# The other builders register themselves; imported last, once the registry exists.
from training import fashion_mnist, image_folders, torchvision_datasets  # noqa: E402, F401  (fill the registry)
