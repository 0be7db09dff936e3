"""The one loading rule (CONTRACTS "Images"): EXIF orientation, transparency on white, RGB.

numpy and Pillow only, so training (datasets), the prediction CLI and serving share it:

- :func:`open_image` reads a file's header (optionally only some formats, with a pixel limit
  checked before any pixel is decoded) and leaves the decode to the caller, who may first ask
  Pillow for a smaller JPEG decode (``Image.draft``; see
  :meth:`clce_core.preprocessing.EvalTransform.decode`);
- :func:`load_image` opens, decodes completely and applies the rule: EXIF-oriented RGB;
- :func:`upright_rgb` applies the rule to an image already decoded, :func:`orient` and
  :func:`to_rgb` its two halves; :func:`array_to_rgb` converts the uint8 arrays of CIFAR /
  Fashion-MNIST.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "ORIENTATION_TAG",
    "TooManyPixels",
    "array_to_rgb",
    "load_image",
    "open_image",
    "orient",
    "orientation",
    "to_rgb",
    "upright_rgb",
]

ORIENTATION_TAG = 0x0112  # EXIF "Orientation": 1 as stored, 2-8 flipped and/or rotated
#: Orientations that swap width and height (a quarter turn, possibly flipped).
SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> RGB: transparency composited on white, grey repeated to 3 channels.

    16-bit grey (``I;16``, or ``I`` / ``F`` with values above 255) is scaled to 8 bits. Always returns
    a new image.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def orientation(image: Image.Image) -> int:
    """The image's EXIF orientation, 1 to 8 (1: as stored; also for missing or malformed EXIF)."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # Pillow raises assorted errors on broken EXIF blocks
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; the image itself when it is already upright.

    Malformed EXIF is ignored (nothing trustworthy to apply; the pixels are kept as stored).
    """
    if orientation(image) == 1:
        return image  # no copy: the caller converts (to_rgb) or crops next
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def upright_rgb(image: Image.Image) -> Image.Image:
    """The loading rule on an opened image: EXIF orientation applied, then :func:`to_rgb` (a new image)."""
    return to_rgb(orient(image))


class TooManyPixels(ValueError):
    """An image's header gives more pixels than the caller's limit (it was not decoded).

    Attributes:
        size: ``(width, height)`` from the header.
        max_pixels: The limit.
    """

    def __init__(self, size: tuple[int, int], max_pixels: int) -> None:
        self.size, self.max_pixels = size, max_pixels
        w, h = size
        super().__init__(f"{w}x{h} = {w * h} pixels, more than the limit of {max_pixels}")


def open_image(
    src: str | os.PathLike[str] | BinaryIO | bytes,
    *,
    formats: tuple[str, ...] | list[str] | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Open an image file (path, binary file object or bytes): its header only, checked.

    Args:
        src: The file.
        formats: Pillow format names to accept (e.g. ``("JPEG", "PNG")``); None: any Pillow reads.
        max_pixels: Most ``width * height`` accepted; None: only Pillow's own decompression-bomb limit.

    Returns:
        The opened, not yet decoded image (call ``load()``, or use it as a context manager).

    Raises:
        PIL.UnidentifiedImageError: not an image (or not in ``formats``).
        PIL.Image.DecompressionBombError: beyond Pillow's own limit.
        TooManyPixels: beyond ``max_pixels``.
        ValueError: an image without pixels.
    """
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    image = Image.open(src, formats=formats)
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise TooManyPixels((width, height), max_pixels)
    if width < 1 or height < 1:
        image.close()
        raise ValueError(f"the image has no pixels ({width}x{height})")
    return image


def load_image(
    src: str | os.PathLike[str] | BinaryIO | bytes,
    *,
    formats: tuple[str, ...] | list[str] | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """Open an image file (path, binary file object or bytes) the one way: EXIF-oriented RGB.

    The decode is complete (a truncated file fails here, not later) and, with ``max_pixels``,
    bounded: the size is checked from the header before any pixel is decoded.

    Args:
        src: The file.
        formats: Pillow format names to accept (e.g. ``("JPEG", "PNG")``); None: any Pillow reads.
        max_pixels: Most ``width * height`` accepted; None: only Pillow's own decompression-bomb limit.

    Raises:
        PIL.UnidentifiedImageError: not an image (or not in ``formats``).
        PIL.Image.DecompressionBombError: beyond Pillow's own limit.
        TooManyPixels: beyond ``max_pixels``.
        OSError / ValueError: an unreadable, truncated or corrupt file, or one without pixels.
    """
    with open_image(src, formats=formats, max_pixels=max_pixels) as image:
        image.load()
        return upright_rgb(image)


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB array -> PIL RGB image."""
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
