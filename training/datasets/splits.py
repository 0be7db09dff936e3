"""Seeded per-class split decisions, shared by every dataset family.

Where a dataset has no validation split, :func:`carve_val` holds out a fraction of each training
class; ``train_per_class=K`` then keeps K images per class of what is left (:func:`take_per_class`;
the K-subsets are nested: K=5 ⊂ K=10 for one seed), so the validation split does not depend on K.
Each decision draws from its own seeded stream, ``[seed, SALT_*]``, so changing one (say K) leaves
the others (the validation split) as they were.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from training.datasets.images import LabeledImages

__all__ = [
    "SALT_K",
    "SALT_TEST",
    "SALT_VAL",
    "carve_val",
    "carve_val_and_test",
    "split_per_class",
    "take_per_class",
]

log = logging.getLogger(__name__)

# Salts make independent seeded streams: the validation split does not change with K, etc.
SALT_VAL, SALT_K, SALT_TEST = 0, 1, 2


def split_per_class(
    targets: Sequence[int], fraction: float, seed: int | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``round(fraction * n)`` items of each class, seeded.

    A class with n >= 2 items holds out at least one and keeps at least one; a single item is kept.

    Args:
        targets: ``(N,)`` integer labels.
        fraction: share of each class to hold out.
        seed: seeds the permutation of each class (a list: a salted stream, e.g. ``[seed, SALT_TEST]``).

    Returns:
        ``(kept, held)``: sorted positions into ``targets``.
    """
    rng = np.random.default_rng(seed)
    targets_arr = np.asarray(targets, dtype=np.int64)
    kept, held = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c in np.unique(targets_arr):
        pos = rng.permutation(np.flatnonzero(targets_arr == c))
        k = min(max(round(fraction * len(pos)), 1), len(pos) - 1)
        held.append(pos[:k])
        kept.append(pos[k:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def take_per_class(targets: Sequence[int], k: int, seed: int | Sequence[int]) -> np.ndarray:
    """Sorted positions of ``k`` seeded items per class (all of a class with fewer; nested in k).

    Args:
        targets: ``(N,)`` integer labels.
        k: items to keep per class.
        seed: seeds the permutation of each class.

    Returns:
        ``(≤ k·C,)`` sorted positions into ``targets``.
    """
    rng = np.random.default_rng(seed)
    targets_arr = np.asarray(targets, dtype=np.int64)
    chosen = [np.zeros(0, np.int64)]
    short = 0
    for c in np.unique(targets_arr):
        pos = rng.permutation(np.flatnonzero(targets_arr == c))
        short += len(pos) < k
        chosen.append(pos[:k])
    if short:
        log.warning("%d classes have fewer than %d training images; all of theirs are kept", short, k)
    return np.sort(np.concatenate(chosen))


def carve_val(train: LabeledImages, fraction: float, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """Split a training set into ``(train, val)``: ``fraction`` of each class to val, seeded.

    The stream is ``[seed, SALT_VAL]``, so the validation split depends on the seed alone.
    """
    kept, held = split_per_class(train.targets, fraction, [seed, SALT_VAL])
    return train.subset(kept), train.subset(held)


def carve_val_and_test(
    images: LabeledImages, fraction: float, seed: int
) -> tuple[LabeledImages, LabeledImages, LabeledImages]:
    """Split one labelled set per class: ``fraction`` to test (``[seed, SALT_TEST]``), then ``fraction`` of
    the rest to val (:func:`carve_val`); returns ``(train, val, test)``."""
    rest, test_pos = split_per_class(images.targets, fraction, [seed, SALT_TEST])
    train, val = carve_val(images.subset(rest), fraction, seed)
    return train, val, images.subset(test_pos)
