"""Uploaded bytes -> validated, bounded decode -> ``(H, W, 3)`` uint8 network input: the HTTP side of it.

The image rule, the bounded decode and the eval transform live in :mod:`clce_core.preprocessing`
(numpy and Pillow, shared with training and the prediction CLI). This module adds what an upload
needs around them, in two steps so that a request's whole cost is known before any pixel is
decoded:

1. :func:`open_upload` reads the header: a non-empty file, a format from :data:`ALLOWED_FORMATS`,
   the per-image pixel limit (decompression bombs included), and JPEG's ``draft`` set up, so the
   number of pixels the decode will produce is known (:func:`decoded_pixels`; the service adds
   them up against the per-request budget);
2. :func:`decode` decodes and resamples only what the centre crop keeps.

Every failure is a :mod:`serving.errors` error naming the file (mapped to a 4xx JSON answer), never
a bare PIL exception.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from clce_core.preprocessing import EvalTransform, TooManyPixels, open_image
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


@contextlib.contextmanager
def _named_errors(filename: str, data: bytes, max_pixels: int) -> Iterator[None]:
    """Turn PIL's and the bounded loader's exceptions into :mod:`serving.errors` errors naming the file."""
    supported = ", ".join(ALLOWED_FORMATS)
    try:
        yield
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


def open_upload(
    data: bytes,
    filename: str,
    transform: EvalTransform,
    max_pixels: int = 40_000_000,
    draft: bool = True,
) -> Image.Image:
    """Validate an uploaded file's header and prepare its bounded decode (nothing is decoded yet).

    Args:
        data: The file's bytes.
        filename: Named in error messages.
        transform: The model's eval transform (a JPEG's ``draft`` scale depends on its resize target).
        max_pixels: Most ``width * height`` accepted, from the header.
        draft: Decode JPEGs at the smallest DCT scale that covers the resize (Pillow's ``draft``).

    Returns:
        The opened image; its ``size`` is what :func:`decode` will decode.

    Raises:
        EmptyFile, UnsupportedImage (not an image, or a format outside :data:`ALLOWED_FORMATS`),
        ImageTooLarge (over ``max_pixels``: decompression bombs included), InvalidImage (a corrupt header).
    """
    if not data:
        raise EmptyFile(f"file {filename!r} is empty")
    with _named_errors(filename, data, max_pixels):
        image = open_image(data, formats=ALLOWED_FORMATS, max_pixels=max_pixels)
        if draft:
            transform.draft(image)
        return image


def decoded_pixels(image: Image.Image) -> int:
    """How many pixels :func:`decode` decodes for an image from :func:`open_upload`."""
    width, height = image.size
    return width * height


def decode(image: Image.Image, filename: str, transform: EvalTransform) -> np.ndarray:
    """Decode an image from :func:`open_upload` into ``(H, W, 3)`` uint8 network input, then close it.

    Raises:
        InvalidImage: a truncated or corrupt file.
    """
    try:
        with _named_errors(filename, b"", 0):
            return transform.decode(image, draft=False)  # the draft, if any, was set when opened
    finally:
        image.close()


def preprocess(
    data: bytes, filename: str, transform: EvalTransform, max_pixels: int = 40_000_000, draft: bool = True
) -> np.ndarray:
    """Uploaded bytes -> ``(H, W, 3)`` uint8 network input (:func:`open_upload`, then :func:`decode`)."""
    return decode(open_upload(data, filename, transform, max_pixels, draft), filename, transform)
