"""Images in, network input out: the one loading rule and the eval transform, in numpy and Pillow only.

No torch and no web framework, so training (datasets), the prediction CLI and serving share it:

1. **The loading rule** (CONTRACTS "Images"): apply the EXIF orientation, composite transparency on
   white, convert to RGB (grey repeated to three channels, 16-bit grey scaled to 8 bits).
   :func:`load_image` opens a path, file object or bytes (optionally only some formats, and with a
   pixel limit checked before decoding: serving's upload decoder is built on it);
   :func:`upright_rgb` applies the rule to an image already opened; :func:`array_to_rgb` converts
   the uint8 arrays of CIFAR / Fashion-MNIST.
2. **timm's eval transform** of a model (:class:`EvalTransform`, from its model card or timm data
   config), re-implemented without torch. ``transforms_imagenet_eval`` computes
   ``scale_size = floor(size / crop_pct)`` per side, then by ``crop_mode``:

   * ``center``: for a square ``scale_size``, torchvision's ``Resize(scale_size)`` (shorter side to
     ``scale_size``, longer side ``int(scale_size * long / short)``); otherwise timm's
     ``ResizeKeepRatio`` (both sides divided by the smaller of the two ratios, then ``round``). Then
     torchvision's ``CenterCrop`` (offsets ``int(round((H - h) / 2))``, zero padding where the crop
     is larger).
   * ``squash``: resize straight to ``scale_size``, then ``CenterCrop``.
   * ``border``: ``ResizeKeepRatio(longest=1)`` (the larger ratio), then timm's ``CenterCropOrPad``
     padding with the mean colour ``round(255 * mean)``.

   Every resize is PIL's ``Image.resize`` with the filter named by ``interpolation`` (torchvision's
   ``pil_modes_mapping``), skipped when the size already matches. Then ``ToTensor`` (``/255`` in
   float32) and ``Normalize``. Tests pin all of it to ``timm.data.create_transform`` within 1e-5.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "CROP_MODES",
    "DEFAULT_CROP_PCT",
    "RESAMPLE",
    "EvalTransform",
    "TooManyPixels",
    "array_to_rgb",
    "center_crop_or_pad",
    "load_image",
    "to_rgb",
    "upright_rgb",
]

#: timm interpolation names -> PIL resample filters (as torchvision maps them for PIL images).
RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
CROP_MODES = ("center", "squash", "border")
DEFAULT_CROP_PCT = 0.875  # timm's, used when a card has crop_pct null or 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------ loading rule


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


def upright_rgb(image: Image.Image) -> Image.Image:
    """The loading rule on an opened image: EXIF orientation applied, then :func:`to_rgb` (a new image).

    Malformed EXIF is ignored (nothing trustworthy to apply; the pixels are kept as stored).
    """
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception:  # Pillow raises assorted errors on broken EXIF blocks
        oriented = image
    return to_rgb(oriented)


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


def load_image(
    src: str | os.PathLike[str] | BinaryIO | bytes,
    *,
    formats: Sequence[str] | None = None,
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
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    with Image.open(src, formats=formats) as image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise TooManyPixels((width, height), max_pixels)
        if width < 1 or height < 1:
            raise ValueError(f"the image has no pixels ({width}x{height})")
        image.load()
        return upright_rgb(image)


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB array -> PIL RGB image."""
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


# ---------------------------------------------------------------------------------- eval transform


