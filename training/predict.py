"""Classify image files with an exported model folder (ONNX Runtime, numpy and Pillow; no torch).

    python -m training.predict --model-dir models/flowers102-clce photos/
    python -m training.predict --model-dir models/flowers102-clce a.jpg b.png --top-k 3 --json

Prints one line per image: ``PATH: label 0.912, label 0.051, ...`` (top-k softmax probabilities),
or with --json one JSON object per line, ``{"file", "top_k": [{"label", "probability"}]}``. Folders
are searched recursively for image files (by extension), in sorted order. An image that cannot be
read gets one ``error:`` line on stderr (and ``{"file", "error"}`` with --json); the rest are still
classified, and the exit code is 1. Exit code 2: the model folder is missing, incomplete or altered.

Preprocessing is the model card's: the CONTRACTS image rule (EXIF orientation, transparency on
white, RGB; :func:`training.images.load_image`), then timm's eval transform re-done in numpy/PIL
(:func:`preprocess`): resize to ``floor(size / crop_pct)`` with the card's interpolation, centre crop,
``/255``, ``(x - mean) / std``; equal to ``timm.data.create_transform(**data_config)`` within 1e-5.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.images import load_image

ENCODER_FILE, HEAD_FILE, CARD_FILE = "encoder.onnx", "head.onnx", "model.json"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# timm interpolation names -> PIL filters, as torchvision maps them for PIL images
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


class ModelDirError(Exception):
    """The model folder cannot be used; one line saying why and what to do."""


# ------------------------------------------------------------------------------------ preprocessing


@dataclass(frozen=True)
class EvalTransform:
    """timm's ``transforms_imagenet_eval`` for one model card, in numpy and PIL.

    Attributes:
        input_size: (3, H, W).
        interpolation: a :data:`RESAMPLE` key.
        crop_pct: the image is resized to ``floor(size / crop_pct)`` before the crop.
        crop_mode: ``center`` (shorter side, crop), ``squash`` (both sides, crop) or ``border``
            (longer side, pad with the mean colour).
        mean, std: per-channel normalisation of [0, 1] pixels.
    """

    input_size: tuple[int, int, int]
    interpolation: str
    crop_pct: float
    crop_mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> EvalTransform:
        interpolation = card.get("interpolation") or "bilinear"
        crop_mode = card.get("crop_mode") or "center"
        if interpolation not in RESAMPLE or crop_mode not in ("center", "squash", "border"):
            raise ValueError(f"unsupported interpolation {interpolation!r} or crop_mode {crop_mode!r}")
        return cls(
            tuple(int(v) for v in card["input_size"]),  # type: ignore[arg-type]
            interpolation,
            float(card.get("crop_pct") or 0.875),
            crop_mode,
            tuple(float(v) for v in card["mean"]),
            tuple(float(v) for v in card["std"]),
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after the resize step, computed as timm / torchvision do."""
        scale_h, scale_w = (math.floor(s / self.crop_pct) for s in self.input_size[1:])
        if self.crop_mode == "squash":
            return scale_w, scale_h
        if self.crop_mode == "center" and scale_h == scale_w:  # torchvision Resize(int): shorter side
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = scale_h, int(scale_h * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        # timm ResizeKeepRatio: longest=0 (center) matches the shorter side, longest=1 (border) the longer
        ratio_h, ratio_w = height / scale_h, width / scale_w
        ratio = max(ratio_h, ratio_w) if self.crop_mode == "border" else min(ratio_h, ratio_w)
        return round(width / ratio), round(height / ratio)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> ``(3, H, W)`` float32 network input."""
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, RESAMPLE[self.interpolation])
        fill = tuple(round(255 * v) for v in self.mean) if self.crop_mode == "border" else (0, 0, 0)
        image = center_crop_or_pad(image, self.input_size[1], self.input_size[2], fill)
        x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)  # (3, H, W)
        x /= np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def center_crop_or_pad(image: Image.Image, crop_h: int, crop_w: int, fill: tuple[int, ...]) -> Image.Image:
    """torchvision ``CenterCrop`` / timm ``CenterCropOrPad``: pad where too small, then the rounded centre."""
    width, height = image.size
    if crop_w > width or crop_h > height:
        left = (crop_w - width) // 2 if crop_w > width else 0
        top = (crop_h - height) // 2 if crop_h > height else 0
        right = (crop_w - width + 1) // 2 if crop_w > width else 0
        bottom = (crop_h - height + 1) // 2 if crop_h > height else 0
        padded = Image.new(image.mode, (width + left + right, height + top + bottom), fill)
        padded.paste(image, (left, top))
        image, (width, height) = padded, padded.size
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    if (left, top, width, height) == (0, 0, crop_w, crop_h):
        return image
    return image.crop((left, top, left + crop_w, top + crop_h))


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
