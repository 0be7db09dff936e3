"""Images in, network input out: the one loading rule and the eval transform, in numpy and Pillow only.

No torch and no web framework, so training (datasets), the prediction CLI and serving share it:

1. **The loading rule** (CONTRACTS "Images"; in :mod:`clce_core.loading`, re-exported here): apply
   the EXIF orientation, composite transparency on white, convert to RGB (grey repeated to three
   channels, 16-bit grey scaled to 8 bits). :func:`load_image` opens a path, file object or bytes
   (optionally only some formats, and with a pixel limit checked before decoding);
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
     padding with the mean colour ``round(255 * mean)``. A side that would round to 0 pixels (an
     aspect ratio beyond ``scale_size : 0.5``, where timm fails) is kept at 1.

   Every resize is PIL's ``Image.resize`` with the filter named by ``interpolation`` (torchvision's
   ``pil_modes_mapping``), skipped when the size already matches; only the region the crop keeps is
   resampled (:mod:`clce_core.crop_window`: the same filter taps, so the same pixels, with work
   bounded by the output size). Then ``ToTensor`` (``/255`` in float32) and ``Normalize``. Tests pin
   all of it to ``timm.data.create_transform`` within 1e-5.
3. **A bounded decode** for servers (:meth:`EvalTransform.decode`): an opened file is decoded with
   Pillow's JPEG ``draft`` (DCT-domain downscale by 2, 4 or 8) where the smaller decode is still at
   least :data:`DRAFT_HEADROOM` times the resize target, and only the source region the crop reads
   is converted to RGB. Without the
   draft (``draft=False``, or where no downscale fits) the result is exactly the transform of
   :func:`load_image`'s image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from clce_core.crop_window import CropWindow, crop_window, render
from clce_core.loading import (
    SWAPPING_ORIENTATIONS,
    TooManyPixels,
    array_to_rgb,
    load_image,
    open_image,
    orient,
    orientation,
    to_rgb,
    upright_rgb,
)

__all__ = [
    "CROP_MODES",
    "DEFAULT_CROP_PCT",
    "RESAMPLE",
    "EvalTransform",
    "TooManyPixels",
    "array_to_rgb",
    "load_image",
    "open_image",
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
#: A JPEG is decoded at reduced DCT scale only down to this many times the resize target: at 1x
#: (the smallest decode that covers it) a 512 px photo's lite0 embedding moved to cosine 0.990 of
#: the full decode's, at 2x it is decoded whole (benchmarks/draft_effect.py, docs/serving.md).
DRAFT_HEADROOM = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        return max(1, round(width / ratio)), max(1, round(height / ratio))

    def window(self, width: int, height: int) -> CropWindow:
        """What the crop keeps of a ``width`` x ``height`` image after the resize step."""
        _, crop_h, crop_w = self.input_size
        return crop_window((width, height), self.resized_size(width, height), (crop_w, crop_h))

    @property
    def resample(self) -> Image.Resampling:
        """The PIL filter of ``interpolation``."""
        return RESAMPLE[self.interpolation]

    @property
    def fill(self) -> tuple[int, int, int]:
        """The padding colour: the mean colour for ``border``, else black (torchvision's zero padding)."""
        if self.crop_mode == "border":
            return tuple(round(255 * v) for v in self.mean)  # type: ignore[return-value]
        return (0, 0, 0)

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """The geometric part: resize, then centre crop (or pad) to ``input_size``; a new image.

        Only the region the crop keeps is resampled (:func:`clce_core.crop_window.render`).
        """
        return render(image, self.window(*image.size), self.resample, self.fill)

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> ``(H, W, 3)`` uint8: the geometric part as pixels, before ``/255`` and Normalize.

        Raises:
            ValueError: the image is not RGB (apply :func:`load_image` / :func:`to_rgb` first).
        """
        if image.mode != "RGB":
            raise ValueError(f"EvalTransform needs an RGB image, got mode {image.mode}; use to_rgb first")
        return np.asarray(self.resize_and_crop(image), dtype=np.uint8)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """``(..., H, W, 3)`` uint8 -> ``(..., 3, H, W)`` float32: ``(x / 255 - mean) / std``, C-contiguous.

        In place, in torchvision's order and float32 arithmetic (``ToTensor`` then ``Normalize``);
        serving runs the same operations inside the ONNX graph (:mod:`serving.pixel_graph`).
        """
        x = np.moveaxis(pixels, -1, -3).astype(np.float32, order="C")  # (..., 3, H, W)
        np.divide(x, np.float32(255.0), out=x)
        np.subtract(x, np.asarray(self.mean, dtype=np.float32)[:, None, None], out=x)
        np.divide(x, np.asarray(self.std, dtype=np.float32)[:, None, None], out=x)
        return x

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> ``(3, H, W)`` float32 network input, C-contiguous.

        Raises:
            ValueError: the image is not RGB (apply :func:`load_image` / :func:`to_rgb` first).
        """
        return self.normalize(self.to_uint8(image))

    def batch(self, images: Iterable[Image.Image]) -> np.ndarray:
        """RGB PIL images -> ``(N, 3, H, W)`` float32 (``N`` may be 0)."""
        images = list(images)
        out = np.empty((len(images), *self.input_size), dtype=np.float32)  # (N, 3, H, W)
        for i, image in enumerate(images):
            out[i] = self(image)
        return out

    # ------------------------------------------------------------------------------ bounded decode

    def draft(self, image: Image.Image, headroom: int = DRAFT_HEADROOM) -> tuple[int, int]:
        """Ask an opened, not yet decoded JPEG for a smaller DCT-domain decode that still covers the resize.

        Pillow's ``draft`` decodes at 1/2, 1/4 or 1/8 scale; the scale chosen is the smallest whose
        decode is still at least ``headroom`` times the resize target on both sides (in the image's
        EXIF orientation), so the eval transform's own filter still does the last step of the
        downscale. Other formats, and JPEGs no downscale fits, are left as they are.

        Returns:
            ``(width, height)`` of the decode that ``load()`` will now produce (as stored).
        """
        if image.format != "JPEG":
            return image.size
        width, height = image.size
        swap = orientation(image) in SWAPPING_ORIENTATIONS
        target_w, target_h = self.resized_size(*((height, width) if swap else (width, height)))
        if swap:
            target_w, target_h = target_h, target_w
        cover = (headroom * target_w, headroom * target_h)
        if min(width // cover[0], height // cover[1]) >= 2:
            image.draft(image.mode, cover)
        return image.size

    def decode(self, image: Image.Image, *, draft: bool = True) -> np.ndarray:
        """An opened image file -> ``(H, W, 3)`` uint8 network input, with bounded work.

        :meth:`draft` (unless ``draft=False`` or already called), decode, EXIF orientation, then
        only the source region the crop reads is converted to RGB (:func:`to_rgb`) and resampled.
        Without a draft the pixels equal ``to_uint8(upright_rgb(image))`` exactly.

        Raises:
            OSError / ValueError: a truncated or corrupt file.
        """
        if draft:
            self.draft(image)
        image.load()
        image = orient(image)
        window = self.window(*image.size)
        region, origin = image, (0, 0)
        if image.mode not in ("I", "F"):  # to_rgb scales those by the whole image's maximum
            box = window.source_region(self.resample)
            if box != (0, 0, *image.size):
                region, origin = image.crop(box), box[:2]
        rgb = region if region.mode == "RGB" and "transparency" not in region.info else to_rgb(region)
        return np.asarray(render(rgb, window, self.resample, self.fill, origin), dtype=np.uint8)
