"""The data side of ``--int8``: which images calibrate the quantiser, and how the result is judged.

:func:`balanced_indices` picks class-balanced, seeded calibration images from the run's training
split; :class:`Int8Plan` carries them with the validation batches and the refusal limit into
:func:`training.exporter.export_model`; :func:`compare_top1` measures the int8 encoder's top-1 against
the float32 encoder's on the same batches. The graph side is :mod:`training.quantize`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clce_core.export_folder import EMBEDDING, ENCODER_INPUT, LOGITS

DEFAULT_CALIBRATION_IMAGES = 300


@dataclass(frozen=True)
class Int8Plan:
    """Everything an int8 export needs besides the model.

    Attributes:
        images: calibration images ``(N, 3, H, W)`` float32, through the model's eval transform.
        validation: labelled batches ``((B, 3, H, W), (B,))`` on which the int8 encoder's top-1 is
            compared with the float32 encoder's.
        max_accuracy_drop: refuse the export when top-1 falls by more than this many points.
        method: one of :data:`training.quantize.CALIBRATION_METHODS`.
        seed: the seed that chose the calibration images (recorded).
        source: where the calibration images come from, e.g. ``"fashion-mnist train"``.
        validation_source: where the validation batches come from, e.g. ``"fashion-mnist val"``.
    """

    images: np.ndarray
    validation: Iterable[tuple[torch.Tensor, torch.Tensor]]
    max_accuracy_drop: float = 1.0
    method: str = "minmax"
    seed: int = 0
    source: str = ""
    validation_source: str = ""

    def calibration(self) -> dict[str, Any]:
        """The card's ``quantization.calibration``: the images, method and seed."""
        return {
            "images": len(self.images),
            "method": self.method,
            "seed": self.seed,
            "source": self.source,
            "class_balanced": True,
        }


# --------------------------------------------------------------------------------------- calibration set


def balanced_indices(targets: Iterable[int], n: int, seed: int) -> np.ndarray:
    """Sorted positions of ``n`` items, class-balanced: class counts differ by at most one (seeded).

    Each class's items are shuffled; the first of every class come before the second of any, and
    the last partial round goes to randomly chosen classes. A class with too few items gives all
    of them; fewer than ``n`` items in all gives every item.
    """
    targets_arr = np.asarray(list(targets), dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(targets_arr))
    rank = np.empty(len(targets_arr), dtype=np.int64)
    for c in np.unique(targets_arr):
        members = order[targets_arr[order] == c]
        rank[members] = np.arange(len(members))
    picked = np.lexsort((rng.permutation(len(targets_arr)), rank))[:n]  # by rank, ties at random
    return np.sort(picked)


def stack_images(dataset: Any, positions: np.ndarray) -> np.ndarray:
    """``dataset[i][0]`` for every position, stacked: ``(len(positions), 3, H, W)`` float32."""
    return np.stack([np.asarray(dataset[int(i)][0], dtype=np.float32) for i in positions])


# --------------------------------------------------------------------------------------- the check


def compare_top1(
    fp32_encoder: Any, int8_encoder: Any, head: Any, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, Any]:
    """Top-1 of the float32 and the int8 encoder, each followed by the same head, on labelled batches.

    Args:
        fp32_encoder / int8_encoder / head: ONNX Runtime sessions.
        loader: batches of ``(images (B, 3, H, W), labels (B,))``.

    Returns:
        ``images``, ``fp32_top1``, ``int8_top1`` (percent), ``drop`` (fp32 minus int8, points) and
        ``disagreements`` (images whose two predictions differ).
    """
    correct = {"fp32": 0, "int8": 0}
    differ = total = 0
    for images, labels in loader:
        x = images.float().numpy()  # (B, 3, H, W)
        predictions = {}
        for name, encoder in (("fp32", fp32_encoder), ("int8", int8_encoder)):
            embedding = encoder.run([EMBEDDING], {ENCODER_INPUT: x})[0]  # (B, D)
            predictions[name] = head.run([LOGITS], {EMBEDDING: embedding})[0].argmax(1)  # (B,)
            correct[name] += int((predictions[name] == labels.numpy()).sum())
        differ += int((predictions["fp32"] != predictions["int8"]).sum())
        total += len(labels)
    pct = 100.0 / max(total, 1)
    fp32_top1, int8_top1 = correct["fp32"] * pct, correct["int8"] * pct
    return {
        "images": total,
        "fp32_top1": fp32_top1,
        "int8_top1": int8_top1,
        "drop": round(fp32_top1 - int8_top1, 6),  # (no 0.20000000000000284 in the card)
        "disagreements": differ,
    }
