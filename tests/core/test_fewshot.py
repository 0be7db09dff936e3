"""Tests for clce_core.fewshot: prototypes, scoring, episodes (confidence intervals: test_stats.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from clce_core.fewshot import (
    EpisodeResult,
    classify,
    cosine_scores,
    encode_labels,
    evaluate_episodes,
    l2_normalize,
    prototypes,
    sample_episode,
)

REPO = Path(__file__).resolve().parents[2]


def _clusters(n_classes: int, per_class: int, dim: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centres = rng.normal(size=(n_classes, dim))
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def test_numpy_only_imports():
    code = (
        "import sys, clce_core.fewshot, clce_core.metrics, clce_core.stats, clce_core.preprocessing\n"
        "heavy = sorted(m for m in ('torch', 'sklearn', 'scipy', 'timm', 'torchvision', 'fastapi', "
        "'training', 'serving') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- normalisation, prototypes, scoring ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_l2_normalize_keeps_dtype_and_zero_rows(dtype):
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]], dtype=dtype)
    out = l2_normalize(x)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], rtol=1e-6)
    assert l2_normalize(np.array([[2, 0]])).dtype == np.float64


def test_encode_labels_first_appearance_and_plain_values():
    codes, classes = encode_labels(np.array([5, 2, 5, 7]))
    assert classes == [5, 2, 7] and all(type(c) is int for c in classes)
    np.testing.assert_array_equal(codes, [0, 1, 0, 2])
    codes, classes = encode_labels(["cat", 1, "cat", "1"])  # no coercion of 1 to "1"
    assert classes == ["cat", 1, "1"]
    np.testing.assert_array_equal(codes, [0, 1, 0, 2])


def test_prototypes_match_hand_computation():
    emb = np.array([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0], [-3.0, 0.0]])
    protos, classes = prototypes(emb, ["b", "b", "a", "c"])
    assert classes == ["b", "a", "c"]
    s = 1 / math.sqrt(2)
    # b: mean of (1, 0) and (0, 1) = (0.5, 0.5), renormalised; a: (1, 1)/√2; c: (-1, 0)
    np.testing.assert_allclose(protos, [[s, s], [s, s], [-1.0, 0.0]])


def test_prototypes_errors():
    with pytest.raises(ValueError, match="at least one support embedding, got 0"):
        prototypes(np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="got 3 support embeddings but 2 labels"):
        prototypes(np.ones((3, 4)), [0, 1])


def test_cosine_scores_direct():
    rng = np.random.default_rng(1)
    q, p = rng.normal(size=(4, 6)), 3 * rng.normal(size=(3, 6))
    expected = [[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in p] for a in q]
    np.testing.assert_allclose(cosine_scores(q, p), expected)
    with pytest.raises(ValueError, match="dimension 6 but prototypes have 5"):
        cosine_scores(q, p[:, :5])


def test_classify_nearest_and_threshold():
    support = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    queries = np.array([[1.0, 0.05], [0.1, 1.0], [1.0, 1.0]])
    pred, scores, classes = classify(queries, support, ["cat", "cat", "dog"])
    assert classes == ["cat", "dog"] and pred == ["cat", "dog", "cat"]  # cat's prototype leans to y
    assert scores.shape == (3, 2)
    pred, _, _ = classify(queries, support, ["cat", "cat", "dog"], threshold=0.9, unknown="unknown")
    assert pred[:2] == ["cat", "dog"] and pred[2] == "unknown"  # cos 45° = 0.71 < 0.9
    with pytest.raises(ValueError, match=r"\[-1, 1\], got 1.5"):
        classify(queries, support, ["cat", "cat", "dog"], threshold=1.5)


# --- episodes ----------------------------------------------------------------------------------------


def test_sample_episode_properties():
    labels = np.array([f"c{i}" for i in range(10) for _ in range(20 + i)])
    rng = np.random.default_rng(0)
    s_idx, s_y, q_idx, q_y = sample_episode(labels, n_way=5, k_shot=2, n_query=3, rng=rng)
    assert s_idx.shape == s_y.shape == (10,) and q_idx.shape == q_y.shape == (15,)
    assert len(set(s_idx) | set(q_idx)) == 25  # distinct images, support and query disjoint
    np.testing.assert_array_equal(s_y, np.repeat(np.arange(5), 2))
    np.testing.assert_array_equal(q_y, np.repeat(np.arange(5), 3))
    for j in range(5):  # one original class per episode class, the same in support and query
        assert len(set(labels[s_idx[s_y == j]]) | set(labels[q_idx[q_y == j]])) == 1
    assert len(set(labels[s_idx])) == 5


def test_sample_episode_deterministic_and_uniform():
    labels = np.repeat(np.arange(10), 6)
    a = sample_episode(labels, 5, 1, 5, np.random.default_rng(42))
    b = sample_episode(labels, 5, 1, 5, np.random.default_rng(42))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    rng = np.random.default_rng(0)
    counts = Counter()
    for _ in range(2000):
        s_idx, *_ = sample_episode(labels, 5, 1, 5, rng)
        counts.update(labels[s_idx].tolist())
    assert sorted(counts) == list(range(10))
    assert all(abs(n - 1000) < 120 for n in counts.values()), counts  # 5 of 10 classes per episode


def test_sample_episode_skips_short_classes():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3 + [3] * 10)
    rng = np.random.default_rng(0)
    for _ in range(50):
        s_idx, _, q_idx, _ = sample_episode(labels, 3, 1, 4, rng)
        assert 2 not in labels[np.concatenate([s_idx, q_idx])]


def test_sample_episode_error_names_the_numbers():
    labels = ["X"] * 4 + ["Y"] * 10 + ["Z"] * 6
    with pytest.raises(ValueError) as err:
        sample_episode(labels, n_way=3, k_shot=1, n_query=5, rng=np.random.default_rng(0))
    msg = str(err.value)
    assert "3-way" in msg and "at least 6 images" in msg and "1-shot + 5 queries" in msg
    assert "only 2 of 3 classes" in msg and "class 'X' has 4" in msg
    for kwargs, text in [
        ({"n_way": 1}, "n_way must be an integer of at least 2, got 1"),
        ({"k_shot": 0}, "k_shot must be an integer of at least 1, got 0"),
        ({"n_query": 0}, "n_query must be an integer of at least 1, got 0"),
    ]:
        args = {"n_way": 2, "k_shot": 1, "n_query": 1, **kwargs}
        with pytest.raises(ValueError, match=text):
            sample_episode(labels, rng=np.random.default_rng(0), **args)


def test_evaluate_separable_clusters_is_perfect():
    emb, labels = _clusters(8, 20, 16, spread=0.01)
    result = evaluate_episodes(emb, labels, n_way=5, k_shot=1, n_query=15, n_episodes=200)
    assert result.mean == 100.0 and result.ci95 == 0.0
    assert result.accuracies.shape == (200,)
    assert (result.n_way, result.k_shot, result.n_query, result.n_episodes) == (5, 1, 15, 200)


def test_evaluate_random_embeddings_is_chance():
    rng = np.random.default_rng(3)
    emb, labels = rng.normal(size=(400, 32)), np.repeat(np.arange(20), 20)
    for k_shot in (1, 5):
        result = evaluate_episodes(emb, labels, k_shot=k_shot, n_episodes=600, seed=1)
        assert abs(result.mean - 20.0) < 2.5, result
        assert 0.3 < result.ci95 < 2.0


def test_evaluate_deterministic_with_seed():
    emb, labels = _clusters(10, 20, 8, spread=1.5)
    a = evaluate_episodes(emb, labels, n_episodes=50, seed=7)
    b = evaluate_episodes(emb, labels, n_episodes=50, seed=7)
    np.testing.assert_array_equal(a.accuracies, b.accuracies)
    assert not np.array_equal(a.accuracies, evaluate_episodes(emb, labels, n_episodes=50, seed=8).accuracies)


def test_evaluate_callable_classifier_sees_the_sampled_episodes():
    labels = np.repeat(np.arange(6), 8)
    emb = np.eye(len(labels))  # row i identifies image i
    seen = []

    def one_nn(support, support_y, queries):
        seen.append((support.argmax(1), queries.argmax(1)))
        return support_y[(queries @ support.T).argmax(1)]

    evaluate_episodes(emb, labels, n_way=3, k_shot=2, n_query=3, n_episodes=5, seed=4, classifier=one_nn)
    rng = np.random.default_rng(4)
    for s_seen, q_seen in seen:
        s_idx, _, q_idx, _ = sample_episode(labels, 3, 2, 3, rng)
        np.testing.assert_array_equal(s_seen, s_idx)
        np.testing.assert_array_equal(q_seen, q_idx)


def test_evaluate_callable_classifier_accuracy_and_errors():
    emb, labels = _clusters(6, 10, 8, spread=0.01)

    def one_nn(support, support_y, queries):
        return support_y[(queries @ support.T).argmax(1)]

    assert evaluate_episodes(emb, labels, n_episodes=20, classifier=one_nn, n_query=5).mean == 100.0
    with pytest.raises(ValueError, match="returned 1 predictions for 25 queries"):
        evaluate_episodes(emb, labels, n_episodes=2, n_query=5, classifier=lambda s, y, q: [0])
    with pytest.raises(ValueError, match="unknown classifier 'svm'"):
        evaluate_episodes(emb, labels, n_episodes=2, classifier="svm")


def test_simpleshot_equals_a_naive_cl2n_nearest_centroid_loop():
    """SimpleShot (Wang et al. 2019): centre on the base mean, L2-normalise, nearest centroid (Euclidean)."""
    rng = np.random.default_rng(5)
    emb, labels = rng.normal(size=(160, 12)) + 3.0, np.repeat(np.arange(8), 20)
    base_mean = rng.normal(size=12) + 3.0

    def naive(support, support_y, queries):  # raw embeddings in (normalize=False)
        def cl2n(v):
            c = v - base_mean
            return c / np.linalg.norm(c, axis=1, keepdims=True)

        s, q = cl2n(support), cl2n(queries)
        classes = np.unique(support_y)
        centroids = np.stack([s[support_y == c].mean(axis=0) for c in classes])
        dist = ((q[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        return classes[dist.argmin(axis=1)]

    for k_shot in (1, 5):
        fast = evaluate_episodes(emb, labels, k_shot=k_shot, n_episodes=40, seed=2, classifier="simpleshot",
                                 base_mean=base_mean)  # fmt: skip
        slow = evaluate_episodes(emb, labels, k_shot=k_shot, n_episodes=40, seed=2, classifier=naive,
                                 normalize=False)  # fmt: skip
        np.testing.assert_array_equal(fast.accuracies, slow.accuracies)


def test_simpleshot_without_centring_is_the_prototype_classifier_at_one_shot():
    # CL2N with a zero mean is plain L2N, and with one support image per class the nearest unit
    # centroid by Euclidean distance is the nearest by cosine; a real mean changes the answers
    emb, labels = _clusters(10, 20, 8, spread=1.5)
    proto = evaluate_episodes(emb, labels, n_episodes=100, seed=3)
    zero = evaluate_episodes(emb, labels, n_episodes=100, seed=3, classifier="simpleshot", base_mean=np.zeros(8))
    np.testing.assert_array_equal(proto.accuracies, zero.accuracies)
    moved = evaluate_episodes(emb, labels, n_episodes=100, seed=3, classifier="simpleshot", base_mean=emb[0])
    assert not np.array_equal(proto.accuracies, moved.accuracies)
    with pytest.raises(ValueError, match="base_mean"):
        evaluate_episodes(emb, labels, n_episodes=2, classifier="simpleshot")
    with pytest.raises(ValueError, match="base_mean has shape"):
        evaluate_episodes(emb, labels, n_episodes=2, classifier="simpleshot", base_mean=np.zeros(3))


def test_episode_result_str_is_the_contract_line():
    result = EpisodeResult(85.6234, 0.5912, np.zeros(3000), 5, 1, 15, 3000)
    assert str(result) == "5-way 1-shot: 85.62 ± 0.59 (3000 episodes, 15 queries)"
    assert result.to_dict() == {
        "n_way": 5,
        "k_shot": 1,
        "n_query": 15,
        "n_episodes": 3000,
        "mean": 85.6234,
        "ci95": 0.5912,
    }
