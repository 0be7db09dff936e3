"""The one image-loading rule: every image kind comes out as EXIF-oriented RGB."""

import io
from pathlib import Path

import numpy as np
from PIL import Image

from clce_core.preprocessing import load_image


def _image_zoo(folder: Path) -> None:
    """Grey, RGBA, LA, palette-with-transparency, 16-bit grey and EXIF-rotated images."""
    folder.mkdir(parents=True)
    Image.new("L", (8, 8), 77).save(folder / "grey.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red, left half opaque, right half transparent
    rgba[:, :4, 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.dstack([np.zeros((8, 8), np.uint8), np.full((8, 8), 128, np.uint8)]), "LA").save(
        folder / "la.png"
    )
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)  # index 0 blue, 1 green
    pal.paste(1, (0, 0, 4, 8))
    pal.save(folder / "palette.png", transparency=0)  # blue (right half) is transparent
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(folder / "grey16.png")
    stored = np.zeros((10, 20, 3), np.uint8)  # 20 wide, 10 high: left half red, right half blue
    stored[:, :10, 0] = 255
    stored[:, 10:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(stored).save(folder / "rotated.jpg", exif=exif, quality=95)


def test_load_image_rule(tmp_path):
    _image_zoo(tmp_path / "zoo")
    z = {p.stem: np.asarray(load_image(p)).astype(int) for p in (tmp_path / "zoo").iterdir()}
    assert all(a.ndim == 3 and a.shape[2] == 3 for a in z.values())
    assert (z["grey"] == 77).all()
    assert (z["rgba"][:, :4] == [255, 0, 0]).all() and (z["rgba"][:, 4:] == 255).all()
    assert (np.abs(z["la"] - 127) <= 1).all()  # black at alpha 0.5 over white
    assert (z["palette"][:, :4] == [0, 255, 0]).all() and (z["palette"][:, 4:] == 255).all()
    assert (z["grey16"] == 255).all()
    rotated = z["rotated"]
    assert rotated.shape == (20, 10, 3)  # upright: 10 wide, 20 high
    assert (np.abs(rotated[:8] - [255, 0, 0]) < 40).all() and (np.abs(rotated[12:] - [0, 0, 255]) < 40).all()
    raw = (tmp_path / "zoo" / "rotated.jpg").read_bytes()
    assert np.array_equal(np.asarray(load_image(raw)), np.asarray(load_image(io.BytesIO(raw))))


def test_training_datasets_read_with_the_shared_rule():
    from clce_core import preprocessing
    from training.datasets import images

    assert images.load_image is preprocessing.load_image and images.array_to_rgb is preprocessing.array_to_rgb
