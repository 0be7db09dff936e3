"""Resize only what the centre crop keeps: timm's resize-then-crop, bounded by the output size.

timm's eval transform resizes the whole image to ``(rw, rh)`` and then crops (or pads) the centre
``(cw, ch)``. For a 1 x 39,000,000 image that resize is 256 x 9,984,000,000 pixels, of which the
crop keeps 224 x 224. :func:`crop_window` works out, per axis, which resized pixels the crop keeps
and where they land (torchvision ``CenterCrop`` / timm ``CenterCropOrPad``: with resized length
``r`` and crop length ``c``, if ``c > r`` the axis is padded by ``(c - r) // 2`` before and kept
whole, else the crop starts at ``int(round((r - c) / 2))``); :func:`render` produces the output:

- **ordinary shapes** (the full resize is at most :data:`FULL_RESIZE_MAX` times the output's
  pixels, i.e. aspect ratios up to about 6 : 1 at timm's default crop): the full resize, then the
  crop, exactly as timm does it;
- **beyond that**: only the kept region is resampled, with Pillow's
  ``Image.resize(size, resample, box)``, from only the source region its filter taps reach
  (:meth:`CropWindow.source_region`, cropped first), so work and memory are those of the output
  whatever the source's shape. Pillow centres output pixel ``j``'s filter at
  ``box0 + (j + 0.5) * scale``: the same taps and weights as the full resize gives resized pixel
  ``x0 + j``, but Pillow takes the box as 32-bit floats, so a rare pixel differs from the full
  resize by one level (1/255) where a rounding goes the other way. (No box is exact for most
  offsets, which is why ordinary shapes keep the full resize and the timm pin stays exact.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

__all__ = ["FILTER_SUPPORT", "FULL_RESIZE_MAX", "CropWindow", "crop_window", "render"]

#: The full resize (exact, as timm) is done while it has at most this many times the output's pixels.
FULL_RESIZE_MAX = 8

#: Pillow's filter support (in source pixels at scale 1) per resample filter, to bound the
#: source region a window reads.
FILTER_SUPPORT: dict[Image.Resampling, float] = {
    Image.Resampling.NEAREST: 0.5,
    Image.Resampling.BOX: 0.5,
    Image.Resampling.BILINEAR: 1.0,
    Image.Resampling.HAMMING: 1.0,
    Image.Resampling.BICUBIC: 2.0,
    Image.Resampling.LANCZOS: 3.0,
}


@dataclass(frozen=True)
class CropWindow:
    """Which resized pixels the centre crop keeps, and where they go.

    Attributes:
        source: ``(W, H)``, the source image's size.
        resized: ``(rw, rh)``, the size timm resizes the whole source to.
        kept: ``(x0, y0, x1, y1)`` in resized pixels: the region the crop keeps.
        at: ``(x, y)``: where that region's top-left lands in the output (non-zero where padded).
        out: ``(cw, ch)``, the output size.
    """

    source: tuple[int, int]
    resized: tuple[int, int]
    kept: tuple[int, int, int, int]
    at: tuple[int, int]
    out: tuple[int, int]

    @property
    def resamples(self) -> bool:
        """False where the resize is the identity (timm skips it): the kept pixels are copied."""
        return self.resized != self.source

    @property
    def full_resize(self) -> bool:
        """Whether :func:`render` resizes the whole source (an ordinary shape: exact, as timm)."""
        (rw, rh), (cw, ch) = self.resized, self.out
        return self.resamples and rw * rh <= FULL_RESIZE_MAX * cw * ch

    def source_box(self) -> tuple[float, float, float, float]:
        """``kept`` in the source's pixel coordinates."""
        (width, height), (rw, rh), (x0, y0, x1, y1) = self.source, self.resized, self.kept
        # integer products first: x1 = rw maps to exactly `width`, as Pillow requires
        return x0 * width / rw, y0 * height / rh, x1 * width / rw, y1 * height / rh

    def source_region(self, resample: Image.Resampling) -> tuple[int, int, int, int]:
        """The integer source region ``(x0, y0, x1, y1)`` that :func:`render` reads.

        The kept pixels where nothing is resampled, the whole source for a :attr:`full_resize`,
        else the reach of every filter tap of ``kept`` (clipped to the source).
        """
        if not self.resamples:
            return self.kept
        if self.full_resize:
            return (0, 0, *self.source)
        (width, height), (rw, rh) = self.source, self.resized
        bx0, by0, bx1, by1 = self.source_box()
        support = FILTER_SUPPORT[resample]
        mx = math.ceil(support * max(width / rw, 1.0)) + 2
        my = math.ceil(support * max(height / rh, 1.0)) + 2
        return (
            max(0, math.floor(bx0) - mx),
            max(0, math.floor(by0) - my),
            min(width, math.ceil(bx1) + mx),
            min(height, math.ceil(by1) + my),
        )


def _axis(resized: int, crop: int) -> tuple[int, int, int]:
    """``(output start, resized start, length)`` of the kept run of one axis."""
    if crop > resized:
        return (crop - resized) // 2, 0, resized
    return 0, int(round((resized - crop) / 2.0)), crop


def crop_window(source: tuple[int, int], resized: tuple[int, int], out: tuple[int, int]) -> CropWindow:
    """The window of a centre crop ``out = (cw, ch)`` of a ``source`` image resized to ``(rw, rh)``."""
    ax, x0, lx = _axis(resized[0], out[0])
    ay, y0, ly = _axis(resized[1], out[1])
    return CropWindow(source, resized, kept=(x0, y0, x0 + lx, y0 + ly), at=(ax, ay), out=out)


def render(
    image: Image.Image,
    window: CropWindow,
    resample: Image.Resampling,
    fill: tuple[int, ...],
    origin: tuple[int, int] = (0, 0),
) -> Image.Image:
    """The output of resize-then-crop: the full resize for ordinary shapes, else only the kept region.

    Args:
        image: The source, or the part of it that starts at ``origin`` and holds
            :meth:`CropWindow.source_region`; any mode Pillow resizes (RGB here).
        window: From :func:`crop_window` for the source.
        resample: The PIL filter.
        fill: The padding colour, where the crop is larger than the resized image.
        origin: ``(x, y)`` of ``image``'s top-left in the source.

    Returns:
        A new ``window.out``-sized image of ``image``'s mode.
    """
    ox, oy = origin
    x0, y0, x1, y1 = window.kept
    size = (x1 - x0, y1 - y0)
    if window.full_resize:
        region = image.resize(window.resized, resample).crop(window.kept)
    elif window.resamples:
        # crop to the taps' reach first: small box offsets keep Pillow's float32 box precise
        rx0, ry0, rx1, ry1 = window.source_region(resample)
        if (rx0, ry0, rx1 - rx0, ry1 - ry0) != (ox, oy, *image.size):
            image = image.crop((rx0 - ox, ry0 - oy, rx1 - ox, ry1 - oy))
        bx0, by0, bx1, by1 = window.source_box()
        box = (bx0 - rx0, by0 - ry0, min(bx1 - rx0, image.size[0]), min(by1 - ry0, image.size[1]))
        region = image.resize(size, resample, box=box)
    else:
        region = image.crop((x0 - ox, y0 - oy, x1 - ox, y1 - oy))
    if size == window.out:
        return region
    canvas = Image.new(image.mode, window.out, fill)
    canvas.paste(region, window.at)
    return canvas
