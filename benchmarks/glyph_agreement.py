"""How close a rendered glyph set is to a reference one, and which fonts a reference set was made from.

    python -m benchmarks.glyph_agreement compare --rendered ~/.cache/clce/data/glyphs64 --reference ../shared/data/glyphs64
    python -m benchmarks.glyph_agreement infer --reference ../shared/data/glyphs64   # rewrites glyphs64_fonts.json

``compare``: for each reference image, the closest rendered image of the same class (smallest mean
absolute difference, grey levels 0–255); counts how many have a pixel-identical one, one at the same
``NN``, and a near one (max absolute difference ≤ ``--near``), and the mean absolute difference over
the matched pairs. Prints one row per script and the total; ``--output`` writes every class as JSON.

``infer``: renders every font under ``--fonts-dir`` that covers a class's character (excluded fonts
too: the manifest records where each reference image came from) and lists, per reference image, the
fonts whose rendering is pixel-identical to it. The result is the manifest ``render_glyphs`` follows.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.glyph_fonts import MANIFEST, add_fonts_dir_option, discover_fonts, write_manifest
from benchmarks.render_glyphs import SIZE, code_point, load_classes, render_glyph

log = logging.getLogger(__name__)


def read_class(folder: Path) -> np.ndarray:
    """The ``NN.png`` images of one class folder, in name order: (N, 64, 64) uint8 (N = 0 if absent)."""
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    return (
        np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
        if files
        else np.zeros((0, SIZE, SIZE), np.uint8)
    )


def class_agreement(reference: np.ndarray, rendered: np.ndarray, near: int) -> dict[str, float]:
    """Match each reference image to its closest rendered one.

    Args:
        reference: (R, 64, 64) uint8, the reference class.
        rendered: (N, 64, 64) uint8, N ≥ 1, the same class rendered.
        near: the largest absolute difference that still counts as near.

    Returns:
        ``reference``, ``identical``, ``same_index`` (identical at the same ``NN``), ``near`` (counts)
        and ``mad`` (mean absolute difference over the R matched pairs).
    """
    diff = np.abs(reference[:, None].astype(np.int16) - rendered[None].astype(np.int16))  # (R, N, 64, 64)
    mad = diff.mean(axis=(2, 3))  # (R, N)
    best = mad.argmin(axis=1)  # (R,)
    worst = diff.max(axis=(2, 3))[np.arange(len(reference)), best]  # (R,)
    k = min(len(reference), len(rendered))
    same = int(sum(np.array_equal(reference[i], rendered[i]) for i in range(k)))
    return {
        "reference": len(reference),
        "identical": int((worst == 0).sum()),
        "same_index": same,
        "near": int((worst <= near).sum()),
        "mad": float(mad[np.arange(len(reference)), best].mean()),
    }


def compare(rendered: Path, reference: Path, near: int) -> dict[str, dict[str, float]]:
    """:func:`class_agreement` for every class of the class lists that both sets have, by class name."""
    return {
        name: class_agreement(
            read_class(reference / folder / name), read_class(rendered / folder / name), near
        )
        for folder, names in load_classes().items()
        for name in names
        if (reference / folder / name).is_dir() and any((rendered / folder / name).glob("*.png"))
    }


def table(per_class: dict[str, dict[str, float]], near: int) -> str:
    """A Markdown table: one row per script (the class name before ``_u``), then the total."""
    scripts: dict[str, list[dict[str, float]]] = {}
    for name, row in per_class.items():
        scripts.setdefault(name.rsplit("_u", 1)[0], []).append(row)
    scripts["**total**"] = list(per_class.values())
    lines = [
        f"| script | classes | reference images | identical | same NN | near (≤ {near}) | mean abs. diff | … of the non-identical |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for script, rows in scripts.items():
        n = max(1, sum(r["reference"] for r in rows))
        counts = [sum(r[key] for r in rows) for key in ("identical", "same_index", "near")]
        total = sum(r["mad"] * r["reference"] for r in rows)  # identical pairs add 0
        different = n - counts[0]
        cells = " | ".join(f"{c} ({100 * c / n:.1f}%)" for c in counts)
        rest = f"{total / different:.1f}" if different else "–"
        lines.append(f"| {script} | {len(rows)} | {n} | {cells} | {total / n:.3f} | {rest} |")
    return "\n".join(lines)


def infer(reference: Path, fonts_dir: Path) -> dict[str, list[list[str]]]:
    """Per class and reference image, the keys of the fonts that render it pixel-identically."""
    fonts = discover_fonts(fonts_dir)
    slots: dict[str, list[list[str]]] = {}
    for folder, names in load_classes().items():
        for name in names:
            cp = code_point(name)
            rendered = {}
            for font in (f for f in fonts if cp in f.code_points):
                image = render_glyph(font.path, chr(cp))
                if image is not None:
                    rendered.setdefault(image.tobytes(), []).append(font.key)
            images = read_class(reference / folder / name)
            slots[name] = [rendered.get(image.tobytes(), []) for image in images]
            unmatched = sum(not slot for slot in slots[name])
            log.info("%s: %d of %d images matched a font", name, len(images) - unmatched, len(images))
    return slots


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with a one-line ``error:`` for a missing folder)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.glyph_agreement", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="agreement of a rendered set with a reference set")
    cmp.add_argument("--rendered", type=Path, required=True, help="the set render_glyphs wrote")
    cmp.add_argument("--reference", type=Path, required=True, help="the reference set (base/, novel/)")
    cmp.add_argument(
        "--near",
        type=int,
        default=4,
        help="max absolute difference (grey levels) that counts as near (default: 4)",
    )
    cmp.add_argument("--output", type=Path, default=None, help="write the per-class figures as JSON")
    inf = sub.add_parser("infer", help="write the font manifest from a reference set")
    inf.add_argument("--reference", type=Path, required=True, help="the reference set (base/, novel/)")
    add_fonts_dir_option(inf)
    inf.add_argument(
        "--manifest",
        type=Path,
        default=MANIFEST,
        help="the file to write (default: benchmarks/glyphs64_fonts.json)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folders = [args.reference] + ([args.rendered] if args.command == "compare" else [args.fonts_dir])
    if missing := [str(f) for f in folders if not f.is_dir()]:
        print(f"error: folder not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.command == "compare":
        per_class = compare(args.rendered, args.reference, args.near)
        if not per_class:
            print(f"error: {args.rendered} and {args.reference} have no class in common", file=sys.stderr)
            return 2
        print(table(per_class, args.near))
        if skipped := sum(1 for _ in args.reference.glob("*/*/")) - len(per_class):
            print(f"{skipped} classes of the reference have no rendered images and are left out")
        if args.output:
            args.output.write_text(json.dumps({"near": args.near, "classes": per_class}, indent=1) + "\n")
        return 0
    slots = infer(args.reference, args.fonts_dir)
    matched = sum(bool(s) for entry in slots.values() for s in entry)
    total = sum(len(entry) for entry in slots.values())
    description = (
        "Fonts of the shared glyphs64 set, inferred by python -m benchmarks.glyph_agreement infer: for each class and "
        "image index NN, the fonts (paths under /usr/share/fonts, Debian 12) whose rendering is pixel-identical to "
        f"NN.png; [] where none is. {matched} of {total} images matched."
    )
    write_manifest(args.manifest, slots, description)
    print(f"wrote {args.manifest}: {matched} of {total} reference images matched a font")
    return 0


if __name__ == "__main__":
    sys.exit(main())
