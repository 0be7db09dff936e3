"""ONNX conversion of a :class:`ClassifierModel` and its verification against PyTorch.

The pieces :func:`training.exporter.export_model` is made of: the legacy TorchScript exporter with a
dynamic batch axis (:func:`export_onnx`), the float16 rewrite (:func:`convert_to_fp16`), the check
images (:func:`check_images`), the parity measurement at batch 1 and 7 (:func:`measure_parity`,
judged by :func:`parity_failures` against a :class:`Tolerance`) and the one-off accuracy comparison
on a labelled split (:func:`evaluate_accuracy`).

Tolerances, measured before they were chosen (ONNX Runtime 1.32 CPU vs torch 2.14 CPU):

* fp32: logits within ``1e-4 * max(1, max|logit|)``, embedding cosine >= 0.9999. Measured on the
  check images and on 7 photographs: at most 1.4e-6 relative (EfficientNet-Lite0 with its ImageNet
  head, ResNet-18, ViT-S/16 at 224 px; 9.4e-6 absolute at max|logit| 11.4), cosine 1 - 1e-9.
* fp16 (float16 compute, float32 edges): logits within ``5e-2 * max(1, max|logit|)``, cosine
  >= 0.999, top-1 kept on every check image. Measured: at most 3.5e-3 relative (EfficientNet-Lite0:
  0.040 at max|logit| 11.4; ViT-S 9e-4), cosine >= 0.99995. On the CPU, ONNX Runtime runs the
  float16 nodes it has no float16 kernel for in float32 between Casts, so a GPU may differ more.

* int8 (``--int8``: int8 encoder, float32 head): logits within ``0.5 * max(1, max|logit|)``, cosine
  >= 0.9, top-1 kept beyond that margin; on the run's validation split top-1 at most
  ``--max-accuracy-drop`` (default 1.0) points below the float32 export's. Measured on the check
  images: 0.081-0.145 relative, cosine >= 0.983 (tf_efficientnet_lite0 with its ImageNet head at
  224 px, calibrated on 22 photo crops; the quick-start checkpoint at 64 px); 0.386 and 0.954 for a
  randomly initialised test_vit. A non-negative pooled CNN embedding has a cosine of 0.7-0.9 with
  an unrelated one, so these two bounds only catch a broken conversion; the validation top-1
  judges the quantisation.

A top-1 "flip" counts as a failure unless PyTorch's own two logits differ by less than the logit
tolerance (a tie at the precision promised; it is reported as such).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clce_core.models import ClassifierModel
from training.transforms import eval_transform

PARITY_BATCH_SIZES = (1, 7)


@dataclass(frozen=True)
class Tolerance:
    """How close ONNX Runtime must come to PyTorch.

    Attributes:
        logits_rel: max |logit_onnx - logit_torch| <= logits_rel * max(1, max |logit_torch|).
        embedding_cos: every embedding's cosine with PyTorch's >= this.
        top1_points: accuracy check: |top-1 onnx - top-1 torch| <= this many percentage points.
    """

    logits_rel: float
    embedding_cos: float
    top1_points: float


TOLERANCES = {
    "fp32": Tolerance(logits_rel=1e-4, embedding_cos=0.9999, top1_points=0.1),
    "fp16": Tolerance(logits_rel=5e-2, embedding_cos=0.999, top1_points=0.5),
    "int8": Tolerance(logits_rel=0.5, embedding_cos=0.9, top1_points=1.0),
}


def supported_opsets() -> tuple[int, int]:
    """(lowest, highest) opset the legacy TorchScript exporter of this torch writes."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_MIN_OPSET), int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):  # the private module moved: the range every torch 2.x has
        return 7, 20


class ConversionError(Exception):
    """The exporter cannot express the module (e.g. at this opset); one line."""


# --------------------------------------------------------------------------------------- conversion


def export_onnx(
    module: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str, opset: int
) -> None:
    """``torch.onnx.export`` with the legacy exporter (``dynamo=False``); only axis 0 (batch) is dynamic.

    Raises:
        ConversionError: the exporter failed (unsupported operator at this opset, ...).
        OSError: ``path`` cannot be written.
    """
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}}
    try:
        with warnings.catch_warnings():  # the exporter's deprecation notice; TracerWarnings of ViTs
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except OSError:
        raise
    except Exception as e:  # torch.onnx.errors.*, RuntimeError from symbolic functions
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConversionError(f"cannot export {path.name} at opset {opset}: {first[:300]}") from None


