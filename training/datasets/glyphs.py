"""glyphs64: the Omniglot-like glyph set, with its class split (``training/splits/glyphs64.json``).

Class = one character, image = that character in one font (20 fonts per class, 64×64 grey PNG).
The folder holds ``base/`` (128 classes: Latin, digits, Greek, Cyrillic) and ``novel/`` (144 classes:
Thai, Armenian, Georgian, Hebrew); ``python -m benchmarks.render_glyphs`` renders it from Debian's fonts.

* ``--dataset glyphs64`` fine-tunes on the 96 ``train`` classes of ``base/``; each class's images are
  split per class (seeded) into train / val (chooses ``best.pt``) / test (base-class top-1), as one
  folder of class folders is by ``imagefolder``.
* :func:`glyph_class_set` gives the few-shot class sets (``python -m training.evaluate --dataset
  glyphs64 --split S``): ``train`` = the 96 fine-tuning classes, ``val`` = the 32 other base classes, held
  out for choosing a recipe (as CIFAR-FS and FC100 hold out validation classes), ``test`` = the 144
  novel classes, evaluated once per final run.

Root: ``--data-dir``, else ``$CLCE_GLYPHS_DIR``, else ``$CLCE_DATA_HOME/glyphs64``
(``~/.cache/clce/data/glyphs64``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

from training.datasets.files import data_root
from training.datasets.image_folders import class_folder_images
from training.datasets.images import LabeledImages
from training.datasets.registry import DatasetError, RawSplits, register
from training.datasets.splits import carve_val_and_test

__all__ = ["GLYPHS_ENV", "glyph_class_set", "glyph_classes", "glyphs_root"]

GLYPHS_ENV = "CLCE_GLYPHS_DIR"
SPLIT_FILE = Path(__file__).resolve().parents[1] / "splits" / "glyphs64.json"
_FOLDER = {"train": "base", "val": "base", "test": "novel"}  # few-shot split -> subfolder
_KEY = {"train": "train", "val": "val", "test": "novel"}  # few-shot split -> class list in SPLIT_FILE


def glyphs_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The glyph set's folder: ``root``, else ``$CLCE_GLYPHS_DIR``, else ``$CLCE_DATA_HOME/glyphs64``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(GLYPHS_ENV)
    return Path(env).expanduser() if env else data_root(None, "glyphs64")


@cache
def _split_file() -> dict[str, list[str]]:
    return json.loads(SPLIT_FILE.read_text(encoding="utf-8"))


def glyph_classes(split: str) -> list[str]:
    """The class names of a few-shot split (``train``, ``val`` or ``test``), sorted."""
    if split not in _KEY:
        raise DatasetError(f"glyphs64 splits are train, val and test, got {split!r}")
    return list(_split_file()[_KEY[split]])


def glyph_class_set(
    split: str, root: str | os.PathLike[str] | None = None, transform: Callable | None = None
) -> tuple[LabeledImages, list[str]]:
    """All images of a few-shot split's classes: ``(images, classes)``, labels index ``classes``.

    Raises:
        DatasetError: the folder or some of its class folders are missing (says how to render them).
    """
    folder = glyphs_root(root) / _FOLDER.get(split, "")
    if not folder.is_dir():
        raise DatasetError(
            f"the glyph set is not at {folder.parent}: render it with `python -m benchmarks.render_glyphs "
            f"--output {folder.parent}`, or pass --data-dir / set ${GLYPHS_ENV} to where it is"
        )
    return class_folder_images(folder, transform, classes=glyph_classes(split))


@register("glyphs64")
def _glyphs64(root: Path | None, download: bool, seed: int, val_fraction: float) -> RawSplits:
    """The 96 fine-tuning classes of ``base/``, each split per class into train / val / test."""
    images, classes = glyph_class_set("train", root)
    return RawSplits(classes, *carve_val_and_test(images, val_fraction, seed))
