"""serving.preprocessing: upload validation (named errors) around clce_core's loading rule and transform.

The transform's parity with timm's eval transform is pinned in tests/core/test_preprocessing.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import clce_core.preprocessing as core
from serving.errors import EmptyFile, ImageTooLarge, InvalidImage, UnsupportedImage
from serving.preprocessing import decode_upload, preprocess
from tests.core.test_preprocessing import MAKERS, _encode, _exif_jpeg, _grey, _rgb


def test_same_loading_rule_as_training() -> None:
    # training.data reads files with clce_core.preprocessing.load_image (tests/training/test_images.py)
    for kind, make in MAKERS.items():
        raw = make(37, 23)
        ours, theirs = decode_upload(raw), core.load_image(raw)
        assert ours.mode == theirs.mode == "RGB", kind
        assert np.array_equal(np.asarray(ours), np.asarray(theirs)), kind


def test_loading_rule_details() -> None:
    exif = decode_upload(_exif_jpeg(40, 20))
    assert exif.size == (20, 40)  # orientation 6 applied: width and height swap
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(decode_upload(_encode(transparent, "PNG"))).tolist()[0][0] == [255, 255, 255]
    grey = decode_upload(_grey(8, 8))
    arr = np.asarray(grey)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert np.asarray(decode_upload(_encode(sixteen, "PNG"))).max() == 255


def test_output_is_nchw_ready() -> None:
    config = core.EvalTransform((3, 24, 32))
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
        decode_upload(data, "x.img", max_pixels=50_000)
    for word in words:
        assert word in str(info.value)
    assert "x.img" in str(info.value)


def test_decompression_bomb_beyond_pillows_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises above twice this
    with pytest.raises(ImageTooLarge, match="too many pixels"):
        decode_upload(_encode(Image.new("L", (100, 100)), "PNG"), "bomb.png", max_pixels=10**9)


def test_every_crop_mode_of_the_shared_transform_is_served() -> None:
    card = {"input_size": [3, 20, 16], "mean": [0.5] * 3, "std": [0.5] * 3}
    for mode in core.CROP_MODES:
        transform = core.EvalTransform.from_card({**card, "crop_mode": mode})
        x = preprocess(_rgb(50, 30), "a.png", transform)
        assert np.array_equal(x, transform(core.load_image(_rgb(50, 30))))
