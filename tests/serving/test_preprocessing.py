"""serving.preprocessing: upload validation (named errors) around clce_core's loading rule and bounded decode.

The transform's parity with timm's eval transform is pinned in tests/core/test_preprocessing.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import clce_core.preprocessing as core
from serving.errors import EmptyFile, ImageTooLarge, InvalidImage, UnsupportedImage
from serving.preprocessing import decoded_pixels, open_upload, preprocess
from tests.core.test_preprocessing import MAKERS, _encode, _exif_jpeg, _grey, _jpeg, _rgb


def _identity(width: int, height: int) -> core.EvalTransform:
    """A transform that keeps a ``width`` x ``height`` image as it is: the decode's pixels themselves."""
    return core.EvalTransform((3, height, width), crop_pct=1.0)


def test_same_loading_rule_as_training() -> None:
    # training.data reads files with clce_core.preprocessing.load_image (tests/training/test_images.py)
    for kind, make in MAKERS.items():
        raw = make(37, 23)
        theirs = core.load_image(raw)
        ours = preprocess(raw, "a", _identity(*theirs.size))
        assert np.array_equal(ours, np.asarray(theirs)), kind
        transform = core.EvalTransform((3, 16, 16))
        assert np.array_equal(preprocess(raw, "a", transform), transform.to_uint8(theirs)), kind


def test_loading_rule_details() -> None:
    exif = preprocess(_exif_jpeg(40, 20), "a", _identity(20, 40))
    assert exif.shape == (40, 20, 3)  # orientation 6 applied: width and height swap, nothing cut
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert preprocess(_encode(transparent, "PNG"), "a", _identity(4, 4))[0, 0].tolist() == [255, 255, 255]
    arr = preprocess(_grey(8, 8), "a", _identity(8, 8))
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert preprocess(_encode(sixteen, "PNG"), "a", _identity(4, 4)).max() == 255


def test_output_is_the_uint8_crop() -> None:
    config = core.EvalTransform((3, 24, 32))
    x = preprocess(_rgb(64, 64), "a.png", config)
    assert x.shape == (24, 32, 3) and x.dtype == np.uint8 and x.flags.c_contiguous
    assert np.array_equal(config.normalize(x), config(core.load_image(_rgb(64, 64))))


def test_a_large_jpeg_counts_at_its_draft_size() -> None:
    transform = core.EvalTransform((3, 32, 32))
    with open_upload(_jpeg(1200, 900), "big.jpg", transform) as image:
        assert decoded_pixels(image) == 150 * 113  # 1/8 of each side still covers the 36 px resize
    with open_upload(_jpeg(1200, 900), "big.jpg", transform, draft=False) as image:
        assert decoded_pixels(image) == 1200 * 900
    with open_upload(_rgb(300, 200), "big.png", transform) as image:
        assert decoded_pixels(image) == 300 * 200


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
        preprocess(data, "x.img", core.EvalTransform((3, 8, 8)), max_pixels=50_000)
    for word in words:
        assert word in str(info.value)
    assert "x.img" in str(info.value)


def test_decompression_bomb_beyond_pillows_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises above twice this
    with pytest.raises(ImageTooLarge, match="too many pixels"):
        preprocess(
            _encode(Image.new("L", (100, 100)), "PNG"), "bomb.png", core.EvalTransform((3, 8, 8)), 10**9
        )


def test_every_crop_mode_of_the_shared_transform_is_served() -> None:
    card = {"input_size": [3, 20, 16], "mean": [0.5] * 3, "std": [0.5] * 3}
    for mode in core.CROP_MODES:
        transform = core.EvalTransform.from_card({**card, "crop_mode": mode})
        x = preprocess(_rgb(50, 30), "a.png", transform)
        assert np.array_equal(x, transform.to_uint8(core.load_image(_rgb(50, 30))))
