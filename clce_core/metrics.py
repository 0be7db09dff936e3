"""Classification and embedding-quality metrics: softmax, top-k, confusion matrix, isotropy (paper Eq. 4).

NUMPY ONLY: the serving image imports this module without torch (a test pins it). Accuracies are
percentages, 0-100.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import numpy.typing as npt

from clce_core.fewshot import encode_labels, l2_normalize


def _int_vector(x: npt.ArrayLike, name: str, num_classes: int | None = None) -> np.ndarray:
    v = np.asarray(x)
    if v.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {v.shape}")
    if v.size and not np.issubdtype(v.dtype, np.integer) and not np.all(np.mod(v, 1) == 0):
        raise ValueError(f"{name} must hold integer class indices, got dtype {v.dtype}")
    v = v.astype(np.int64)
    if num_classes is not None and v.size and (v.min() < 0 or v.max() >= num_classes):
        bad = v[(v < 0) | (v >= num_classes)][0]
        raise ValueError(f"{name} holds class index {bad}, outside 0..{num_classes - 1}")
    return v


def softmax(logits: npt.ArrayLike) -> np.ndarray:
    """Row-wise softmax of ``(N, C)`` logits in float64, the maximum subtracted before ``exp``.

    Returns:
        ``(N, C)`` float64 probabilities; every row sums to 1.
    """
    z = np.array(logits, dtype=np.float64)  # a copy: the caller's logits stay as they are
    if z.ndim != 2:
        raise ValueError(f"logits must be a (N, C) array, got shape {z.shape}")
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    return z / z.sum(axis=1, keepdims=True)


def topk_accuracy(
    logits_or_scores: npt.ArrayLike, targets: npt.ArrayLike, ks: Sequence[int] | int = (1, 5)
) -> dict[int, float]:
    """Top-k accuracy: the share of rows whose target is among the k highest scores.

    Exact ties count against the target (its rank is the number of other classes scoring at least as
    high), so a constant score matrix gets 0% top-1, not 100%. A NaN target score is never a hit.

    Args:
        logits_or_scores: ``(N, C)`` logits, probabilities or any scores (higher = more likely).
        targets: ``(N,)`` integer class indices in ``0..C-1``.
        ks: the k values; a k above ``C`` is clipped to ``C`` (then every row is a hit).

    Returns:
        ``{k: accuracy in percent}``, keyed by the requested k.
    """
    scores = np.asarray(logits_or_scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a (N, C) array, got shape {scores.shape}")
    n, c = scores.shape
    if n == 0 or c == 0:
        raise ValueError(f"top-k accuracy needs at least one row and one class, got shape {scores.shape}")
    t = _int_vector(targets, "targets", c)
    if len(t) != n:
        raise ValueError(f"got {n} score rows but {len(t)} targets")
    ks = (ks,) if isinstance(ks, int) else tuple(ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {ks}")
    target_score = scores[np.arange(n), t]  # (N,)
    rank = (scores >= target_score[:, None]).sum(axis=1) - 1  # (N,) other classes at least as high
    valid = ~np.isnan(target_score) if np.issubdtype(scores.dtype, np.floating) else np.ones(n, bool)
    return {k: 100.0 * float(np.count_nonzero((rank < min(k, c)) & valid)) / n for k in ks}


def confusion_matrix(pred: npt.ArrayLike, target: npt.ArrayLike, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Note the argument order, (pred, target), the reverse of sklearn's ``confusion_matrix(y_true,
    y_pred)``; the result is the same: rows are true classes.

    Args:
        pred: ``(N,)`` predicted class indices in ``0..num_classes-1``.
        target: ``(N,)`` true class indices.
        num_classes: ``C``.

    Returns:
        ``(C, C)`` int64; entry ``[i, j]`` counts images of class ``i`` predicted as ``j``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    p = _int_vector(pred, "pred", num_classes)
    t = _int_vector(target, "target", num_classes)
    if len(p) != len(t):
        raise ValueError(f"got {len(p)} predictions but {len(t)} targets")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(pred: npt.ArrayLike, target: npt.ArrayLike, num_classes: int) -> np.ndarray:
    """Accuracy (recall) of each true class, in percent.

    Args:
        pred: ``(N,)`` predicted class indices.
        target: ``(N,)`` true class indices.
        num_classes: ``C``.

    Returns:
        ``(C,)`` float64; NaN for a class with no images in ``target``.
    """
    cm = confusion_matrix(pred, target, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, 100.0 * np.diag(cm) / support, np.nan)


def _logsumexp_columns(a: np.ndarray) -> np.ndarray:
    """``log Σ_rows exp(a)`` per column, ``(N, K) -> (K,)``, shifted by the column max."""
    m = a.max(axis=0)
    return m + np.log(np.exp(a - m).sum(axis=0))


def isotropy_score(embeddings: npt.ArrayLike, directions: npt.ArrayLike | None = None) -> float:
    """Isotropy score of a set of embeddings (paper Eq. 4, as CONTRACTS.md fixes it).

    With ``V`` the L2-normalised rows (not centred) and ``Z(c) = Σ_v exp(cᵀv)``::

        IS(V) = min_c Z(c) / max_c Z(c)        c ∈ {±u : u an eigenvector of VᵀV}

    The candidates include each eigenvector's negative, so the score does not depend on the sign
    ``eigh`` happens to return. ``log Z`` is computed with a logsumexp in float64. Since ``cᵀv`` lies in
    [-1, 1] for unit vectors, ``IS`` lies in ``[e⁻², 1]``: 1 for a perfectly isotropic set, about
    ``e⁻² ≈ 0.135`` when all embeddings point one way. (The paper prints max/min but reports values
    ≤ 1; we use min/max.)

    Args:
        embeddings: ``(N, D)``, normalised or not; ``N >= 1``.
        directions: optional ``(K, D)`` candidate directions (normalised here) to use instead of the
            eigenvectors of ``VᵀV``; their negatives are added either way.

    Returns:
        ``IS`` in ``(0, 1]``.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"isotropy needs a non-empty (N, D) array of embeddings, got shape {x.shape}")
    v = l2_normalize(x)  # (N, D)
    if directions is None:
        _, vecs = np.linalg.eigh(v.T @ v)  # (D, D), columns are eigenvectors
        cands = vecs.T  # (D, D)
    else:
        cands = l2_normalize(np.asarray(directions, dtype=np.float64))
        if cands.ndim != 2 or cands.shape[1] != v.shape[1] or len(cands) == 0:
            raise ValueError(f"directions must be a non-empty (K, {v.shape[1]}) array, got {cands.shape}")
    proj = v @ cands.T  # (N, K)
    log_z = np.concatenate([_logsumexp_columns(proj), _logsumexp_columns(-proj)])  # (2K,)
    return float(np.exp(log_z.min() - log_z.max()))


