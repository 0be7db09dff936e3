"""Render the glyph few-shot set (glyphs64) from Debian's free fonts, so a clone can rebuild it.

    python -m benchmarks.render_glyphs                       # into $CLCE_GLYPHS_DIR or ~/.cache/clce/data/glyphs64
    python -m benchmarks.render_glyphs --output data/glyphs64 --fonts-dir /usr/share/fonts

Class = one character, named ``script_uXXXX`` after its code point; the class lists are
``training/splits/glyphs64.json`` (``train`` + ``val`` = ``base/``, 128 classes; ``novel`` =
``novel/``, 144 classes). Image ``CLASS/NN.png`` = the character in one font: 64×64 grey (mode L),
black on white, the glyph's ink box scaled to 56 px on its longer side and centred.

The rendering, reproduced pixel for pixel from the shared set: the character is drawn at 44 px, white
on black, cropped to its ink, resized (bilinear) so that its longer side is 56 px, pasted centred
(offsets rounded down) on a black 64×64 image, which is then inverted.

Font order per class, deterministic: first the fonts the manifest (``glyphs64_fonts.json``) records
for each image index of the shared set, then every other usable font that covers the character,
ranked by sha256(``class/font file name``) — a font's rank does not depend on which other fonts are
installed. A font is usable when its cmap covers the character and it is not a symbol, dingbat or
keyboard-cap font (``glyph_fonts.exclusion_reason``). A rendering identical to one already taken is
skipped. A class with fewer distinct renderings than ``--per-class`` is written with those it has and
named in a warning; a class no font covers stops the run before anything is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import PIL
from PIL import Image, ImageDraw, ImageFont, ImageOps, features

from benchmarks.glyph_fonts import APT_COMMAND, MANIFEST, Font, Manifest, add_fonts_dir_option, discover_fonts
from benchmarks.harness import GLYPHS_ENV, glyphs_dir

log = logging.getLogger(__name__)

SPLITS = Path(__file__).resolve().parents[1] / "training" / "splits" / "glyphs64.json"
SIZE = 64  # image side, px
BOX = 56  # the glyph's longer side, px
FONT_PX = 44  # the size the glyph is drawn at before it is scaled into BOX
PAD = 8  # margin around the drawn glyph, so that no ink is clipped
PER_CLASS = 20


@dataclass
class ClassRender:
    """The images of one class, in ``NN`` order, and where their fonts came from."""

    name: str
    fonts: list[Font]
    images: list[Image.Image]
    from_manifest: int


def default_output() -> Path:
    """``$CLCE_GLYPHS_DIR``, else ``$CLCE_DATA_HOME/glyphs64`` (``~/.cache/clce/data/glyphs64``): where
    ``--dataset glyphs64`` and the benchmarks look for the set (:func:`benchmarks.harness.glyphs_dir`)."""
    return glyphs_dir(check=False)


def load_classes(splits: Path = SPLITS) -> dict[str, list[str]]:
    """The class lists by folder: ``{"base": train + val (sorted), "novel": novel}``."""
    data = json.loads(splits.read_text())
    return {"base": sorted(data["train"] + data["val"]), "novel": list(data["novel"])}


def code_point(class_name: str) -> int:
    """The character's code point from a class name: ``thai_u0e01`` -> 0x0E01."""
    return int(class_name.rsplit("_u", 1)[1], 16)


