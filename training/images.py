"""The one image-loading rule (CONTRACTS "Images"): EXIF orientation, transparency on white, RGB.

Every file-based dataset reads through :func:`load_image`; array datasets (CIFAR, Fashion-MNIST)
convert their arrays with :func:`array_to_rgb`. PIL and numpy only (no torch), so serving can mirror
this rule line for line.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

__all__ = ["array_to_rgb", "load_image", "to_rgb"]


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
