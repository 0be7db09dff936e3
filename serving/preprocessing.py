"""Image bytes -> validated PIL image -> normalised ``(3, H, W)`` float32, in numpy and Pillow only.

Two steps, both the project's single rules:

1. **Loading** (CONTRACTS "Images", same as ``training.data.load_image``): apply the EXIF orientation,
   composite transparency on white, convert to RGB (grey repeated to three channels).
2. **The timm eval transform** of the model, re-implemented without torch. timm's
   ``transforms_imagenet_eval`` with ``crop_mode="center"`` computes
   ``scale_size = floor(size / crop_pct)`` per side; for a square input it is torchvision's
   ``Resize(scale_size)`` (shorter side to ``scale_size``, longer side ``int(scale_size * long / short)``),
   otherwise timm's ``ResizeKeepRatio`` (both sides divided by the smaller of the two ratios, then
   ``round``). Either resize is PIL's ``Image.resize`` with the resample filter named by
   ``interpolation`` (torchvision's ``pil_modes_mapping``) and is skipped when the size already
   matches. Then torchvision's ``CenterCrop`` (offsets ``int(round((H - h) / 2))``, zero padding
   when the crop is larger), ``ToTensor`` (``/255`` in float32) and ``Normalize``.
   ``crop_mode="squash"`` resizes straight to ``scale_size``. A test pins all of it to
   ``timm.data.create_transform`` within 1e-5.

Every failure raises a :mod:`serving.errors` error naming the file, never a bare PIL exception.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from serving.errors import EmptyFile, ImageTooLarge, InvalidImage, UnsupportedImage

#: Formats the server decodes; anything else Pillow recognises is answered with 415.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")

#: timm interpolation names -> PIL resample filters (as torchvision maps them for PIL images).
RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
CROP_MODES = ("center", "squash")
DEFAULT_CROP_PCT = 0.875  # timm's, used when a card has crop_pct null or 0


@dataclass(frozen=True)
class PreprocessConfig:
    """The eval preprocessing of a model, from its model card.

    Attributes:
        input_size: ``(3, H, W)`` of the network input.
        interpolation: One of :data:`RESAMPLE`'s keys.
        crop_pct: Crop fraction; the image is resized to ``floor(size / crop_pct)`` first.
        crop_mode: ``"center"`` (keep the aspect ratio, crop the centre) or ``"squash"``.
        mean, std: Per-channel normalisation of ``[0, 1]`` pixel values.
    """

    input_size: tuple[int, int, int]
    interpolation: str = "bicubic"
    crop_pct: float = DEFAULT_CROP_PCT
    crop_mode: str = "center"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
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
    def from_card(cls, card: Mapping[str, Any]) -> PreprocessConfig:
        """Read ``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``."""
        return cls(
            input_size=tuple(int(v) for v in card["input_size"]),  # type: ignore[arg-type]
            interpolation=str(card.get("interpolation") or "bilinear"),
            crop_pct=float(card.get("crop_pct") or DEFAULT_CROP_PCT),
            crop_mode=str(card.get("crop_mode") or "center"),
            mean=tuple(float(v) for v in card["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in card["std"]),  # type: ignore[arg-type]
        )

    @property
    def scale_size(self) -> tuple[int, int]:
        """``(floor(H / crop_pct), floor(W / crop_pct))``, timm's resize target before the crop."""
        return math.floor(self.input_size[1] / self.crop_pct), math.floor(self.input_size[2] / self.crop_pct)


# ------------------------------------------------------------------------------------ loading rule


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> RGB: transparency composited on white, grey repeated, 16-bit grey scaled to 8."""
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


def _sniff_format(data: bytes) -> str | None:
    """The format name Pillow gives these bytes when every plugin may look (header only, no decoding)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return probe.format
    except Exception:
        return None


def load_image(data: bytes, filename: str = "image", max_pixels: int = 40_000_000) -> Image.Image:
    """Decode and validate one uploaded image, then apply the loading rule.

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
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
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
        raise InvalidImage(f"file {filename!r} could not be read as an image: {e}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"file {filename!r} is {width}x{height} = {width * height} pixels, more than the limit of "
                f"{max_pixels} (CLCE_MAX_IMAGE_PIXELS); send a smaller image"
            )
        if width < 1 or height < 1:
            raise InvalidImage(f"file {filename!r} has no pixels ({width}x{height})")
        try:
            image.load()
        except Exception as e:
            raise InvalidImage(f"file {filename!r} is truncated or corrupt: {e}") from None
        try:
            oriented = ImageOps.exif_transpose(image)
        except Exception:  # malformed EXIF: nothing trustworthy to apply; keep the pixels as stored
            oriented = image
        try:
            return to_rgb(oriented)
        except Exception as e:
            raise InvalidImage(f"file {filename!r} could not be converted to RGB: {e}") from None


# ---------------------------------------------------------------------------------- eval transform


def _resized_size(width: int, height: int, config: PreprocessConfig) -> tuple[int, int]:
    """``(new_width, new_height)`` of the resize step, exactly as timm/torchvision compute it."""
    scale_h, scale_w = config.scale_size
    if config.crop_mode == "squash":
        return scale_w, scale_h
    if scale_h == scale_w:  # torchvision Resize(int): shorter side to scale_size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = scale_h, int(scale_h * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)
    # timm ResizeKeepRatio(longest=0): divide both sides by the smaller ratio
    ratio = min(height / scale_h, width / scale_w)
    return round(width / ratio), round(height / ratio)


def _center_crop(image: Image.Image, crop_h: int, crop_w: int) -> Image.Image:
    """torchvision ``CenterCrop``: zero padding where the crop is larger, then a rounded centre box."""
    width, height = image.size
    if crop_w > width or crop_h > height:
        left = (crop_w - width) // 2 if crop_w > width else 0
        top = (crop_h - height) // 2 if crop_h > height else 0
        right = (crop_w - width + 1) // 2 if crop_w > width else 0
        bottom = (crop_h - height + 1) // 2 if crop_h > height else 0
        padded = Image.new(image.mode, (width + left + right, height + top + bottom), 0)
        padded.paste(image, (left, top))
        image = padded
        width, height = image.size
        if (width, height) == (crop_w, crop_h):
            return image
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


def resize_and_crop(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    """Resize (timm's eval rule) and centre-crop an RGB image to ``input_size``."""
    size = _resized_size(image.width, image.height, config)
    if size != image.size:
        image = image.resize(size, RESAMPLE[config.interpolation])
    return _center_crop(image, config.input_size[1], config.input_size[2])


def normalize(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """RGB image ``(H, W)`` -> ``(3, H, W)`` float32: ``/255``, then ``(x - mean) / std``."""
    x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32, order="C")  # (3, H, W), new
    # in place, in torchvision's order and float32 arithmetic: x / 255, then (x - mean) / std
    np.divide(x, np.float32(255.0), out=x)
    np.subtract(x, np.asarray(config.mean, dtype=np.float32)[:, None, None], out=x)
    np.divide(x, np.asarray(config.std, dtype=np.float32)[:, None, None], out=x)
    return x


def image_to_array(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """The eval transform of an RGB PIL image: ``(3, H, W)`` float32, equal to timm's within 1e-5."""
    return normalize(resize_and_crop(image, config), config)


def preprocess(
    data: bytes, filename: str, config: PreprocessConfig, max_pixels: int = 40_000_000
) -> np.ndarray:
    """Uploaded bytes -> ``(3, H, W)`` float32 network input (see :func:`load_image` for the errors)."""
    return image_to_array(load_image(data, filename, max_pixels), config)
