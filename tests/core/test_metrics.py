"""Tests for clce_core.metrics: softmax, top-k, confusion matrix, isotropy (Eq. 4), pair similarities."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import top_k_accuracy_score

from clce_core.metrics import (
    confusion_matrix,
    isotropy_score,
    pair_cosine_similarities,
    per_class_accuracy,
    softmax,
    topk_accuracy,
)

# --- softmax -----------------------------------------------------------------------------------------


def test_softmax_is_stable_and_leaves_its_input() -> None:
    logits = np.array([[1000.0, 1001.0, 999.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    probs = softmax(logits)
    e = np.exp([-1.0, 0.0, -2.0])
    np.testing.assert_allclose(probs[0], e / e.sum(), rtol=1e-12)
    np.testing.assert_allclose(probs[1], [1 / 3] * 3, rtol=1e-12)
    assert probs.dtype == np.float64 and logits[0, 0] == 1000.0  # a copy, in float64
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        softmax(np.zeros(3))


# --- top-k -------------------------------------------------------------------------------------------


def test_topk_hand_example():
    scores = np.array(
        [
            [0.1, 0.5, 0.2, 0.9],  # target 3: rank 0
            [0.8, 0.1, 0.05, 0.3],  # target 3: rank 1
            [0.2, 0.3, 0.4, 0.1],  # target 0: rank 2
            [0.7, 0.6, 0.1, 0.0],  # target 3: rank 3
        ]
    )
    targets = np.array([3, 3, 0, 3])
    assert topk_accuracy(scores, targets, ks=(1, 2, 3, 4)) == {1: 25.0, 2: 50.0, 3: 75.0, 4: 100.0}
    assert topk_accuracy(scores, targets, ks=(1, 5, 100)) == {1: 25.0, 5: 100.0, 100: 100.0}  # k > C
    assert topk_accuracy(scores, targets, ks=2) == {2: 50.0}


def test_topk_matches_sklearn_without_ties():
    rng = np.random.default_rng(0)
    scores, targets = rng.normal(size=(300, 10)), rng.integers(0, 10, 300)
    ours = topk_accuracy(scores, targets, ks=(1, 3, 5))
    for k in (1, 3, 5):
        ref = 100 * top_k_accuracy_score(targets, scores, k=k, labels=np.arange(10))
        assert ours[k] == pytest.approx(ref)


def test_topk_ties_count_against_the_target_and_errors():
    assert topk_accuracy(np.zeros((4, 3)), [0, 1, 2, 0], ks=(1, 2, 3)) == {1: 0.0, 2: 0.0, 3: 100.0}
    assert topk_accuracy(np.array([[np.nan, 1.0], [2.0, np.nan]]), [0, 0], ks=(1, 2)) == {1: 50.0, 2: 50.0}
    with pytest.raises(ValueError, match="class index 4, outside 0..3"):
        topk_accuracy(np.zeros((2, 4)), [0, 4])
    with pytest.raises(ValueError, match="got 2 score rows but 3 targets"):
        topk_accuracy(np.zeros((2, 4)), [0, 1, 2])
    with pytest.raises(ValueError, match="at least 1"):
        topk_accuracy(np.zeros((2, 4)), [0, 1], ks=(0,))


# --- confusion matrix, per-class accuracy ------------------------------------------------------------


def test_confusion_matrix_matches_sklearn():
    rng = np.random.default_rng(1)
    target, pred = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    ours = confusion_matrix(pred, target, 7)
    assert ours.dtype == np.int64 and ours.shape == (7, 7)
    np.testing.assert_array_equal(ours, sk_confusion_matrix(target, pred, labels=np.arange(7)))


def test_confusion_matrix_rows_are_true_classes_and_errors():
    cm = confusion_matrix(pred=[1, 1, 0], target=[0, 0, 0], num_classes=2)
    np.testing.assert_array_equal(cm, [[1, 2], [0, 0]])
    with pytest.raises(ValueError, match="pred holds class index 2, outside 0..1"):
        confusion_matrix([2], [0], 2)
    with pytest.raises(ValueError, match="got 2 predictions but 1 targets"):
        confusion_matrix([0, 1], [0], 2)


def test_per_class_accuracy():
    acc = per_class_accuracy(pred=[0, 1, 1, 2, 0], target=[0, 1, 2, 2, 2], num_classes=4)
    np.testing.assert_allclose(acc[:3], [100.0, 100.0, 100.0 / 3])
    assert math.isnan(acc[3])  # no images of class 3


# --- isotropy (Eq. 4) --------------------------------------------------------------------------------


def _isotropy_direct(v: np.ndarray, cands: np.ndarray) -> float:
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    z = [sum(math.exp(c @ x) for x in v) for c in np.concatenate([cands, -cands])]
    return min(z) / max(z)


@pytest.mark.parametrize("dim", [2, 3])
def test_isotropy_symmetric_basis_is_one(dim):
    eye = np.eye(dim)
    assert isotropy_score(np.concatenate([eye, -eye])) == pytest.approx(1.0)
    assert isotropy_score(np.concatenate([eye, -eye]) * 5.0) == pytest.approx(1.0)  # rows normalised


def test_isotropy_uniform_sphere_is_near_one():
    x = np.random.default_rng(0).normal(size=(20000, 3))
    assert 0.95 < isotropy_score(x) <= 1.0


def test_isotropy_one_direction_is_small():
    rng = np.random.default_rng(0)
    x = np.array([1.0, 0.0, 0.0, 0.0]) + 0.01 * rng.normal(size=(200, 4))
    score = isotropy_score(x)
    assert math.exp(-2) <= score < 0.15  # cᵀv ∈ [-1, 1] bounds IS below by e⁻²


def test_isotropy_matches_direct_formula_and_is_in_unit_interval():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 6)) + np.array([1.0, 0.5, 0, 0, 0, 0])
    v = x / np.linalg.norm(x, axis=1, keepdims=True)
    _, vecs = np.linalg.eigh(v.T @ v)
    score = isotropy_score(x)
    assert score == pytest.approx(_isotropy_direct(x, vecs.T), rel=1e-12)
    assert 0.0 < score <= 1.0


def test_isotropy_invariant_to_eigenvector_signs_rotation_and_negation():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 5)) + np.array([2.0, 0, 0, 0, 0])
    v = x / np.linalg.norm(x, axis=1, keepdims=True)
    _, vecs = np.linalg.eigh(v.T @ v)
    base = isotropy_score(x)
    for _ in range(5):
        signs = rng.choice([-1.0, 1.0], size=5)
        assert isotropy_score(x, directions=(vecs * signs).T) == pytest.approx(base, rel=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert isotropy_score(x @ q) == pytest.approx(base, rel=1e-9)
    assert isotropy_score(-x) == pytest.approx(base, rel=1e-9)


def test_isotropy_fewer_points_than_dimensions_and_errors():
    x = np.random.default_rng(4).normal(size=(3, 10))  # null-space eigenvectors give Z = N
    v = x / np.linalg.norm(x, axis=1, keepdims=True)
    _, vecs = np.linalg.eigh(v.T @ v)
    assert isotropy_score(x) == pytest.approx(_isotropy_direct(x, vecs.T), rel=1e-9)
    with pytest.raises(ValueError, match="non-empty"):
        isotropy_score(np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"\(K, 10\)"):
        isotropy_score(x, directions=np.ones((2, 3)))


# --- pair similarities (Fig. 3-4) ---------------------------------------------------------------------


def _brute_pairs(x, labels, classes=None):
    v = x / np.linalg.norm(x, axis=1, keepdims=True)
    wanted = set(labels) if classes is None else set(classes)
    pos, neg = [], []
    for i, j in itertools.combinations(range(len(labels)), 2):
        if labels[i] == labels[j] and labels[i] in wanted:
            pos.append(v[i] @ v[j])
        elif labels[i] != labels[j] and (labels[i] in wanted or labels[j] in wanted):
            neg.append(v[i] @ v[j])
    return np.sort(pos), np.sort(neg)


@pytest.mark.parametrize("classes", [None, ["tulips"], ["tulips", "cloud"]])
def test_pair_similarities_match_brute_force(classes):
    rng = np.random.default_rng(5)
    labels = list(rng.choice(["tulips", "cloud", "sea", "bee"], size=40))
    x = rng.normal(size=(40, 8))
    pos, neg = pair_cosine_similarities(x, labels, classes=classes, max_pairs=None)
    ref_pos, ref_neg = _brute_pairs(x, labels, classes)
    np.testing.assert_allclose(np.sort(pos), ref_pos)
    np.testing.assert_allclose(np.sort(neg), ref_neg)


def test_pair_similarities_subsample_deterministic_distinct_subset():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 5, size=120)
    x = rng.normal(size=(120, 8))
    ref_pos, ref_neg = _brute_pairs(x, list(labels))
    pos, neg = pair_cosine_similarities(x, labels, max_pairs=300, seed=1)
    assert len(pos) == len(neg) == 300
    assert np.isin(np.round(pos, 10), np.round(ref_pos, 10)).all()
    assert np.isin(np.round(neg, 10), np.round(ref_neg, 10)).all()
    assert len(np.unique(np.round(neg, 10))) == 300  # drawn without replacement
    again = pair_cosine_similarities(x, labels, max_pairs=300, seed=1)
    np.testing.assert_array_equal(pos, again[0])
    np.testing.assert_array_equal(neg, again[1])
    other = pair_cosine_similarities(x, labels, max_pairs=300, seed=2)
    assert not np.array_equal(neg, other[1])


def test_pair_similarities_separated_classes_and_errors():
    x = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    pos, neg = pair_cosine_similarities(x, [0, 0, 1, 1])
    assert pos.min() > 0.99 and neg.max() < 0.2 and len(pos) == 2 and len(neg) == 4
    with pytest.raises(ValueError, match=r"not found in labels: \['tulip'\]"):
        pair_cosine_similarities(x, ["a", "a", "b", "b"], classes=["tulip"])
