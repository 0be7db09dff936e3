"""The fonts the glyph few-shot set is rendered from: discovery, the exclusion rule, the font manifest.

A font is a ``.ttf`` or ``.otf`` file under a fonts folder (``/usr/share/fonts`` on Debian), named by
its path relative to that folder (``opentype/tlwg/Loma.otf``). Symbol, dingbat and keyboard-cap fonts
are excluded: their cmap maps Latin code points to pictures (a ✔ for ``4``, a boxed key for ``z``).

The manifest (``glyphs64_fonts.json`` beside this file) records, for every image ``NN.png`` of every
class of the shared set, the fonts whose rendering is pixel-identical to it, inferred by
``python -m benchmarks.glyph_agreement infer``; rendering with it reproduces that set.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fontTools.ttLib import TTFont, TTLibError

log = logging.getLogger(__name__)

MANIFEST = Path(__file__).with_name("glyphs64_fonts.json")
FONTS_DIR = Path("/usr/share/fonts")
# The Debian 12 packages of the shared set's README; Thai from the OpenType builds of fonts-tlwg-*
# (the shared set's Thai renderings match the -otf files, not the -ttf ones).
DEBIAN_PACKAGES = (
    "fonts-bwht fonts-comic-neue fonts-dejavu-extra fonts-dkg-handwriting fonts-ebgaramond fonts-freefont-otf "
    "fonts-gargi fonts-gfs-artemisia fonts-gfs-didot fonts-gfs-neohellenic fonts-humor-sans fonts-ipafont-gothic "
    "fonts-liberation2 fonts-linuxlibertine fonts-lohit-deva fonts-nakula fonts-noto-core fonts-sahadeva "
    "fonts-samyak-deva fonts-sarai fonts-sil-abyssinica fonts-sjfonts fonts-urw-base35 fonts-vlgothic "
    "fonts-tlwg-garuda-otf fonts-tlwg-kinnari-otf fonts-tlwg-laksaman-otf fonts-tlwg-loma-otf fonts-tlwg-mono-otf "
    "fonts-tlwg-norasi-otf fonts-tlwg-purisa-otf fonts-tlwg-sawasdee-otf fonts-tlwg-typewriter-otf "
    "fonts-tlwg-typist-otf fonts-tlwg-typo-otf fonts-tlwg-umpush-otf fonts-tlwg-waree-otf"
)
APT_COMMAND = f"apt-get update && apt-get install -y --no-install-recommends {DEBIAN_PACKAGES}"
FONT_SUFFIXES = (".ttf", ".otf")
# Words in a font's family or full name that mark a symbol / dingbat / keyboard-cap font.
EXCLUDED_NAME = re.compile(r"symbol|dingbat|keyboard|emoji|music|last ?resort", re.IGNORECASE)
OS2_CLASS_SYMBOLIC = 12  # OS/2 sFamilyClass high byte: "Symbolic" (URW's D050000L Dingbats)
PANOSE_PICTORIAL = 5  # PANOSE bFamilyType: "Latin Pictorial" (Standard Symbols PS)


@dataclass(frozen=True)
class Font:
    """One font file and what the selection rule needs to know about it.

    Attributes:
        path: the file.
        key: its path relative to the fonts folder, POSIX style (``truetype/noto/NotoSans-Bold.ttf``).
        code_points: the Unicode code points its cmap maps to a glyph.
        excluded: why it is not used (symbol, dingbat, keyboard-cap font), or ``None``.
    """

    path: Path
    key: str
    code_points: frozenset[int]
    excluded: str | None = None

    def covers(self, code_point: int) -> bool:
        """Whether the font has a glyph for ``code_point`` and is not excluded."""
        return self.excluded is None and code_point in self.code_points


def exclusion_reason(font: TTFont) -> str | None:
    """Why a font must not be used for letters, or ``None``: symbol, dingbat and keyboard-cap fonts.

    Args:
        font: an opened font.

    Returns:
        A short reason naming the evidence, or ``None`` for a text font.
    """
    name = font["name"]
    names = " ".join(filter(None, (name.getDebugName(i) for i in (1, 4, 16))))
    if found := EXCLUDED_NAME.search(names):
        return f"its name {name.getDebugName(1)!r} says {found.group(0).lower()!r}"
    if "OS/2" in font:
        os2 = font["OS/2"]
        if os2.sFamilyClass >> 8 == OS2_CLASS_SYMBOLIC:
            return "OS/2 family class 12 (symbolic)"
        if os2.panose.bFamilyType == PANOSE_PICTORIAL:
            return "PANOSE family type 5 (pictorial)"
    return None


def add_fonts_dir_option(parser: argparse.ArgumentParser) -> None:
    """``--fonts-dir DIR``: where the fonts are, searched recursively (default ``/usr/share/fonts``)."""
    parser.add_argument(
        "--fonts-dir",
        type=Path,
        default=FONTS_DIR,
        help=f"where the fonts are, searched recursively (default: {FONTS_DIR})",
    )


def discover_fonts(fonts_dir: Path) -> list[Font]:
    """Every ``.ttf`` / ``.otf`` file under ``fonts_dir``, sorted by key, excluded ones marked.

    Unreadable files are skipped with a warning; collections (``.ttc``) and Type 1 files are not read
    (Debian ships the listed packages' fonts as ``.ttf`` / ``.otf``).

    Args:
        fonts_dir: the folder to search recursively (``/usr/share/fonts``).

    Returns:
        The fonts, sorted by ``key``.
    """
    fonts = []
    for path in sorted(p for p in fonts_dir.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file()):
        try:
            with TTFont(path, lazy=True) as font:
                code_points = frozenset(font.getBestCmap() or ())
                excluded = exclusion_reason(font)
        except (TTLibError, OSError, KeyError, AssertionError) as exc:
            log.warning("skipping %s: not a readable font (%s)", path, exc)
            continue
        fonts.append(Font(path, path.relative_to(fonts_dir).as_posix(), code_points, excluded))
    return fonts


class Manifest:
    """The fonts recorded per class and image index (``slots``), resolved against installed fonts.

    Each slot is a list of font keys that render that image identically; the first one installed and
    not excluded is used. A key that is not found under the fonts folder is also looked up by file
    name, when exactly one installed font has that name (a folder laid out differently from Debian's).
    """

    def __init__(self, slots: dict[str, list[list[str]]], fonts: Iterable[Font]):
        self.slots = slots
        self.by_key = {f.key: f for f in fonts}
        by_name: dict[str, list[Font]] = {}
        for font in self.by_key.values():
            by_name.setdefault(font.path.name, []).append(font)
        self.by_name = {name: found[0] for name, found in by_name.items() if len(found) == 1}

    @classmethod
    def load(cls, path: Path, fonts: Iterable[Font]) -> Manifest:
        """Read a manifest written by :func:`write_manifest`."""
        data = json.loads(path.read_text())
        table = data["fonts"]
        slots = {
            name: [[table[i] for i in slot] for slot in entry] for name, entry in data["classes"].items()
        }
        return cls(slots, fonts)

    def resolve(self, class_name: str, code_point: int) -> list[Font | None]:
        """The font to use for each recorded image of a class (``None``: none usable here).

        Args:
            class_name: e.g. ``thai_u0e01``.
            code_point: the class's character, which the font must cover.

        Returns:
            One entry per recorded image, in ``NN`` order; empty for a class the manifest lacks.
        """
        chosen: list[Font | None] = []
        for slot in self.slots.get(class_name, []):
            found = (self.by_key.get(key) or self.by_name.get(Path(key).name) for key in slot)
            chosen.append(next((f for f in found if f is not None and f.covers(code_point)), None))
        return chosen


def write_manifest(path: Path, slots: dict[str, list[list[str]]], description: str) -> None:
    """Write ``slots`` (class -> per image, the keys of identical-rendering fonts) compactly.

    Font keys go into one sorted table; each slot is a list of indices into it.

    Args:
        path: the JSON file to write.
        slots: class name -> one list of font keys per image index.
        description: what the file is and how it was made (stored in it).
    """
    table = sorted({key for entry in slots.values() for slot in entry for key in slot})
    index = {key: i for i, key in enumerate(table)}
    classes = {name: [[index[k] for k in slot] for slot in entry] for name, entry in sorted(slots.items())}
    fonts = ",\n".join(f"    {json.dumps(key)}" for key in table)
    body = ",\n".join(f"    {json.dumps(name)}: {json.dumps(entry)}" for name, entry in classes.items())
    head = f'{{\n  "description": {json.dumps(description)},\n  "fonts": [\n{fonts}\n  ],\n'
    path.write_text(head + f'  "classes": {{\n{body}\n  }}\n}}\n')
