"""serving.preprocessing equals timm's eval transform (1e-5) and the project's one image-loading rule."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serving.errors import EmptyFile, ImageTooLarge, InvalidImage, UnsupportedImage
from serving.preprocessing import PreprocessConfig, image_to_array, load_image, preprocess

torch = pytest.importorskip("torch")
timm_data = pytest.importorskip("timm.data")

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


def _timm(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    transform = timm_data.create_transform(
        input_size=config.input_size,
        interpolation=config.interpolation,
        crop_pct=config.crop_pct,
        crop_mode=config.crop_mode,
        mean=config.mean,
        std=config.std,
    )
    return transform(image).numpy()


@pytest.mark.parametrize("kind", list(MAKERS))
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("crop_pct", [0.875, 1.0])
@pytest.mark.parametrize("size", [(97, 61), (50, 131)], ids=["wide", "tall"])
def test_matches_timm_eval_transform(
    kind: str, interpolation: str, crop_pct: float, size: tuple[int, int]
) -> None:
    config = PreprocessConfig((3, 48, 48), interpolation, crop_pct, "center", MEAN, STD)
    image = load_image(MAKERS[kind](*size), kind)
    ours = image_to_array(image, config)
    theirs = _timm(image, config)
    assert ours.shape == theirs.shape == (3, 48, 48) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1e-5


@pytest.mark.parametrize(
    "config",
    [
        PreprocessConfig((3, 40, 56), "bicubic", 0.9, "center", MEAN, STD),  # non-square: ResizeKeepRatio
        PreprocessConfig((3, 40, 40), "bilinear", 1.15, "center", MEAN, STD),  # crop larger: zero padding
        PreprocessConfig((3, 40, 40), "bicubic", 0.95, "squash", MEAN, STD),
        PreprocessConfig((3, 32, 32), "lanczos", 0.875, "center", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        PreprocessConfig((3, 61, 61), "bilinear", 1.0, "center", MEAN, STD),  # no resize (same size)
    ],
    ids=["non-square-input", "crop-pct-above-1", "squash", "lanczos", "already-sized"],
)
def test_matches_timm_for_other_configs(config: PreprocessConfig) -> None:
    image = load_image(_rgb(90, 61))
    assert np.abs(image_to_array(image, config) - _timm(image, config)).max() <= 1e-5


def test_same_loading_rule_as_training() -> None:
    data = pytest.importorskip("training.data")
    for kind, make in MAKERS.items():
        raw = make(37, 23)
        ours, theirs = load_image(raw), data.load_image(raw)
        assert ours.mode == theirs.mode == "RGB", kind
        assert np.array_equal(np.asarray(ours), np.asarray(theirs)), kind


def test_loading_rule_details() -> None:
    exif = load_image(_exif_jpeg(40, 20))
    assert exif.size == (20, 40)  # orientation 6 applied: width and height swap
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(load_image(_encode(transparent, "PNG"))).tolist()[0][0] == [255, 255, 255]
    grey = load_image(_grey(8, 8))
    arr = np.asarray(grey)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert np.asarray(load_image(_encode(sixteen, "PNG"))).max() == 255


def test_output_is_nchw_ready() -> None:
    config = PreprocessConfig((3, 24, 32))
    x = preprocess(_rgb(64, 64), "a.png", config)
    assert x.shape == (3, 24, 32) and x.dtype == np.float32 and x.flags.c_contiguous


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", EmptyFile, ["empty"]),
        (b"not an image at all", UnsupportedImage, ["not an image"]),
        (_encode(Image.new("RGB", (8, 8)), "PPM"), UnsupportedImage, ["PPM", "does not accept"]),
        (_rgb(64, 64)[:200], InvalidImage, ["truncated"]),
        (_encode(Image.new("RGB", (300, 200)), "PNG"), ImageTooLarge, ["60000", "limit"]),
    ],
    ids=["empty", "non-image", "unsupported-format", "truncated", "too-many-pixels"],
)
def test_bad_bytes_raise_named_errors(data: bytes, error: type[Exception], words: list[str]) -> None:
    with pytest.raises(error) as info:
        load_image(data, "x.img", max_pixels=50_000)
    for word in words:
        assert word in str(info.value)
    assert "x.img" in str(info.value)


def test_decompression_bomb_beyond_pillows_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises above twice this
    with pytest.raises(ImageTooLarge, match="too many pixels"):
        load_image(_encode(Image.new("L", (100, 100)), "PNG"), "bomb.png", max_pixels=10**9)


@pytest.mark.parametrize(
    "card",
    [
        {"input_size": [3, 8, 8], "interpolation": "random", "mean": MEAN, "std": STD},
        {"input_size": [3, 8, 8], "crop_mode": "border", "mean": MEAN, "std": STD},
        {"input_size": [1, 8, 8], "mean": MEAN, "std": STD},
        {"input_size": [3, 8, 8], "mean": MEAN, "std": [0.2, 0.0, 0.2]},
    ],
)
def test_unsupported_card_settings_are_refused(card: dict) -> None:
    with pytest.raises(ValueError):
        PreprocessConfig.from_card(card)
