"""Open-set math: training-class prototypes, best cosine to them, rejection, threshold calibration.

NUMPY ONLY (the serving image uses it without torch). Not from the paper: a plain nearest-prototype
confidence. An image's ``similarity`` is its best cosine to the C class prototypes (the mean
L2-normalised training embedding of each class, renormalised: :func:`clce_core.fewshot.prototypes`);
below a threshold the image is rejected as belonging to none of the classes. The threshold is
calibrated on in-distribution validation images (:func:`calibrate_threshold`): the highest value
that still keeps a chosen fraction of them. docs/export.md and docs/serving.md describe the use.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from clce_core.fewshot import cosine_scores, prototypes

#: The calibration's default: keep 95% of the in-distribution validation images.
DEFAULT_KEEP = 0.95


def class_prototypes(embeddings: npt.ArrayLike, targets: npt.ArrayLike, num_classes: int) -> np.ndarray:
    """One prototype per class index, in index order (the head's logit order).

    Args:
        embeddings: ``(N, D)`` embeddings, normalised or not.
        targets: ``(N,)`` class indices in ``0..num_classes-1``.
        num_classes: C; every class needs at least one embedding.

    Returns:
        ``(C, D)`` float32 unit rows; row ``c`` is class ``c``'s prototype.

    Raises:
        ValueError: a class without an embedding, or an index outside ``0..C-1``.
    """
    y = np.asarray(targets, dtype=np.int64)
    if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise ValueError(f"targets must be class indices in 0..{num_classes - 1}, one per embedding")
    missing = sorted(set(range(num_classes)) - set(y.tolist()))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise ValueError(f"classes {shown} have no image to make a prototype from")
    protos, classes = prototypes(embeddings, y)  # classes in first-appearance order
    order = np.argsort(np.asarray(classes, dtype=np.int64), kind="stable")
    return protos[order].astype(np.float32)  # (C, D)


def best_similarity(embeddings: npt.ArrayLike, protos: npt.ArrayLike) -> np.ndarray:
    """The best cosine of each embedding to any prototype.

    Args:
        embeddings: ``(N, D)``, normalised or not.
        protos: ``(C, D)`` prototypes.

    Returns:
        ``(N,)`` float64 in [-1, 1].
    """
    return cosine_scores(embeddings, protos).max(axis=1).astype(np.float64)  # (N,)


def rejected(similarity: npt.ArrayLike, threshold: float | None) -> np.ndarray:
    """Which images are rejected: best similarity strictly below ``threshold``.

    Args:
        similarity: ``(N,)`` best cosine per image.
        threshold: cosine in [-1, 1]; ``None`` rejects nothing.

    Returns:
        ``(N,)`` bool.
    """
    s = np.asarray(similarity, dtype=np.float64)
    if threshold is None:
        return np.zeros(s.shape, dtype=bool)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity and must lie in [-1, 1], got {threshold}")
    return s < threshold


def calibrate_threshold(similarity: npt.ArrayLike, keep: float = DEFAULT_KEEP) -> float:
    """The highest threshold that keeps at least ``keep`` of these (in-distribution) images.

    With the ``n`` similarities sorted ascending, ``s[(1)] <= ... <= s[(n)]``, the threshold is
    ``s[(r + 1)]`` with ``r = n - ceil(keep * n)`` images allowed below it: every image at or above it is
    kept (rejection is strictly below), so at least ``ceil(keep * n)`` of the ``n`` are kept, exactly
    that many when no two similarities tie.

    Args:
        similarity: ``(n,)`` best cosine of each calibration image (n >= 1).
        keep: the fraction to keep, in (0, 1].

    Returns:
        The threshold, a cosine in [-1, 1].

    Raises:
        ValueError: no similarities, a non-finite one, or ``keep`` outside (0, 1].
    """
    s = np.sort(np.asarray(similarity, dtype=np.float64).ravel())
    if s.size == 0:
        raise ValueError("calibrating a threshold needs at least one validation image, got 0")
    if not np.isfinite(s).all():
        raise ValueError("similarities must be finite to calibrate a threshold")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep is the fraction of validation images to keep, in (0, 1], got {keep}")
    allowed = s.size - math.ceil(keep * s.size - 1e-9)  # the tolerance: 0.95 * 100 is 95.00000000000001
    return float(np.clip(s[allowed], -1.0, 1.0))
