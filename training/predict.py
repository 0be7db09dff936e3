"""Classify image files with an exported model folder (ONNX Runtime, numpy and Pillow; no torch).

    python -m training.predict --model-dir models/flowers102-clce photos/
    python -m training.predict --model-dir models/flowers102-clce a.jpg b.png --top-k 3 --json

Prints one line per image: ``PATH: label 0.912, label 0.051, ...`` (top-k softmax probabilities),
or with --json one JSON object per line, ``{"file", "top_k": [{"label", "probability"}]}``. Folders
are searched recursively for image files (by extension), in sorted order. An image that cannot be
read gets one ``error:`` line on stderr (and ``{"file", "error"}`` with --json); the rest are still
classified, and the exit code is 1. Exit code 2: the model folder is missing, incomplete or altered.

Preprocessing is the model card's, from :mod:`clce_core.preprocessing` (shared with serving): the
CONTRACTS image rule (EXIF orientation, transparency on white, RGB; ``load_image``), then timm's eval
transform re-done in numpy/PIL (``EvalTransform``): resize to ``floor(size / crop_pct)`` with the
card's interpolation, centre crop, ``/255``, ``(x - mean) / std``; equal to
``timm.data.create_transform(**data_config)`` within 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from clce_core.preprocessing import EvalTransform, load_image

ENCODER_FILE, HEAD_FILE, CARD_FILE = "encoder.onnx", "head.onnx", "model.json"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ModelDirError(Exception):
    """The model folder cannot be used; one line saying why and what to do."""


# ------------------------------------------------------------------------------------ the model


class Predictor:
    """An export folder loaded into ONNX Runtime: ``predict(images)`` -> class probabilities."""

    def __init__(self, model_dir: str | os.PathLike[str], providers: Sequence[str] | None = None) -> None:
        """Read and verify ``model.json`` (files present, sha256 as recorded) and open both sessions.

        Raises:
            ModelDirError: missing folder or file, unreadable card, or files that do not match it.
        """
        import hashlib

        import onnxruntime as ort

        folder = Path(model_dir)
        missing = [n for n in (ENCODER_FILE, HEAD_FILE, CARD_FILE) if not (folder / n).is_file()]
        if missing:
            raise ModelDirError(
                f"{folder} is not a model export (missing {', '.join(missing)}); "
                "create one with python -m training.export"
            )
        try:
            card = json.loads((folder / CARD_FILE).read_text())
            self.transform = EvalTransform.from_card(card)
            self.labels = [str(v) for v in card["labels"]]
            recorded = card["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelDirError(f"{folder / CARD_FILE} is not a usable model card ({e})") from None
        for name in (ENCODER_FILE, HEAD_FILE):
            digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
            if recorded.get(name) != digest:
                raise ModelDirError(
                    f"{folder / name} does not match the sha256 in {CARD_FILE} (changed after export?); re-export"
                )
        self.card, self.model_id = card, recorded[ENCODER_FILE]
        available = ort.get_available_providers()
        providers = list(
            providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.encoder = ort.InferenceSession(str(folder / ENCODER_FILE), options, providers=providers)
            self.head = ort.InferenceSession(str(folder / HEAD_FILE), options, providers=providers)
        except Exception as e:  # onnxruntime's own exception types
            raise ModelDirError(
                f"ONNX Runtime cannot load {folder}: {str(e).splitlines()[0][:300]}"
            ) from None

    def predict(self, images: np.ndarray) -> np.ndarray:
        """``(N, 3, H, W)`` preprocessed images -> ``(N, C)`` softmax probabilities (float64)."""
        embedding = self.encoder.run(["embedding"], {"pixel_values": images})[0]  # (N, D)
        logits = self.head.run(["logits"], {"embedding": embedding})[0].astype(np.float64)  # (N, C)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)


def find_images(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files as given (any extension); folders searched recursively for image extensions, sorted."""
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            yield from found
        else:
            yield p


# ------------------------------------------------------------------------------------ the CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.predict",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model-dir", required=True, help="an export folder (models/NAME)")
    parser.add_argument("images", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--batch-size", type=int, default=16, help="images per ONNX Runtime call")
    return parser


def _emit(path: Path, labels: list[str], probs: np.ndarray, k: int, as_json: bool) -> None:
    order = np.argsort(-probs, kind="stable")[:k]
    if as_json:
        top = [{"label": labels[i], "probability": round(float(probs[i]), 6)} for i in order]
        print(json.dumps({"file": str(path), "top_k": top}), flush=True)
    else:
        print(f"{path}: " + ", ".join(f"{labels[i]} {probs[i]:.3f}" for i in order), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        print("error: --top-k and --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(args.model_dir)
    except ModelDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = done = 0
    batch: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        if batch:
            probs = predictor.predict(np.stack([x for _, x in batch]))
            for (path, _), p in zip(batch, probs, strict=True):
                _emit(path, predictor.labels, p, args.top_k, args.json)
            batch.clear()

    for path in find_images(args.images):
        try:
            batch.append((path, predictor.transform(load_image(path))))
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