def render_glyph(path: Path, char: str) -> Image.Image | None:
    """One character in one font, as the shared set has it.

    Args:
        path: the font file.
        char: one character.

    Returns:
        A (64, 64) mode-L image, black glyph on white, its ink box 56 px on the longer side and
        centred; ``None`` when the font draws no ink for the character.
    """
    font = ImageFont.truetype(str(path), FONT_PX)
    left, top, right, bottom = font.getbbox(char)
    if right <= left or bottom <= top:
        return None
    canvas = Image.new("L", (right - left + 2 * PAD, bottom - top + 2 * PAD), 0)
    ImageDraw.Draw(canvas).text((PAD - left, PAD - top), char, font=font, fill=255)
    ink = canvas.getbbox()
    if ink is None:
        return None
    glyph = canvas.crop(ink)
    scale = BOX / max(glyph.size)
    size = (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale)))
    image = Image.new("L", (SIZE, SIZE), 0)
    image.paste(glyph.resize(size, Image.Resampling.BILINEAR), ((SIZE - size[0]) // 2, (SIZE - size[1]) // 2))
    return ImageOps.invert(image)


def fallback_order(class_name: str, fonts: Sequence[Font]) -> list[Font]:
    """The usable fonts covering a class's character, ranked by sha256(``class/file name``), then key."""
    cp = code_point(class_name)

    def rank(font: Font) -> tuple[str, str]:
        return hashlib.sha256(f"{class_name}/{font.path.name}".encode()).hexdigest(), font.key

    return sorted((f for f in fonts if f.covers(cp)), key=rank)


def render_class(class_name: str, fonts: Sequence[Font], manifest: Manifest, per_class: int) -> ClassRender:
    """Up to ``per_class`` distinct renderings of one class: the manifest's fonts, then the fallback order.

    Args:
        class_name: e.g. ``hebrew_u05d0``.
        fonts: every discovered font (excluded ones are skipped).
        manifest: the recorded fonts per image index.
        per_class: how many images to make.

    Returns:
        The renderings; fewer than ``per_class`` when the installed fonts give no more distinct ones.
    """
    char = chr(code_point(class_name))
    seen: set[bytes] = set()
    used: set[str] = set()

    def take(font: Font) -> tuple[Font, Image.Image] | None:
        used.add(font.key)
        image = render_glyph(font.path, char)
        if image is None or image.tobytes() in seen:
            return None
        seen.add(image.tobytes())
        return font, image

    recorded = (manifest.resolve(class_name, code_point(class_name)) + [None] * per_class)[:per_class]
    slots = [take(f) if f is not None else None for f in recorded]
    from_manifest = sum(s is not None for s in slots)
    fallback: Iterator[Font] = iter(fallback_order(class_name, fonts))
    for k in range(per_class):
        while slots[k] is None and (font := next(fallback, None)) is not None:
            if font.key not in used:
                slots[k] = take(font)
    taken = [s for s in slots if s is not None]
    return ClassRender(class_name, [f for f, _ in taken], [im for _, im in taken], from_manifest)


def render_set(
    output: Path,
    fonts_dir: Path,
    fonts: Sequence[Font],
    manifest: Manifest,
    classes: dict[str, list[str]],
    per_class: int,
) -> list[ClassRender]:
    """Render every class into ``output/<folder>/<class>/NN.png`` and describe it in ``output/fonts.json``.

    The set is written to ``<output>.partial`` first and moved into place when complete.

    Args:
        output: the set's folder; must not exist or be empty.
        fonts_dir: the folder the fonts were found in (recorded in ``fonts.json``).
        fonts: every discovered font.
        manifest: the recorded fonts per image index.
        classes: folder name -> class names.
        per_class: images per class.

    Returns:
        One :class:`ClassRender` per class, in folder then class order.
    """
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    renders, record = [], {}
    for folder, names in classes.items():
        for name in names:
            render = render_class(name, fonts, manifest, per_class)
            (staging / folder / name).mkdir(parents=True)
            for k, image in enumerate(render.images):
                image.save(staging / folder / name / f"{k:02d}.png")
            renders.append(render)
            record[name] = [f.key for f in render.fonts]
    description = {
        "description": "glyphs64 rendered by python -m benchmarks.render_glyphs; classes: font (relative to fonts_dir) of each NN.png",
        "renderer": {"size": SIZE, "box": BOX, "font_px": FONT_PX, "resample": "bilinear"},
        "versions": {"pillow": PIL.__version__, "freetype": features.version("freetype2")},
        "fonts_dir": str(fonts_dir),
        "classes": record,
    }
    (staging / "fonts.json").write_text(json.dumps(description, indent=1) + "\n")
    if output.exists():
        output.rmdir()
    staging.rename(output)
    return renders


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.render_glyphs",
        description="Render the glyph few-shot set (glyphs64: base/ 128 classes, novel/ 144 classes, "
        "20 fonts each, 64x64 grey PNG) from Debian's free fonts.",
        epilog="The fonts (Debian 12; as root):\n  "
        + " \\\n    ".join(textwrap.wrap(APT_COMMAND, 90, break_on_hyphens=False, break_long_words=False))
        + f"\n\n${GLYPHS_ENV} names the set's folder (the default --output).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"the set's folder (default: ${GLYPHS_ENV}, else ~/.cache/clce/data/glyphs64); must be absent or empty",
    )
    add_fonts_dir_option(parser)
    parser.add_argument(
        "--classes",
        nargs="+",
        default=None,
        metavar="NAME",
        help="render only these classes (e.g. thai_u0e01); default: all 272",
    )
    parser.add_argument(
        "--per-class", type=int, default=PER_CLASS, help=f"images per class (default: {PER_CLASS})"
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=MANIFEST,
        help="the recorded fonts per image (default: benchmarks/glyphs64_fonts.json)",
    )
    return parser


def fail(message: str) -> int:
    """Print a one-line CLI error and return the exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0, or 2 with a one-line ``error:`` message)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    output = (args.output or default_output()).expanduser()
    classes = load_classes()
    if args.classes:
        known = {name for names in classes.values() for name in names}
        if unknown := [n for n in args.classes if n not in known]:
            return fail(f"unknown class {', '.join(unknown)}: the classes are listed in {SPLITS}")
        classes = {folder: [n for n in names if n in args.classes] for folder, names in classes.items()}
    if not 1 <= args.per_class <= 99:
        return fail(f"--per-class must be between 1 and 99, got {args.per_class}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        return fail(
            f"{output} already exists and is not an empty folder; remove it (rm -r {output}) or pass another --output"
        )
    if not args.manifest.is_file():
        return fail(f"manifest {args.manifest} not found; pass --manifest benchmarks/glyphs64_fonts.json")
    fonts = discover_fonts(args.fonts_dir) if args.fonts_dir.is_dir() else []
    if not any(f.excluded is None for f in fonts):
        return fail(
            f"no usable .ttf/.otf font under {args.fonts_dir}; install the fonts ({APT_COMMAND}) or pass --fonts-dir"
        )
    names = [n for ns in classes.values() for n in ns]
    if bare := [n for n in names if not any(f.covers(code_point(n)) for f in fonts)]:
        listed = ", ".join(bare[:4]) + (", ..." if len(bare) > 4 else "")
        return fail(
            f"no font under {args.fonts_dir} covers {len(bare)} classes ({listed}); install the fonts: {APT_COMMAND}"
        )
    try:
        manifest = Manifest.load(args.manifest, fonts)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return fail(
            f"{args.manifest} is not a font manifest ({exc!r}); rewrite it with python -m benchmarks.glyph_agreement infer"
        )
    start = time.perf_counter()
    renders = render_set(output, args.fonts_dir, fonts, manifest, classes, args.per_class)
    short = [r for r in renders if len(r.images) < args.per_class]
    for r in short:
        log.warning(
            "%s: only %d distinct renderings (wanted %d); the class has those",
            r.name,
            len(r.images),
            args.per_class,
        )
    if short:
        log.warning(
            "%d classes are short of images; installing the fonts may help: %s", len(short), APT_COMMAND
        )
    images = sum(len(r.images) for r in renders)
    recorded = sum(r.from_manifest for r in renders)
    print(
        f"wrote {images} images of {len(renders)} classes to {output} in {time.perf_counter() - start:.1f} s: "
        f"{recorded} from the manifest's fonts, {images - recorded} from the fallback order, {len(short)} classes short"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