@dataclass(frozen=True)
class EvalTransform:
    """timm's eval transform for one model: RGB PIL image -> ``(3, H, W)`` float32.

    Attributes:
        input_size: ``(3, H, W)`` of the network input.
        interpolation: One of :data:`RESAMPLE`'s keys.
        crop_pct: The image is resized to ``floor(size / crop_pct)`` before the crop.
        crop_mode: ``center`` (shorter side, crop), ``squash`` (both sides, crop) or ``border``
            (longer side, pad with the mean colour).
        mean, std: Per-channel normalisation of ``[0, 1]`` pixel values.

    Raises:
        ValueError: on construction, for a setting it cannot reproduce (the message names it).
    """

    input_size: tuple[int, int, int]
    interpolation: str = "bicubic"
    crop_pct: float = DEFAULT_CROP_PCT
    crop_mode: str = "center"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # accept lists (JSON) and numpy scalars; store plain tuples so the transform is hashable
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        if len(self.input_size) != 3 or self.input_size[0] != 3 or min(self.input_size) < 1:
            raise ValueError(f"input_size must be [3, H, W] with H, W >= 1, got {list(self.input_size)}")
        if self.interpolation not in RESAMPLE:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not supported; use one of {', '.join(RESAMPLE)}"
            )
        if self.crop_mode not in CROP_MODES:
            raise ValueError(
                f"crop_mode {self.crop_mode!r} is not supported; use one of {', '.join(CROP_MODES)}"
            )
        if not self.crop_pct > 0:
            raise ValueError(f"crop_pct must be positive, got {self.crop_pct}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3:
                raise ValueError(f"{name} must have 3 values (RGB), got {list(values)}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {list(self.std)}")

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> EvalTransform:
        """From a model card or a timm data config: ``input_size``, ``mean``, ``std`` (required),
        ``interpolation`` (default ``bilinear``, timm's), ``crop_pct`` (0.875), ``crop_mode`` (``center``).

        Raises:
            KeyError: a required key is missing. ValueError / TypeError: a value is unusable.
        """
        return cls(
            input_size=card["input_size"],
            interpolation=str(card.get("interpolation") or "bilinear"),
            crop_pct=card.get("crop_pct") or DEFAULT_CROP_PCT,
            crop_mode=str(card.get("crop_mode") or "center"),
            mean=card["mean"],
            std=card["std"],
        )

    @property
    def scale_size(self) -> tuple[int, int]:
        """``(floor(H / crop_pct), floor(W / crop_pct))``, timm's resize target before the crop."""
        return math.floor(self.input_size[1] / self.crop_pct), math.floor(self.input_size[2] / self.crop_pct)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after the resize step, computed as timm / torchvision do."""
        scale_h, scale_w = self.scale_size
        if self.crop_mode == "squash":
            return scale_w, scale_h
        if self.crop_mode == "center" and scale_h == scale_w:  # torchvision Resize(int): shorter side
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = scale_h, int(scale_h * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        # timm ResizeKeepRatio: longest=0 (center) matches the shorter side, longest=1 (border) the longer
        ratio_h, ratio_w = height / scale_h, width / scale_w
        ratio = max(ratio_h, ratio_w) if self.crop_mode == "border" else min(ratio_h, ratio_w)
        return round(width / ratio), round(height / ratio)

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """The geometric part: resize, then centre crop (or pad) to ``input_size``; an RGB image."""
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, RESAMPLE[self.interpolation])
        fill = tuple(round(255 * v) for v in self.mean) if self.crop_mode == "border" else (0, 0, 0)
        return center_crop_or_pad(image, self.input_size[1], self.input_size[2], fill)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> ``(3, H, W)`` float32 network input, C-contiguous.

        Raises:
            ValueError: the image is not RGB (apply :func:`load_image` / :func:`to_rgb` first).
        """
        if image.mode != "RGB":
            raise ValueError(f"EvalTransform needs an RGB image, got mode {image.mode}; use to_rgb first")
        image = self.resize_and_crop(image)
        x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32, order="C")  # (3, H, W)
        # in place, in torchvision's order and float32 arithmetic: x / 255, then (x - mean) / std
        np.divide(x, np.float32(255.0), out=x)
        np.subtract(x, np.asarray(self.mean, dtype=np.float32)[:, None, None], out=x)
        np.divide(x, np.asarray(self.std, dtype=np.float32)[:, None, None], out=x)
        return x

    def batch(self, images: Iterable[Image.Image]) -> np.ndarray:
        """RGB PIL images -> ``(N, 3, H, W)`` float32 (``N`` may be 0)."""
        images = list(images)
        out = np.empty((len(images), *self.input_size), dtype=np.float32)  # (N, 3, H, W)
        for i, image in enumerate(images):
            out[i] = self(image)
        return out


def center_crop_or_pad(image: Image.Image, crop_h: int, crop_w: int, fill: tuple[int, ...]) -> Image.Image:
    """torchvision ``CenterCrop`` / timm ``CenterCropOrPad``: pad where too small, then the rounded centre."""
    width, height = image.size
    if crop_w > width or crop_h > height:
        left = (crop_w - width) // 2 if crop_w > width else 0
        top = (crop_h - height) // 2 if crop_h > height else 0
        right = (crop_w - width + 1) // 2 if crop_w > width else 0
        bottom = (crop_h - height + 1) // 2 if crop_h > height else 0
        padded = Image.new(image.mode, (width + left + right, height + top + bottom), fill)
        padded.paste(image, (left, top))
        image, (width, height) = padded, padded.size
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    if (left, top, width, height) == (0, 0, crop_w, crop_h):
        return image
    return image.crop((left, top, left + crop_w, top + crop_h))
