"""Uploaded bytes -> validated PIL image -> normalised ``(3, H, W)`` float32: the HTTP side of it.

The image rule, its bounded decode and the eval transform live in :mod:`clce_core.preprocessing`
(numpy and Pillow, shared with training and the prediction CLI). :func:`decode_upload` adds what an
upload needs around them: a non-empty file, a format from :data:`ALLOWED_FORMATS`, the server's
pixel limit (decompression bombs included), and a :mod:`serving.errors` error naming the file for
every failure (mapped to a 4xx JSON answer), never a bare PIL exception.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from clce_core.preprocessing import EvalTransform, TooManyPixels, load_image
from serving.errors import EmptyFile, ImageTooLarge, InvalidImage, UnsupportedImage

#: Formats the server decodes; anything else Pillow recognises is answered with 415.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


def _sniff_format(data: bytes) -> str | None:
    """The format name Pillow gives these bytes when every plugin may look (header only, no decoding)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return probe.format
    except Exception:
        return None


def decode_upload(data: bytes, filename: str = "image", max_pixels: int = 40_000_000) -> Image.Image:
    """Validated, bounded decode of one uploaded file, then the loading rule.

    :func:`clce_core.preprocessing.load_image` restricted to :data:`ALLOWED_FORMATS` and
    ``max_pixels``, with every failure turned into a :mod:`serving.errors` error naming the file.

    Args:
        data: The file's bytes.
        filename: Named in error messages.
        max_pixels: Most ``width * height`` accepted; checked from the header, before decoding.

    Returns:
        An RGB PIL image, EXIF orientation applied.

    Raises:
        EmptyFile, UnsupportedImage (not an image, or a format outside :data:`ALLOWED_FORMATS`),
        ImageTooLarge (over ``max_pixels``: decompression bombs included), InvalidImage (truncated or
        corrupt).
    """
    if not data:
        raise EmptyFile(f"file {filename!r} is empty")
    supported = ", ".join(ALLOWED_FORMATS)
    try:
        return load_image(data, formats=ALLOWED_FORMATS, max_pixels=max_pixels)
    except TooManyPixels as e:
        raise ImageTooLarge(
            f"file {filename!r} is {e} (CLCE_MAX_IMAGE_PIXELS); send a smaller image"
        ) from None
    except Image.DecompressionBombError as e:  # Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS)
        raise ImageTooLarge(
            f"file {filename!r} has too many pixels ({e}); the limit is {max_pixels}"
        ) from None
    except UnidentifiedImageError:
        fmt = _sniff_format(data)
        if fmt is not None:
            raise UnsupportedImage(
                f"file {filename!r} is a {fmt} image, which the server does not accept; send {supported}"
            ) from None
        raise UnsupportedImage(
            f"file {filename!r} is not an image in a known format; send {supported}"
        ) from None
    except Exception as e:
        raise InvalidImage(f"file {filename!r} is truncated or corrupt: {e}") from None


def preprocess(
    data: bytes, filename: str, transform: EvalTransform, max_pixels: int = 40_000_000
) -> np.ndarray:
    """Uploaded bytes -> ``(3, H, W)`` float32 network input (see :func:`decode_upload` for the errors)."""
    return transform(decode_upload(data, filename, max_pixels))
