"""clce_core.preprocessing: the one image-loading rule, and the eval transform == timm's within 1e-5."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from clce_core.preprocessing import CROP_MODES, EvalTransform, TooManyPixels, load_image, open_image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise: detail at every scale, so resampling differences would show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255.0 / width, y * 255.0 / height, (x + y) * 127.0 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)  # (H, W, 3)


def _encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(w: int, h: int) -> bytes:
    return _encode(Image.fromarray(_photo(w, h)), "PNG")


def _grey(w: int, h: int) -> bytes:
    return _encode(Image.fromarray(_photo(w, h)[..., 0]), "PNG")  # mode L


def _rgba(w: int, h: int) -> bytes:
    arr = _photo(w, h)
    alpha = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, axis=0)
    return _encode(Image.fromarray(np.dstack([arr, alpha]), "RGBA"), "PNG")


def _palette(w: int, h: int) -> bytes:
    image = Image.fromarray(_photo(w, h)).quantize(colors=16)
    return _encode(image, "PNG", transparency=3)  # palette index 3 is transparent


def _exif_jpeg(w: int, h: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    return _encode(Image.fromarray(_photo(w, h)), "JPEG", quality=95, exif=exif.tobytes())


MAKERS = {"rgb": _rgb, "grey": _grey, "rgba": _rgba, "palette": _palette, "exif-jpeg": _exif_jpeg}


@pytest.fixture(scope="module")
def timm_data():
    return pytest.importorskip("timm.data")


def _timm(timm_data, image: Image.Image, transform: EvalTransform) -> np.ndarray:
    # the dataclass fields are create_transform's keywords: input_size, interpolation, crop_pct, ...
    reference = timm_data.create_transform(**dataclasses.asdict(transform), is_training=False)
    return reference(image).numpy()


@pytest.mark.parametrize("kind", list(MAKERS))
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("crop_pct", [0.875, 1.0])
@pytest.mark.parametrize("size", [(97, 61), (50, 131)], ids=["wide", "tall"])
def test_matches_timm_eval_transform(
    timm_data, kind: str, interpolation: str, crop_pct: float, size: tuple[int, int]
) -> None:
    transform = EvalTransform((3, 48, 48), interpolation, crop_pct, "center", MEAN, STD)
    image = load_image(MAKERS[kind](*size))
    ours = transform(image)
    theirs = _timm(timm_data, image, transform)
    assert ours.shape == theirs.shape == (3, 48, 48) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1e-5


@pytest.mark.parametrize(
    "transform",
    [
        EvalTransform((3, 40, 56), "bicubic", 0.9, "center", MEAN, STD),  # non-square: ResizeKeepRatio
        EvalTransform((3, 40, 40), "bilinear", 1.15, "center", MEAN, STD),  # crop larger: zero padding
        EvalTransform((3, 40, 40), "bicubic", 0.95, "squash", MEAN, STD),
        EvalTransform((3, 32, 32), "lanczos", 0.875, "center", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        EvalTransform((3, 61, 61), "bilinear", 1.0, "center", MEAN, STD),  # no resize (same size)
    ],
    ids=["non-square-input", "crop-pct-above-1", "squash", "lanczos", "already-sized"],
)
def test_matches_timm_for_other_configs(timm_data, transform: EvalTransform) -> None:
    image = load_image(_rgb(90, 61))
    assert np.abs(transform(image) - _timm(timm_data, image, transform)).max() <= 1e-5


@pytest.mark.parametrize(
    ("input_size", "interpolation", "crop_pct", "crop_mode"),
    [
        ((3, 32, 32), "bicubic", 0.875, "center"),
        ((3, 224, 224), "bilinear", 0.95, "center"),
        ((3, 40, 56), "bicubic", 0.9, "center"),  # non-square: timm's ResizeKeepRatio
        ((3, 48, 48), "lanczos", 1.0, "squash"),
        ((3, 48, 40), "nearest", 0.8, "border"),  # pad with the mean colour
        ((3, 64, 64), "hamming", 1.15, "center"),  # crop larger than the resize: zero padding
        ((3, 33, 33), "box", 0.875, "center"),
    ],
)
def test_card_transform_equals_timm(timm_data, input_size, interpolation, crop_pct, crop_mode) -> None:
    card = {
        "input_size": list(input_size),
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
        "mean": list(MEAN),
        "std": list(STD),
    }
    ours = EvalTransform.from_card(card)
    for size in ((97, 61), (61, 97), (300, 300), (20, 13), input_size[2:0:-1]):
        image = Image.fromarray(_photo(*size, seed=1))
        expected = _timm(timm_data, image, ours)
        got = ours(image)
        assert got.shape == expected.shape == input_size and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5, err_msg=f"{size}")


def test_batch_stacks_single_images() -> None:
    transform = EvalTransform((3, 24, 32), "bilinear", 0.9, "border")
    images = [load_image(_rgb(64, 40)), load_image(_grey(30, 70))]
    batch = transform.batch(images)
    assert batch.shape == (2, 3, 24, 32) and batch.dtype == np.float32 and batch.flags.c_contiguous
    for row, image in zip(batch, images, strict=True):
        assert np.array_equal(row, transform(image))
    assert transform.batch([]).shape == (0, 3, 24, 32)
    single = transform(images[0])
    assert single.shape == (3, 24, 32) and single.flags.c_contiguous


def test_from_card_defaults_and_plain_types() -> None:
    transform = EvalTransform.from_card({"input_size": [3, 8, 8], "mean": MEAN, "std": STD, "crop_pct": None})
    assert (transform.interpolation, transform.crop_pct, transform.crop_mode) == ("bilinear", 0.875, "center")
    assert transform.input_size == (3, 8, 8) and hash(transform)  # lists from JSON stored as tuples
    assert set(CROP_MODES) == {"center", "squash", "border"}


@pytest.mark.parametrize(
    "card",
    [
        {"input_size": [3, 8, 8], "interpolation": "random", "mean": MEAN, "std": STD},
        {"input_size": [3, 8, 8], "crop_mode": "zoom", "mean": MEAN, "std": STD},
        {"input_size": [1, 8, 8], "mean": MEAN, "std": STD},
        {"input_size": [3, 8, 8], "mean": MEAN, "std": [0.2, 0.0, 0.2]},
        {"input_size": [3, 8, 8], "mean": MEAN, "std": STD, "crop_pct": -1},
        {"input_size": [3, 8, 8], "mean": MEAN[:2], "std": STD},
    ],
)
def test_unsupported_card_settings_are_refused(card: dict) -> None:
    with pytest.raises(ValueError):
        EvalTransform.from_card(card)


def test_non_rgb_image_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="to_rgb"):
        EvalTransform((3, 8, 8))(Image.new("L", (8, 8)))


def test_load_image_bounds_the_decode() -> None:
    png = _rgb(30, 20)
    with pytest.raises(TooManyPixels, match="30x20 = 600 pixels, more than the limit of 599") as info:
        load_image(png, max_pixels=599)
    assert info.value.size == (30, 20) and info.value.max_pixels == 599
    assert load_image(png, max_pixels=600).size == (30, 20)
    with pytest.raises(Image.UnidentifiedImageError):
        load_image(png, formats=("JPEG",))
    with pytest.raises(OSError, match="truncated"):
        load_image(_rgb(64, 64)[:200])  # decoded completely here, not on first use


# ------------------------------------------------------------------------------ bounded decode


def _jpeg(w: int, h: int, orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(Image.fromarray(_photo(w, h)), "JPEG", quality=92, exif=exif.tobytes())


ORDINARY = {
    **MAKERS,
    "jpeg": lambda w, h: _jpeg(w, h),
    "webp": lambda w, h: _encode(Image.fromarray(_photo(w, h)), "WEBP", lossless=True),
}


@pytest.mark.parametrize("kind", list(ORDINARY))
@pytest.mark.parametrize("size", [(97, 61), (50, 131), (40, 40)], ids=["wide", "tall", "square"])
@pytest.mark.parametrize("draft", [True, False])
def test_bounded_decode_equals_the_transform_of_the_loaded_image(
    kind: str, size: tuple[int, int], draft: bool
) -> None:
    # ordinary images (no JPEG downscale fits a 48 px model): exactly the pinned transform's pixels
    transform = EvalTransform((3, 48, 48), "bicubic", 0.875, "center", MEAN, STD)
    data = ORDINARY[kind](*size)
    with open_image(data) as image:
        got = transform.decode(image, draft=draft)
    expected = transform.to_uint8(load_image(data))
    assert got.shape == (48, 48, 3) and got.dtype == np.uint8
    assert np.array_equal(got, expected)
    assert np.array_equal(transform.normalize(got), transform(load_image(data)))


@pytest.mark.parametrize("mode", ["center", "squash", "border"])
def test_decode_of_every_crop_mode_matches(mode: str) -> None:
    transform = EvalTransform((3, 40, 32), "bilinear", 0.9, mode, MEAN, STD)
    for size in ((90, 61), (61, 90), (20, 13)):
        data = _rgba(*size)
        with open_image(data) as image:
            assert np.array_equal(transform.decode(image), transform.to_uint8(load_image(data))), size


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "lanczos", "nearest"])
@pytest.mark.parametrize("size", [(12, 700), (900, 9), (1, 3000)], ids=["tall", "wide", "one-pixel"])
def test_extreme_aspect_ratios_resample_only_the_crop(interpolation: str, size: tuple[int, int]) -> None:
    # beyond FULL_RESIZE_MAX the kept region alone is resampled: the full resize's pixels, but for
    # a rare one level off (Pillow takes the box as 32-bit floats)
    transform = EvalTransform((3, 32, 32), interpolation, 0.875, "center", MEAN, STD)
    image = Image.fromarray(_photo(*size))
    window = transform.window(*image.size)
    assert window.resamples and not window.full_resize
    full = np.asarray(image.resize(window.resized, transform.resample).crop(window.kept), dtype=np.int16)
    ours = transform.to_uint8(image).astype(np.int16)
    assert ours.shape == (32, 32, 3)
    assert np.abs(ours - full).max() <= 1 and (ours != full).mean() < 0.01
    with open_image(_encode(image, "PNG")) as opened:  # the decode crops the source first: same pixels
        assert np.array_equal(transform.decode(opened), ours.astype(np.uint8))


def test_work_is_bounded_by_the_output_whatever_the_shape() -> None:
    transform = EvalTransform((3, 224, 224), "bicubic", 0.875, "center", MEAN, STD)
    window = transform.window(1, 39_000_000)  # timm: a 256 x 9,984,000,000 resize
    assert window.resized == (256, 9_984_000_000) and window.out == (224, 224)
    x0, y0, x1, y1 = window.source_region(transform.resample)
    assert (x1 - x0) * (y1 - y0) < 100  # the source rows the crop's filter taps reach
    assert transform.to_uint8(Image.new("RGB", (1, 39_000), (9, 99, 199))).shape == (224, 224, 3)
    border = EvalTransform((3, 32, 32), crop_mode="border")
    assert border.resized_size(1, 100_000) == (1, 36)  # never 0 pixels wide (timm fails there)
    assert border.to_uint8(Image.new("RGB", (1, 100_000))).shape == (32, 32, 3)


def test_draft_decodes_a_large_jpeg_smaller_and_close() -> None:
    # decoded at 1/8 in the DCT domain, then resized: close to the full decode, not equal
    transform = EvalTransform((3, 32, 32), "bicubic", 0.875, "center", MEAN, STD)
    data = _jpeg(1200, 900)
    with open_image(data) as image:
        assert transform.draft(image) == (150, 113)  # 1/8 is still twice the 48 x 36 resize
        drafted = transform.decode(image)
    with open_image(data) as image:
        full = transform.decode(image, draft=False)
    assert np.array_equal(full, transform.to_uint8(load_image(data)))
    diff = np.abs(drafted.astype(np.int16) - full.astype(np.int16))
    assert 0 < diff.mean() < 4 and diff.max() < 64, (diff.mean(), diff.max())
    within = _jpeg(190, 140)  # resized to 48 x 36: less than twice that, so decoded whole, exactly
    with open_image(within) as image:
        assert transform.draft(image) == (190, 140)
        assert np.array_equal(transform.decode(image), transform.to_uint8(load_image(within)))


@pytest.mark.parametrize("orientation", [1, 6])
def test_draft_covers_the_target_in_the_upright_orientation(orientation: int) -> None:
    transform = EvalTransform((3, 64, 64), "bilinear", 1.0, "center", MEAN, STD)
    data = _jpeg(1600, 400, orientation)  # upright: 1600 x 400, or 400 x 1600 when turned
    with open_image(data) as image:
        # either way the resize target is 256 x 64 as stored; twice that fits in 1/2 (800 x 200),
        # not in 1/4 (a target taken unturned, 64 x 256, would allow no draft at all)
        assert transform.draft(image) == (800, 200)
        out = transform.decode(image)
    assert out.shape == (64, 64, 3)
    with open_image(_encode(Image.fromarray(_photo(40, 40)), "PNG")) as png:
        assert transform.draft(png) == (40, 40)  # other formats: decoded as they are
