"""Classify image files with an exported model folder (ONNX Runtime, numpy and Pillow; no torch).

    python -m serving.predict --model-dir models/flowers102-clce photos/
    python -m serving.predict --model-dir models/flowers102-clce a.jpg b.png --top-k 3 --json
    python -m serving.predict --model-dir models/flowers102-clce photos/ --threshold calibrated

Prints one line per image: ``PATH: label 0.912, label 0.051, ...`` (top-k softmax probabilities),
or with --json one JSON object per line, ``{"file", "label", "rejected", "similarity", "top_k":
[{"label", "probability"}]}`` (the fields of a ``/classify`` result). --threshold (a cosine in
[-1, 1], or ``calibrated`` for the one stored at export) rejects an image whose best cosine to the
training-class prototypes is below it: ``PATH: unknown (similarity 0.412 < 0.530); label 0.612,
...``; an accepted one ends with ``(similarity 0.873)``. It needs an export with ``prototypes.npy``
(exit code 2 otherwise), and is decided as the server decides (``serving.classification``). Folders
are searched recursively for image files (by extension), in sorted order. An image that cannot be
read gets one ``error:`` line on stderr (and ``{"file", "error"}`` with --json); the rest are still
classified, and the exit code is 1. Exit code 2: the model folder is missing, incomplete or altered.

The folder is read and verified as the server does (``clce_core.export_folder.read_card``: schema
version, sha256 of both files) and run by the server's sessions (``serving.sessions.ModelRuntime``:
CUDA when this onnxruntime build has it, else the CPU). Preprocessing is the model card's, from
:mod:`clce_core.preprocessing`: the CONTRACTS image rule (EXIF orientation, transparency on white,
RGB; ``load_image``), then timm's eval transform re-done in numpy/PIL (``EvalTransform``): resize to
``floor(size / crop_pct)`` with the card's interpolation, centre crop, ``/255``, ``(x - mean) / std``;
equal to ``timm.data.create_transform(**data_config)`` within 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from clce_core.export_folder import ExportFolderError, read_card
from clce_core.preprocessing import EvalTransform, load_image
from serving.classification import OpenSetUnavailable, Prediction, parse_threshold, predict, resolve_threshold
from serving.sessions import ModelRuntime

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def find_images(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files as given (any extension); folders searched recursively for image extensions, sorted."""
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            yield from found
        else:
            yield p


def read_pixels(path: Path, transform: EvalTransform) -> np.ndarray:
    """One image file -> ``(H, W, 3)`` uint8 network input (the loading rule, then ``transform``'s crop;
    the sessions' graph does ``/255`` and the normalisation)."""
    return transform.to_uint8(load_image(path))


def build_parser() -> argparse.ArgumentParser:
    summary, details = __doc__.split("\n\n", 1)
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        "python -m serving.predict", description=summary, epilog=details, formatter_class=raw
    )
    parser.add_argument("--model-dir", required=True, help="an export folder (models/NAME)")
    parser.add_argument("images", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--batch-size", type=int, default=16, help="images per ONNX Runtime call")
    parser.add_argument(
        "--threshold",
        type=_threshold,
        help="reject images whose best cosine to the training-class prototypes is below this (a number "
        "in [-1, 1], or 'calibrated' for the threshold stored at export)",
    )
    return parser


def _threshold(value: str) -> float | str | None:
    try:
        return parse_threshold(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _emit(path: Path, p: Prediction, threshold: float | None, as_json: bool) -> None:
    if as_json:
        top = [{"label": label, "probability": round(prob, 6)} for label, prob in p.top_k]
        similarity = None if p.similarity is None else round(p.similarity, 6)
        row = {"file": str(path), "label": p.label, "rejected": p.rejected, "similarity": similarity}
        print(json.dumps({**row, "top_k": top}), flush=True)
        return
    ranked = ", ".join(f"{label} {prob:.3f}" for label, prob in p.top_k)
    if p.rejected:
        line = f"{path}: {p.label} (similarity {p.similarity:.3f} < {threshold:.3f}); {ranked}"
    elif threshold is not None:
        line = f"{path}: {ranked} (similarity {p.similarity:.3f})"
    else:
        line = f"{path}: {ranked}"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        print("error: --top-k and --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        card = read_card(args.model_dir)
        threshold = resolve_threshold(card, args.threshold)
        runtime = ModelRuntime(card, device="auto")
    except OpenSetUnavailable as e:
        print(f"error: --threshold: {e}", file=sys.stderr)
        return 2
    except ExportFolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = done = 0
    batch: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        if batch:
            embedding, logits = runtime.run(np.stack([x for _, x in batch]))  # (B, D), (B, C)
            predictions = predict(card, embedding, logits, args.top_k, threshold)
            for (path, _), p in zip(batch, predictions, strict=True):
                _emit(path, p, threshold, args.json)
            batch.clear()

    for path in find_images(args.images):
        try:
            batch.append((path, read_pixels(path, card.preprocess)))
        except Exception as e:  # unreadable, not an image, truncated, decompression bomb: report, go on
            failed += 1
            reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
            print(f"error: {path}: cannot read the image ({reason})", file=sys.stderr)
            if args.json:
                print(
                    json.dumps({"file": str(path), "error": f"cannot read the image ({reason})"}), flush=True
                )
            continue
        done += 1
        if len(batch) == args.batch_size:
            flush()
    flush()
    if done + failed == 0:
        print(f"error: no image files in {' '.join(args.images)}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
