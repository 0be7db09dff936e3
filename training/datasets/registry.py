"""The dataset registry: register a builder by name, list the names, build a dataset's splits.

A leaf: it imports only the split helpers and the image containers, never a dataset family, so
``training.datasets``'s ``__init__`` can import the families (which register themselves here)
without a cycle.

* :func:`build_datasets` returns :class:`DatasetSplits` (train / val / test + class names). Every
  split carries ``targets`` (the integer labels, read without decoding an image) for the sampler.
* Adding a dataset = one builder function ``(root, download, seed, val_fraction) -> RawSplits``
  decorated with ``@register("name")`` in a family module that ``training/datasets/__init__.py``
  imports; the parametrised tests then ask for a fake of it in its on-disk format.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from training.datasets.images import LabeledImages
from training.datasets.splits import SALT_K, take_per_class

__all__ = [
    "Builder",
    "DatasetError",
    "DatasetSplits",
    "RawSplits",
    "build_datasets",
    "get_builder",
    "list_datasets",
    "register",
]


class DatasetError(Exception):
    """A dataset cannot be built; ``str(e)`` is one line saying what to do (print it, no traceback)."""


class RawSplits(NamedTuple):
    """What a builder returns: untransformed splits, validation already carved out."""

    classes: list[str]
    train: LabeledImages
    val: LabeledImages
    test: LabeledImages | None


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


def get_builder(name: str) -> Builder:
    """The builder registered as ``name``.

    Raises:
        DatasetError: no such dataset (the message lists the registered ones).
    """
    builder = _REGISTRY.get(name)
    if builder is None:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(list_datasets())}")
    return builder


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
    builder = get_builder(name)
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    if train_per_class is not None and train_per_class < 1:
        raise DatasetError(f"train_per_class must be at least 1, got {train_per_class}")
    raw = builder(None if root is None else Path(root).expanduser(), download, seed, val_fraction)
    train = raw.train
    if train_per_class is not None:
        train = train.subset(take_per_class(train.targets, train_per_class, [seed, SALT_K]))
    test = None if raw.test is None else raw.test.with_transform(eval_transform)
    return DatasetSplits(
        name,
        list(raw.classes),
        train.with_transform(train_transform),
        raw.val.with_transform(eval_transform),
        test,
    )
