"""Labelled images, read lazily: files or an in-memory array as a source, and splits of a source.

Every image is decoded with the one loading rule of :mod:`clce_core.preprocessing` (EXIF orientation,
transparency on white, RGB). A split is a :class:`LabeledImages`: a source, the item indices it takes
and a transform; splits of one dataset share their source, so carving a split copies no image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from clce_core.preprocessing import array_to_rgb, load_image

__all__ = ["ImageArray", "ImageFiles", "LabeledImages"]


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
