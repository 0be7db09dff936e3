"""clce_core.open_set: prototypes in label order, best cosine, strict rejection, the calibration rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clce_core.open_set import best_similarity, calibrate_threshold, class_prototypes, rejected


def test_class_prototypes_are_unit_means_in_index_order() -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((12, 5)) * rng.uniform(0.5, 3, (12, 1))  # un-normalised rows
    targets = np.array([2, 0, 1, 2, 2, 0, 1, 1, 0, 2, 1, 0])  # class 2 appears first
    protos = class_prototypes(emb, targets, 3)
    assert protos.shape == (3, 5) and protos.dtype == np.float32
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for c in range(3):  # a loop, in float64, against the vectorised version
        mean = unit[targets == c].mean(0)
        np.testing.assert_allclose(protos[c], mean / np.linalg.norm(mean), atol=1e-6)


def test_class_prototypes_name_the_classes_without_images() -> None:
    with pytest.raises(ValueError, match="classes 1, 3 have no image"):
        class_prototypes(np.ones((2, 4)), [0, 2], 4)
    with pytest.raises(ValueError, match="class indices in 0..1"):
        class_prototypes(np.ones((2, 4)), [0, 2], 2)


def test_best_similarity_is_the_max_cosine() -> None:
    rng = np.random.default_rng(1)
    emb, protos = rng.standard_normal((7, 6)), rng.standard_normal((4, 6))
    expected = [max(e @ p / np.linalg.norm(e) / np.linalg.norm(p) for p in protos) for e in emb]  # naive loop
    np.testing.assert_allclose(best_similarity(emb, protos), expected, atol=1e-12)


def test_rejection_is_strictly_below_the_threshold() -> None:
    s = np.array([0.2, 0.5, 0.7])
    assert rejected(s, 0.5).tolist() == [True, False, False]
    assert rejected(s, None).tolist() == [False, False, False]
    assert rejected(s, -1.0).tolist() == [False, False, False]
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        rejected(s, 1.5)


@pytest.mark.parametrize(
    ("n", "keep"), [(1, 0.95), (8, 0.95), (20, 0.95), (100, 0.95), (1000, 0.9), (37, 0.5)]
)
def test_calibration_keeps_at_least_keep_and_is_the_highest_such_threshold(n: int, keep: float) -> None:
    s = np.random.default_rng(n).uniform(-1, 1, n)  # no ties
    t = calibrate_threshold(s, keep)
    kept = int((~rejected(s, t)).sum())
    assert kept == math.ceil(round(keep * n, 9))  # exactly the promised share, no more
    above = s[s > t]
    if above.size:  # any higher threshold (the next similarity up) keeps fewer than promised
        assert int((~rejected(s, above.min())).sum()) < math.ceil(round(keep * n, 9))


def test_calibration_with_ties_keeps_them_all_and_rejects_what_it_can() -> None:
    s = np.array([0.1, 0.3, 0.3, 0.3, 0.9])
    assert calibrate_threshold(s, 0.8) == 0.3  # keeps 4 of 5
    assert calibrate_threshold(s, 1.0) == 0.1
    assert calibrate_threshold(s, 0.2) == 0.9


@pytest.mark.parametrize(
    ("values", "keep", "words"),
    [([], 0.95, "at least one validation image"), ([0.1, np.nan], 0.95, "finite"), ([0.1], 0.0, r"\(0, 1\]")],
)
def test_calibration_refusals(values: list[float], keep: float, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        calibrate_threshold(np.array(values), keep)
