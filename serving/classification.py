"""Head classification with open-set rejection: the one place ``/classify`` and ``serving.predict`` decide.

Each image gets the head's top-k (softmax of the logits) and, when the export carries training-class
prototypes (``prototypes.npy``), its ``similarity``: the best cosine of its embedding to them
(:func:`clce_core.open_set.best_similarity`). With a threshold, an image whose similarity is strictly
below it is ``rejected`` and labelled :data:`UNKNOWN`; ``rejected`` is its own field, so a class
that is literally called ``unknown`` is never mistaken for a rejection. The threshold is a cosine in
[-1, 1], or :data:`CALIBRATED`: the one the exporter calibrated on the validation split and stored in
the card (``open_set.threshold``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from clce_core.export_folder import PROTOTYPES_FILE, ModelCard
from clce_core.metrics import softmax
from clce_core.open_set import best_similarity, rejected

#: The label of a rejected image (``/classify``, ``/fewshot``, ``serving.predict``).
UNKNOWN = "unknown"
#: The threshold value that means "the card's calibrated threshold".
CALIBRATED = "calibrated"

ThresholdChoice = float | Literal["calibrated"]


class OpenSetUnavailable(ValueError):
    """A threshold was asked for that this export cannot apply; ``str(e)`` says what to do."""


def parse_threshold(value: object) -> ThresholdChoice | None:
    """A threshold as given by a client: a cosine in [-1, 1], ``"calibrated"``, or None.

    Raises:
        ValueError: anything else (NaN and infinities included), with the accepted values.
    """
    if value is None or value == CALIBRATED:
        return value  # type: ignore[return-value]
    try:
        threshold = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        threshold = math.nan
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1] or {CALIBRATED!r}, got {value!r}")
    return threshold


def resolve_threshold(card: ModelCard, requested: ThresholdChoice | None) -> float | None:
    """The numeric threshold to apply with this export, or None for no rejection.

    Raises:
        OpenSetUnavailable: a threshold for an export without prototypes, or ``calibrated`` for one
            whose card holds no calibrated threshold.
    """
    if requested is None:
        return None
    if card.prototypes is None:
        raise OpenSetUnavailable(
            f"this model's export has no {PROTOTYPES_FILE}, so images cannot be rejected: leave the threshold "
            "out, or re-export the model with `python -m training.export` (without --no-open-set)"
        )
    if requested == CALIBRATED:
        if card.calibrated_threshold is None:
            raise OpenSetUnavailable(
                "this model's card holds no calibrated threshold (open_set.threshold): give a number in [-1, 1]"
            )
        return card.calibrated_threshold
    return float(requested)


@dataclass(frozen=True)
class Prediction:
    """What one image is.

    Attributes:
        label: The head's top-1 class, or :data:`UNKNOWN` when rejected.
        rejected: Whether the similarity is below the threshold.
        similarity: Best cosine to the training-class prototypes; None without prototypes.
        top_k: ``(label, probability)`` pairs, most probable first.
    """

    label: str
    rejected: bool
    similarity: float | None
    top_k: list[tuple[str, float]]


def predict(
    card: ModelCard, embedding: np.ndarray, logits: np.ndarray, top_k: int, threshold: float | None
) -> list[Prediction]:
    """Top-k classes, similarity and the open-set decision of each image.

    Args:
        card: The export (labels, prototypes).
        embedding: ``(N, D)`` encoder outputs, un-normalised.
        logits: ``(N, C)`` head outputs.
        top_k: Classes per image (at most C are returned).
        threshold: A cosine from :func:`resolve_threshold`, or None.

    Returns:
        N predictions, in order.
    """
    probs = softmax(logits)  # (N, C)
    order = np.argsort(-probs, axis=1, kind="stable")[:, : min(top_k, probs.shape[1])]  # (N, k)
    labels: Sequence[str] = card.labels
    if card.prototypes is None:
        similarity: list[float | None] = [None] * len(probs)
        rejects = np.zeros(len(probs), dtype=bool)
    else:
        best = best_similarity(embedding, card.prototypes)  # (N,)
        similarity, rejects = [float(s) for s in best], rejected(best, threshold)
    return [
        Prediction(
            label=UNKNOWN if rejects[i] else labels[order[i, 0]],
            rejected=bool(rejects[i]),
            similarity=similarity[i],
            top_k=[(labels[c], float(probs[i, c])) for c in order[i]],
        )
        for i in range(len(probs))
    ]