def convert_to_fp16(path: Path) -> None:
    """Rewrite an ONNX file to compute in float16 while keeping float32 inputs and outputs.

    ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``, which ships
    with onnxruntime (no extra dependency): weights become float16, Cast nodes sit at the edges.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(model, str(path))


def ort_session(path: str | os.PathLike[str], providers: list[str] | None = None, threads: int = 0) -> Any:
    """An ONNX Runtime session with every graph optimisation on (what serving uses).

    Args:
        path: the ``.onnx`` file.
        providers: execution providers, default ``["CPUExecutionProvider"]``.
        threads: intra-op threads; 0 = ONNX Runtime's default (one per physical core).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: fp16 graphs log a warning per CPU fallback node
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------- check images


def _synthetic_images(seed: int) -> list[Image.Image]:
    """Seven RGB images of different sizes and aspect ratios: noise and structured patterns."""
    rng = np.random.default_rng(seed)

    def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        return np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")

    y, x = grid(240, 320)
    gradient = np.stack([x, y, 1 - x * y], axis=-1)  # (H, W, 3) in [0, 1]
    y2, x2 = grid(256, 256)
    radius = np.hypot(x2 - 0.5, y2 - 0.45)
    rings = np.stack([0.5 + 0.5 * np.sin(40 * radius), radius, 1 - radius], axis=-1)
    cells = ((np.arange(224)[:, None] // 16 + np.arange(288)[None, :] // 16) % 2).astype(float)
    checker = np.stack([cells, 0.2 + 0.6 * cells[::-1], 1 - cells], axis=-1)
    yy, xx = np.mgrid[0:300, 0:200]
    stripes = np.stack([((xx + yy) // 12) % 2, ((xx - yy) // 20) % 2, np.full_like(xx, 0.5)], -1).astype(
        float
    )
    arrays = [
        rng.uniform(0, 1, (256, 256, 3)),  # white noise, square
        rng.uniform(0, 1, (200, 300, 3)),  # white noise, landscape
        np.asarray(  # smooth random blobs: coarse noise upsampled, portrait
            Image.fromarray((rng.uniform(0, 1, (6, 4, 3)) * 255).astype(np.uint8)).resize(
                (240, 360), Image.BICUBIC
            )
        )
        / 255.0,
        gradient,
        rings,
        checker,
        stripes,
    ]
    return [Image.fromarray(np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8)) for a in arrays]


def check_images(data_config: dict[str, Any], seed: int = 0) -> np.ndarray:
    """The parity check's images: 3 random and 4 structured, through the model's eval transform.

    Returns:
        ``(7, 3, H, W)`` float32, normalised as the model expects.
    """
    transform = eval_transform(data_config)
    return np.stack([transform(image).numpy() for image in _synthetic_images(seed)]).astype(np.float32)


# --------------------------------------------------------------------------------------- parity


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of ``(N, D)`` arrays in float64; two zero rows count as identical."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-300)
    return np.where((na == 0) & (nb == 0), 1.0, cos)


def measure_parity(
    model: ClassifierModel, encoder: Any, head: Any, images: np.ndarray, tol: Tolerance
) -> dict[str, Any]:
    """Compare encoder.onnx -> head.onnx in ONNX Runtime with PyTorch, at batch 1 and batch N.

    Args:
        model: the PyTorch model (eval mode, float32, CPU).
        encoder / head: ONNX Runtime sessions of the exported files.
        images: ``(N, 3, H, W)`` normalised images.
        tol: decides which top-1 flips are ties.

    Returns:
        The worst case over both batch sizes: ``logits_max_abs_diff``, ``logits_max_abs`` (of PyTorch),
        ``logits_limit``, ``embedding_min_cosine``, ``embedding_max_abs_diff``, ``top1_mismatches``
        (flips beyond the tolerance), ``top1_ties``, plus the settings (provider, images, batch sizes).
    """
    images = np.ascontiguousarray(images, dtype=np.float32)
    n = len(images)
    with torch.no_grad():
        ref_emb, ref_logits = (t.numpy().astype(np.float64) for t in model(torch.from_numpy(images)))
    max_abs = float(np.abs(ref_logits).max())
    limit = tol.logits_rel * max(1.0, max_abs)
    worst = {"logits": 0.0, "emb": 0.0, "cos": 1.0, "mismatch": 0, "ties": 0}
    for batch in sorted({min(b, n) for b in PARITY_BATCH_SIZES}):
        emb_parts, logit_parts = [], []
        for i in range(0, n, batch):
            emb = encoder.run(["embedding"], {"pixel_values": images[i : i + batch]})[0]  # (b, D)
            emb_parts.append(emb)
            logit_parts.append(head.run(["logits"], {"embedding": emb})[0])  # (b, C)
        emb = np.concatenate(emb_parts).astype(np.float64)
        logits = np.concatenate(logit_parts).astype(np.float64)
        worst["logits"] = max(worst["logits"], float(np.abs(logits - ref_logits).max()))
        worst["emb"] = max(worst["emb"], float(np.abs(emb - ref_emb).max()))
        worst["cos"] = min(worst["cos"], float(_cosine(emb, ref_emb).min()))
        ours, theirs = logits.argmax(1), ref_logits.argmax(1)
        rows = np.flatnonzero(ours != theirs)
        margins = ref_logits[rows, theirs[rows]] - ref_logits[rows, ours[rows]]
        worst["mismatch"] = max(worst["mismatch"], int((margins > limit).sum()))
        worst["ties"] = max(worst["ties"], int((margins <= limit).sum()))
    return {
        "provider": "CPUExecutionProvider",
        "images": n,
        "batch_sizes": sorted({min(b, n) for b in PARITY_BATCH_SIZES}),
        "logits_max_abs_diff": worst["logits"],
        "logits_max_abs": max_abs,
        "logits_limit": limit,
        "embedding_max_abs_diff": worst["emb"],
        "embedding_min_cosine": worst["cos"],
        "embedding_cosine_bound": tol.embedding_cos,
        "top1_mismatches": worst["mismatch"],
        "top1_ties": worst["ties"],
    }


def parity_failures(parity: dict[str, Any], tol: Tolerance) -> list[str]:
    """Human-readable reasons the parity numbers miss the tolerance (empty: it passes)."""
    failures = []
    if not parity["logits_max_abs_diff"] <= parity["logits_limit"]:  # also catches NaN
        failures.append(
            f"logits max |diff| {parity['logits_max_abs_diff']:.3g} > {parity['logits_limit']:.3g} "
            f"({tol.logits_rel:g} x max(1, max|logit| {parity['logits_max_abs']:.3g}))"
        )
    if not parity["embedding_min_cosine"] >= tol.embedding_cos:
        failures.append(f"embedding cosine {parity['embedding_min_cosine']:.6f} < {tol.embedding_cos}")
    if parity["top1_mismatches"]:
        failures.append(f"top-1 differs on {parity['top1_mismatches']} of {parity['images']} check images")
    return failures


def describe_parity(parity: dict[str, Any]) -> str:
    """One line: the measured numbers and their limits."""
    ties = f" ({parity['top1_ties']} within-tolerance ties)" if parity["top1_ties"] else ""
    agree = parity["images"] - parity["top1_mismatches"] - parity["top1_ties"]
    return (
        f"logits max |diff| {parity['logits_max_abs_diff']:.2e} (limit {parity['logits_limit']:.2e}), "
        f"embedding cosine >= {parity['embedding_min_cosine']:.7f} (limit {parity['embedding_cosine_bound']}), "
        f"top-1 equal on {agree}/{parity['images']}{ties}"
    )


# --------------------------------------------------------------------------------------- accuracy


def evaluate_accuracy(
    model: ClassifierModel, encoder: Any, head: Any, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, Any]:
    """Top-1 of the ONNX files and of PyTorch on the same labelled batches, in one pass.

    Returns:
        ``images``, ``onnx_top1``, ``torch_top1`` (percent) and ``disagreements`` (predictions that differ).
    """
    correct_onnx = correct_torch = differ = total = 0
    for images, labels in loader:
        x = images.float().numpy()  # (B, 3, H, W)
        logits = head.run(["logits"], {"embedding": encoder.run(["embedding"], {"pixel_values": x})[0]})[0]
        with torch.no_grad():
            ref = model(images.float())[1].numpy()
        y = labels.numpy()
        ours, theirs = logits.argmax(1), ref.argmax(1)
        correct_onnx += int((ours == y).sum())
        correct_torch += int((theirs == y).sum())
        differ += int((ours != theirs).sum())
        total += len(y)
    pct = 100.0 / max(total, 1)
    return {
        "images": total,
        "onnx_top1": correct_onnx * pct,
        "torch_top1": correct_torch * pct,
        "disagreements": differ,
    }
