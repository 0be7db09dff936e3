"""Open-set prototypes and a calibrated threshold for an export, made with the exported encoder.

``python -m training.export`` runs the staged ``encoder.onnx`` (ONNX Runtime, so the numbers are the
server's) over the run's training split under the eval transform, stores one prototype per class
(``prototypes.npy``, :func:`clce_core.open_set.class_prototypes`), then calibrates a rejection
threshold on the run's validation split: the highest best-cosine that keeps ``keep`` (95%) of the
validation images (:func:`clce_core.open_set.calibrate_threshold`). What it rejects there, and of
the parity check's synthetic images (noise and patterns: out of distribution), goes into the card's
``open_set``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clce_core.export_folder import EMBEDDING, ENCODER_INPUT, LOGITS
from clce_core.open_set import (
    DEFAULT_KEEP,
    best_similarity,
    calibrate_threshold,
    class_prototypes,
    rejected,
)

if TYPE_CHECKING:
    from training.datasets import DatasetSplits

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class OpenSetData:
    """The labelled images the prototypes and the threshold come from (eval transform).

    Attributes:
        train: batches of the run's training split: the prototypes.
        val: batches of the run's validation split: the calibration.
        keep: the fraction of validation images the threshold keeps, in (0, 1].
    """

    train: Batches
    val: Batches
    keep: float = DEFAULT_KEEP


def open_set_data(
    data: DatasetSplits, config: dict[str, Any], keep: float = DEFAULT_KEEP, workers: int = 0
) -> OpenSetData:
    """Loaders over the run's own training and validation splits, as the run saw them.

    Args:
        data: the run's dataset with the eval transform on every split (training split already
            limited to the run's ``train_per_class``).
        config: the run's config; its ``val_per_class`` cap is applied as fine-tuning applied it.
        keep: see :class:`OpenSetData`.
        workers: data-loading workers.
    """
    from torch.utils.data import DataLoader

    from training.datasets import take_per_class

    val = data.val
    if config.get("val_per_class") is not None:  # the same seeded, class-balanced cap as fine-tuning
        val = val.subset(take_per_class(val.targets, config["val_per_class"], int(config.get("seed", 0))))
    return OpenSetData(
        train=DataLoader(data.train, batch_size=64, num_workers=workers),
        val=DataLoader(val, batch_size=64, num_workers=workers),
        keep=keep,
    )


def _embed(encoder: Any, head: Any, batches: Batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings ``(N, D)``, logits ``(N, C)`` and targets ``(N,)`` of labelled batches, in ONNX Runtime."""
    embeddings, logits, targets = [], [], []
    for images, labels in batches:
        emb = encoder.run([EMBEDDING], {ENCODER_INPUT: images.float().numpy()})[0]  # (B, D)
        embeddings.append(emb)
        logits.append(head.run([LOGITS], {EMBEDDING: emb})[0])  # (B, C)
        targets.append(labels.numpy())
    if not embeddings:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(embeddings), np.concatenate(logits), np.concatenate(targets).astype(np.int64)


def build_open_set(
    encoder: Any, head: Any, data: OpenSetData, num_classes: int, check_images: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """Prototypes from the training split, a threshold from the validation split, and what it rejects.

    Args:
        encoder / head: ONNX Runtime sessions of the staged export.
        data: the splits.
        num_classes: C; every class needs a training image.
        check_images: ``(M, 3, H, W)`` synthetic images (the parity check's): out of distribution.

    Returns:
        ``prototypes`` ``(C, D)`` float32 and the card's ``open_set``: ``threshold``, ``rule``,
        ``keep``, ``prototype_images``, ``calibration_images``, ``val_rejected`` (images below the
        threshold), ``val_misclassified`` and ``val_rejected_misclassified`` (by the head), and
        ``check_images`` / ``check_images_rejected``.

    Raises:
        ValueError: a class without a training image, or no validation image.
    """
    train_emb, _, train_y = _embed(encoder, head, data.train)
    protos = class_prototypes(train_emb, train_y, num_classes)  # (C, D)
    val_emb, val_logits, val_y = _embed(encoder, head, data.val)
    if len(val_y) == 0:
        raise ValueError("the validation split is empty, so no threshold can be calibrated")
    similarity = best_similarity(val_emb, protos)  # (V,)
    threshold = calibrate_threshold(similarity, data.keep)
    val_rejected = rejected(similarity, threshold)
    wrong = val_logits.argmax(1) != val_y
    synthetic = encoder.run([EMBEDDING], {ENCODER_INPUT: check_images.astype(np.float32)})[0]
    summary = {
        "threshold": threshold,
        "rule": f"the highest best-cosine to the prototypes that keeps {data.keep:.0%} of the validation images",
        "keep": data.keep,
        "prototype_split": "train",
        "prototype_images": len(train_y),
        "calibration_split": "val",
        "calibration_images": len(val_y),
        "val_rejected": int(val_rejected.sum()),
        "val_misclassified": int(wrong.sum()),
        "val_rejected_misclassified": int((val_rejected & wrong).sum()),
        "check_images": len(check_images),
        "check_images_rejected": int(rejected(best_similarity(synthetic, protos), threshold).sum()),
    }
    return protos, summary


def describe_open_set(summary: dict[str, Any]) -> str:
    """One line for the export's output: the threshold and what it rejects."""
    s = summary
    return (
        f"{s['prototype_images']} training images -> prototypes; threshold {s['threshold']:.4f} "
        f"keeps {s['keep']:.0%} of {s['calibration_images']} validation images: rejects {s['val_rejected']} "
        f"({s['val_rejected_misclassified']} of them misclassified by the head, which gets "
        f"{s['val_misclassified']} wrong in all) and {s['check_images_rejected']} of {s['check_images']} "
        "synthetic check images"
    )
