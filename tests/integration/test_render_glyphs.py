"""benchmarks/render_glyphs.py as a subprocess: on-disk layout and image rules of the rendered glyph set.

The fonts are matplotlib's DejaVu files (matplotlib is in the ``train`` extra), laid out like Debian's
``/usr/share/fonts``; the checks are about structure, not about agreement with the shared set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen
from PIL import Image

from benchmarks.glyph_agreement import class_agreement
from benchmarks.glyph_fonts import discover_fonts

ROOT = Path(__file__).resolve().parents[2]
CLASSES = {"base": ["greek_u03b1", "latin_upper_u0044"], "novel": ["hebrew_u05d0"]}
PER_CLASS = 4


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks.<args>`` from the repository root, with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def fonts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """matplotlib's DejaVu Sans / Serif / Mono files under ``truetype/dejavu/``, as Debian places them."""
    matplotlib = pytest.importorskip("matplotlib")
    found = sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("DejaVu*.ttf"))
    if len(found) < PER_CLASS:
        pytest.skip("matplotlib's DejaVu fonts are not installed")
    folder = tmp_path_factory.mktemp("fonts") / "truetype" / "dejavu"
    folder.mkdir(parents=True)
    for font in found:
        (folder / font.name).symlink_to(font)
    return folder.parents[1]


@pytest.fixture(scope="module")
def rendered(
    fonts_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("glyphs") / "glyphs64"
    names = [n for ns in CLASSES.values() for n in ns]
    done = run("benchmarks.render_glyphs", "--output", str(out), "--fonts-dir", str(fonts_dir),
               "--classes", *names, "--per-class", str(PER_CLASS))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out, done


def test_layout_is_class_folders_of_numbered_pngs(
    rendered: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, done = rendered
    assert sorted(p.name for p in out.iterdir()) == ["base", "fonts.json", "novel"]
    for folder, names in CLASSES.items():
        assert sorted(p.name for p in (out / folder).iterdir()) == names
        for name in names:
            assert sorted(p.name for p in (out / folder / name).iterdir()) == [
                f"{k:02d}.png" for k in range(PER_CLASS)
            ]
    assert f"wrote {3 * PER_CLASS} images of 3 classes" in done.stdout


def test_images_are_64px_grey_glyphs_centred_in_56px_and_distinct(
    rendered: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = rendered
    for folder, names in CLASSES.items():
        for name in names:
            seen = set()
            for path in sorted((out / folder / name).glob("*.png")):
                image = Image.open(path)
                assert (image.format, image.mode, image.size) == ("PNG", "L", (64, 64))
                pixels = np.asarray(image)
                ys, xs = np.nonzero(pixels < 255)
                height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
                assert max(height, width) == 56, f"{path}: ink box {width}x{height}, longer side must be 56"
                assert (ys.min(), xs.min()) == ((64 - height) // 2, (64 - width) // 2), (
                    f"{path} is not centred"
                )
                assert pixels.min() == 0, f"{path}: the glyph should be black"
                seen.add(pixels.tobytes())
            assert len(seen) == PER_CLASS, f"{name}: identical renderings were not removed"


def test_fonts_json_names_a_different_installed_font_per_image(
    rendered: tuple[Path, subprocess.CompletedProcess[str]], fonts_dir: Path
) -> None:
    out, _ = rendered
    record = json.loads((out / "fonts.json").read_text())
    assert record["renderer"] == {"size": 64, "box": 56, "font_px": 44, "resample": "bilinear"}
    assert sorted(record["classes"]) == sorted(n for ns in CLASSES.values() for n in ns)
    for keys in record["classes"].values():
        assert len(set(keys)) == PER_CLASS and all((fonts_dir / key).is_file() for key in keys)


def test_compare_with_itself_is_all_identical(
    rendered: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = rendered
    done = run("benchmarks.glyph_agreement", "compare", "--rendered", str(out), "--reference", str(out))
    assert done.returncode == 0, done.stderr
    assert "| **total** | 3 | 12 | 12 (100.0%) | 12 (100.0%) | 12 (100.0%) | 0.000 | – |" in done.stdout


def test_class_agreement_counts_identical_same_index_and_near() -> None:
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)
    swapped = reference[[1, 0, 2]]
    assert class_agreement(reference, swapped, near=4) == {
        "reference": 3,
        "identical": 3,
        "same_index": 1,
        "near": 3,
        "mad": 0.0,
    }
    shifted = np.clip(reference.astype(int) + 3, 0, 255).astype(np.uint8)
    row = class_agreement(reference, shifted, near=4)
    assert (row["identical"], row["near"]) == (0, 3) and 0 < row["mad"] <= 3


def test_a_class_with_too_few_fonts_is_written_short_with_a_warning(fonts_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "short"
    covering = [f for f in discover_fonts(fonts_dir) if f.covers(0x05D0)]
    done = run("benchmarks.render_glyphs", "--output", str(out), "--fonts-dir", str(fonts_dir),
               "--classes", "hebrew_u05d0", "--per-class", str(len(covering) + 2))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(list((out / "novel" / "hebrew_u05d0").glob("*.png"))) == len(covering)
    assert f"hebrew_u05d0: only {len(covering)} distinct renderings" in done.stderr


def test_missing_fonts_fail_with_one_line_naming_the_apt_command(tmp_path: Path) -> None:
    done = run("benchmarks.render_glyphs", "--output", str(tmp_path / "out"), "--fonts-dir", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith("error: no usable .ttf/.otf font") and done.stderr.count("\n") == 1
    assert "apt-get install" in done.stderr and "fonts-noto-core" in done.stderr
    assert not (tmp_path / "out").exists()


def build_font(path: Path, family: str, family_class: int = 0) -> None:
    """A one-glyph TrueType font (a square for ``A``) with the given family name and OS/2 family class."""
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder([".notdef", "A"])
    builder.setupCharacterMap({ord("A"): "A"})
    pen = TTGlyphPen(None)
    for point in [(100, 0), (100, 700), (600, 700), (600, 0)]:
        (pen.lineTo if pen.points else pen.moveTo)(point)
    pen.closePath()
    builder.setupGlyf({".notdef": TTGlyphPen(None).glyph(), "A": pen.glyph()})
    builder.setupHorizontalMetrics({".notdef": (500, 0), "A": (700, 100)})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": family, "styleName": "Regular"})
    builder.setupOS2(sFamilyClass=family_class)
    builder.setupPost()
    builder.save(str(path))


@pytest.mark.parametrize(
    ("family", "family_class", "excluded"),
    [
        ("Plain Sans", 0, False),
        ("Some Symbols", 0, True),
        ("Biolinum Keyboard", 0, True),
        ("D050000L", 12 << 8 | 3, True),
    ],
)
def test_symbol_dingbat_and_keyboard_fonts_are_excluded(
    tmp_path: Path, family: str, family_class: int, excluded: bool
) -> None:
    build_font(tmp_path / "test.ttf", family, family_class)
    (font,) = discover_fonts(tmp_path)
    assert (font.excluded is not None) == excluded
    assert font.covers(ord("A")) != excluded and ord("A") in font.code_points
