"""Datasets for fine-tuning and evaluation: a registry, the split helpers, one module per family.

    from training.datasets import build_datasets, list_datasets
    splits = build_datasets("flowers102", None, False, train_tf, eval_tf)   # DatasetSplits

Layout (timm's manner: the registry is a leaf; this ``__init__`` imports the families, which register
themselves, so ``import training.datasets`` fills the registry however it is reached):

* :mod:`~training.datasets.registry`: ``register``, ``list_datasets``, ``get_builder``,
  ``build_datasets``, :class:`DatasetError`, the :class:`RawSplits` / :class:`DatasetSplits` containers.
* :mod:`~training.datasets.images`: :class:`ImageFiles`, :class:`ImageArray`, :class:`LabeledImages`.
* :mod:`~training.datasets.splits`: seeded per-class split decisions (``carve_val``, ...).
* :mod:`~training.datasets.files`: default roots (``$CLCE_DATA_HOME``) and one-line "not found" errors.
* Families: :mod:`~training.datasets.fashion_mnist` (the offline default),
  :mod:`~training.datasets.image_folders` (``imagefolder`` and class-folder sets),
  :mod:`~training.datasets.glyphs` (``glyphs64``: the glyph few-shot set and its class split),
  :mod:`~training.datasets.torchvision` (Flowers-102, Pets, Food-101, Caltech-256, CIFAR-100,
  CIFAR-FS, FC100).

Missing files raise :class:`DatasetError` with one line that says where to put which files, or to
pass ``--download``. Images are read with the one loading rule of :mod:`clce_core.preprocessing`;
transforms are in :mod:`training.transforms`.
"""

from __future__ import annotations

from training.datasets import (  # the families register themselves
    fashion_mnist,
    glyphs,
    image_folders,
    torchvision,
)
from training.datasets.files import DATA_HOME_ENV, DEFAULT_DATA_HOME
from training.datasets.glyphs import glyph_class_set
from training.datasets.image_folders import class_folder_images
from training.datasets.images import ImageArray, ImageFiles, LabeledImages
from training.datasets.registry import (
    Builder,
    DatasetError,
    DatasetSplits,
    RawSplits,
    build_datasets,
    get_builder,
    list_datasets,
    register,
)
from training.datasets.splits import carve_val, carve_val_and_test, split_per_class, take_per_class
from training.datasets.torchvision import FEWSHOT_SPLITS, build_fewshot_split, fewshot_classes

__all__ = [
    "DATA_HOME_ENV",
    "DEFAULT_DATA_HOME",
    "FEWSHOT_SPLITS",
    "Builder",
    "DatasetError",
    "DatasetSplits",
    "ImageArray",
    "ImageFiles",
    "LabeledImages",
    "RawSplits",
    "build_datasets",
    "build_fewshot_split",
    "carve_val",
    "carve_val_and_test",
    "class_folder_images",
    "fashion_mnist",
    "fewshot_classes",
    "get_builder",
    "glyph_class_set",
    "glyphs",
    "image_folders",
    "list_datasets",
    "register",
    "split_per_class",
    "take_per_class",
    "torchvision",
]
