"""Folders of class folders (``CLASS/IMAGE.jpg``): the ``imagefolder`` dataset and few-shot class sets.

``--dataset imagefolder --data-dir DIR`` takes ``DIR/train`` + ``DIR/val`` (+ ``DIR/test``), or one
folder of class folders split per class (seeded). :func:`class_folder_images` reads a folder of class
folders as one labelled set, e.g. the novel classes that ``python -m training.evaluate`` embeds.
``import training.datasets`` registers ``imagefolder``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from training.datasets.images import ImageFiles, LabeledImages
from training.datasets.registry import DatasetError, RawSplits, register
from training.datasets.splits import carve_val, carve_val_and_test

__all__ = ["class_folder_images"]

log = logging.getLogger(__name__)


def _scan_class_folders(
    folder: Path, class_to_idx: dict[str, int] | None = None, only: list[str] | None = None
) -> tuple[list[str], ImageFiles]:
    """Class folders of image files (any depth below the class folder; torchvision's extensions).

    With ``class_to_idx`` (a val/test folder) every class must be one of the training classes. With
    ``only``, just those class folders, in that order (each must exist).
    """
    if only is not None:
        missing = [c for c in only if not (folder / c).is_dir()]
        if missing:
            raise DatasetError(
                f"{folder} lacks {len(missing)} of its {len(only)} class folders (e.g. {', '.join(missing[:3])})"
            )
        class_dirs = [folder / c for c in only]
    else:
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
    folder: str | os.PathLike[str], transform: Callable | None = None, classes: list[str] | None = None
) -> tuple[LabeledImages, list[str]]:
    """A folder of class folders as one labelled set (e.g. few-shot classes): ``(images, classes)``.

    ``classes``: only these class folders, labelled in this order (default: every one, sorted).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        state = "does not exist" if not folder.exists() else "is a file"
        raise DatasetError(f"{folder} {state}; give a folder of class folders ({folder}/CLASS/IMAGE.jpg)")
    classes, files = _scan_class_folders(folder, only=classes)
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
            train, val = carve_val(train, val_fraction, seed)
        test = (
            LabeledImages(_scan_class_folders(root / "test", index)[1]) if (root / "test").is_dir() else None
        )
        return RawSplits(classes, train, val, test)
    classes, files = _scan_class_folders(root)
    return RawSplits(classes, *carve_val_and_test(LabeledImages(files), val_fraction, seed))