# --------------------------------------------------------------------------------------------------
# Pair similarities (paper Fig. 3-4)


def _triangle_pairs(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat index ``t = b(b-1)/2 + a`` of the pairs ``a < b`` back to ``(a, b)``."""
    b = np.floor((1.0 + np.sqrt(1.0 + 8.0 * t)) / 2.0).astype(np.int64)
    b -= b * (b - 1) // 2 > t  # correct float rounding at the edges
    b += (b + 1) * b // 2 <= t
    return t - b * (b - 1) // 2, b


def _locate(flat: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block number of each flat index and its offset inside the block."""
    ends = np.cumsum(sizes)
    block = np.searchsorted(ends, flat, side="right")
    return block, flat - (ends[block] - sizes[block])


def _pick(total: int, max_pairs: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_pairs is None or total <= max_pairs:
        return np.arange(total, dtype=np.int64)
    return np.sort(rng.choice(total, size=max_pairs, replace=False)).astype(np.int64)


def _pair_cosines(v: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 8192) -> np.ndarray:
    out = np.empty(len(i), dtype=v.dtype)
    for s in range(0, len(i), chunk):
        out[s : s + chunk] = np.einsum("pd,pd->p", v[i[s : s + chunk]], v[j[s : s + chunk]])
    return out


def pair_cosine_similarities(
    embeddings: npt.ArrayLike,
    labels: Sequence[Hashable] | np.ndarray,
    classes: Sequence[Hashable] | None = None,
    max_pairs: int | None = 100_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of positive and negative pairs, for the paper's Fig. 3-4 histograms.

    Positive pairs: two different images of the same class (each unordered pair once), the class
    being one of ``classes`` if given. Negative pairs: two images of different classes, at least one of
    them in ``classes`` if given (paper: "tulips" and "cloud" against everything else). Where a kind has
    more than ``max_pairs`` pairs, a uniform random subset of ``max_pairs`` distinct pairs is drawn with
    ``seed`` (deterministic); the order of the output is that of the pairs, not random.

    Args:
        embeddings: ``(N, D)``, normalised or not.
        labels: ``(N,)`` hashable labels.
        classes: the classes of interest; ``None``: all.
        max_pairs: the most pairs per kind; ``None``: all pairs.
        seed: seeds the subsampling.

    Returns:
        ``(positive, negative)``: ``(P,)`` and ``(M,)`` cosine similarities, possibly empty.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(
            f"need (N, D) embeddings with one label each, got shape {x.shape} and {len(labels)} labels"
        )
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be at least 1 or None, got {max_pairs}")
    v = l2_normalize(x)
    codes, all_classes = encode_labels(labels)
    if classes is None:
        wanted = np.ones(len(all_classes), dtype=bool)
    else:
        missing = [c for c in classes if c not in all_classes]
        if missing:
            raise ValueError(f"classes not found in labels: {missing}")
        wanted = np.isin(np.arange(len(all_classes)), [all_classes.index(c) for c in classes])
    # Order the rows: the wanted classes block by block, then everything else.
    key = np.where(wanted[codes], codes, len(all_classes))
    order = np.argsort(key, kind="stable")  # (N,)
    sizes = np.bincount(key, minlength=len(all_classes) + 1)[:-1][wanted]  # (S,) wanted blocks
    starts = np.cumsum(sizes) - sizes
    rng = np.random.default_rng(seed)

    # Positives: the triangle of pairs inside each wanted block.
    tri = sizes * (sizes - 1) // 2
    block, t = _locate(_pick(int(tri.sum()), max_pairs, rng), tri)
    a, b = _triangle_pairs(t)
    positive = _pair_cosines(v, order[starts[block] + a], order[starts[block] + b])

    # Negatives: block c against every row after it (later blocks, then the unwanted rest).
    width = len(x) - (starts + sizes)
    rect = sizes * width
    block, t = _locate(_pick(int(rect.sum()), max_pairs, rng), rect)
    first = order[starts[block] + t // width[block]]
    second = order[starts[block] + sizes[block] + t % width[block]]
    negative = _pair_cosines(v, first, second)
    return positive, negative
