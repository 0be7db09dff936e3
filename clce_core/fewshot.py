"""Few-shot math: prototypes, cosine scoring, episode sampling, accuracy over episodes.

NUMPY ONLY: the serving image imports this module without torch (a test pins it).

Conventions:
    * Embeddings are rows, ``(N, D)``; every function L2-normalises what it needs itself, so raw
      (un-normalised) encoder outputs are fine as input.
    * Labels may be any hashable values (ints, strings, ...). Where classes are listed, they come in
      order of first appearance in ``labels``, as plain Python values (``np.int64(3)`` becomes ``3``).
    * Accuracies are percentages, 0-100; their mean ± 95% confidence interval comes from
      :mod:`clce_core.stats`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from clce_core.stats import mean_confidence_interval

logger = logging.getLogger(__name__)

#: ``classifier(support_emb (S, D), support_y (S,) in 0..n_way-1, query_emb (Q, D)) -> query_y (Q,)``
EpisodeClassifier = Callable[[np.ndarray, np.ndarray, np.ndarray], npt.ArrayLike]


def l2_normalize(x: npt.ArrayLike, eps: float = 1e-12) -> np.ndarray:
    """Scale each row to unit L2 norm.

    Args:
        x: ``(..., D)`` vectors along the last axis, usually ``(N, D)``.
        eps: norms below ``eps`` are replaced by ``eps``, so a zero row stays zero (no NaN).

    Returns:
        ``(..., D)``; float32 and float64 are kept, anything else (ints, float16) becomes float64.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps).astype(x.dtype, copy=False)


def centre_and_normalize(x: npt.ArrayLike, base_mean: npt.ArrayLike) -> np.ndarray:
    """SimpleShot's CL2N features (Wang et al. 2019): subtract the base-class mean, then L2-normalise.

    Args:
        x: ``(N, D)`` raw embeddings.
        base_mean: ``(D,)`` mean raw embedding of the base (training) classes' images.

    Returns:
        ``(N, D)`` unit rows.
    """
    x = np.asarray(x)
    mean = np.asarray(base_mean, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
    if mean.shape != (x.shape[-1],):
        raise ValueError(f"base_mean has shape {mean.shape}; the embeddings need ({x.shape[-1]},)")
    return l2_normalize(x - mean)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def encode_labels(labels: Sequence[Hashable] | np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """Map labels to integer codes, classes in order of first appearance.

    Args:
        labels: ``(N,)`` hashable labels.

    Returns:
        ``codes`` ``(N,)`` int64 in ``0..C-1`` and the ``C`` classes, ``classes[codes[i]] == labels[i]``.
    """
    if isinstance(labels, np.ndarray) and labels.dtype != object:
        if labels.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
        uniq, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[order] = np.arange(len(uniq))
        return rank[inverse.reshape(-1)], [_plain(v) for v in uniq[order]]
    index: dict[Hashable, int] = {}
    codes = np.fromiter((index.setdefault(_plain(v), len(index)) for v in labels), dtype=np.int64)
    return codes, list(index)


def _check_embeddings(embeddings: npt.ArrayLike, n_labels: int | None, what: str) -> np.ndarray:
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a (N, D) array, got shape {x.shape}")
    if n_labels is not None and len(x) != n_labels:
        raise ValueError(f"got {len(x)} {what} but {n_labels} labels; they must match one to one")
    return x


def prototypes(
    embeddings: npt.ArrayLike, labels: Sequence[Hashable] | np.ndarray
) -> tuple[np.ndarray, list[Any]]:
    """Class prototypes: the mean of the L2-normalised support embeddings of each class.

    The mean is L2-normalised again, so the prototypes are unit vectors and ``queries @ protos.T`` on
    normalised queries is the cosine similarity. (Renormalising does not change nearest-prototype
    decisions under cosine scoring; it makes stored prototypes directly comparable.) A class whose
    normalised embeddings cancel out exactly gets a zero prototype, whose cosine with anything is 0.

    Args:
        embeddings: ``(N, D)`` support embeddings, normalised or not.
        labels: ``(N,)`` hashable labels.

    Returns:
        ``protos`` ``(C, D)`` unit rows and the ``C`` classes (first-appearance order), row ``c`` of
        ``protos`` belonging to ``classes[c]``.
    """
    x = _check_embeddings(embeddings, len(labels), "support embeddings")
    if len(x) == 0:
        raise ValueError("prototypes need at least one support embedding, got 0")
    codes, classes = encode_labels(labels)
    unit = l2_normalize(x)  # (N, D)
    sums = np.zeros((len(classes), x.shape[1]), dtype=unit.dtype)
    np.add.at(sums, codes, unit)  # (C, D); the count divides out in the renormalisation
    return l2_normalize(sums), classes


def cosine_scores(queries: npt.ArrayLike, protos: npt.ArrayLike) -> np.ndarray:
    """Cosine similarity of every query with every prototype.

    Args:
        queries: ``(Q, D)``.
        protos: ``(C, D)``, normalised or not.

    Returns:
        ``(Q, C)`` cosine similarities in [-1, 1].
    """
    q = _check_embeddings(queries, None, "queries")
    p = _check_embeddings(protos, None, "prototypes")
    if q.shape[1] != p.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but prototypes have {p.shape[1]}")
    return l2_normalize(q) @ l2_normalize(p).T


def classify(
    queries: npt.ArrayLike,
    support_embeddings: npt.ArrayLike,
    support_labels: Sequence[Hashable] | np.ndarray,
    threshold: float | None = None,
    unknown: Any = None,
) -> tuple[list[Any], np.ndarray, list[Any]]:
    """Nearest-prototype classification by cosine similarity, with an optional open-set threshold.

    Args:
        queries: ``(Q, D)`` query embeddings.
        support_embeddings: ``(N, D)`` support embeddings.
        support_labels: ``(N,)`` their labels.
        threshold: cosine similarity in [-1, 1]; a query whose best score is strictly below it is
            answered with ``unknown``. ``None``: always answer the nearest class.
        unknown: the marker for rejected queries (serving passes ``"unknown"``).

    Returns:
        ``(predictions, scores, classes)``: ``Q`` labels (or ``unknown``), ``(Q, C)`` cosine scores,
        and the ``C`` classes giving the column order of ``scores``.
    """
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity and must lie in [-1, 1], got {threshold}")
    protos, classes = prototypes(support_embeddings, support_labels)
    scores = cosine_scores(queries, protos)  # (Q, C)
    best = scores.argmax(axis=1)
    predictions = [classes[c] for c in best]
    if threshold is not None:
        rejected = scores[np.arange(len(best)), best] < threshold
        predictions = [unknown if r else p for p, r in zip(predictions, rejected, strict=True)]
    return predictions, scores, classes


# --------------------------------------------------------------------------------------------------
# Episodes


def _group(labels: Sequence[Hashable] | np.ndarray) -> tuple[list[Any], list[np.ndarray]]:
    codes, classes = encode_labels(labels)
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(classes)))[:-1]
    return classes, np.split(order, bounds)


def _eligible(
    classes: list[Any], members: list[np.ndarray], n_way: int, k_shot: int, n_query: int
) -> np.ndarray:
    for name, value, low in (("n_way", n_way, 2), ("k_shot", k_shot, 1), ("n_query", n_query, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer of at least {low}, got {value}")
    need = k_shot + n_query
    sizes = np.array([len(m) for m in members], dtype=np.int64)
    eligible = np.flatnonzero(sizes >= need)
    if len(eligible) < n_way:
        need_text = (
            f"{n_way}-way episodes need {n_way} classes with at least {need} images each "
            f"({k_shot}-shot + {n_query} queries)"
        )
        short = [c for c in range(len(classes)) if sizes[c] < need]
        if not short:
            raise ValueError(
                f"{need_text}, but there are only {len(classes)} classes; use at most {len(classes)} ways"
            )
        listed = ", ".join(f"class {classes[c]!r} has {sizes[c]}" for c in short[:10])
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        raise ValueError(
            f"{need_text}, but only {len(eligible)} of {len(classes)} classes have that many "
            f"(short: {listed}{more}); use fewer ways, shots or queries, or add images"
        )
    return eligible


def _draw(
    rng: np.random.Generator,
    members: list[np.ndarray],
    eligible: np.ndarray,
    n_way: int,
    k_shot: int,
    n_query: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    chosen = rng.choice(eligible, size=n_way, replace=False)
    need = k_shot + n_query
    picks = np.stack([members[c][rng.permutation(len(members[c]))[:need]] for c in chosen])  # (W, K+Q)
    return (
        picks[:, :k_shot].reshape(-1),
        np.repeat(np.arange(n_way), k_shot),
        picks[:, k_shot:].reshape(-1),
        np.repeat(np.arange(n_way), n_query),
    )


def sample_episode(
    labels: Sequence[Hashable] | np.ndarray,
    n_way: int,
    k_shot: int,
    n_query: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw one N-way K-shot episode.

    ``n_way`` classes are chosen uniformly among the classes that have at least ``k_shot + n_query``
    images (shorter classes are skipped); within each, ``k_shot + n_query`` distinct images are drawn,
    the first ``k_shot`` for the support set and the rest as queries. Both sets are laid out class by
    class: episode class ``j`` is rows ``j*k_shot ... (j+1)*k_shot - 1`` of the support set. Calling
    this repeatedly with one ``rng`` yields the same episodes as ``evaluate_episodes`` with that seed.

    Args:
        labels: ``(N,)`` labels of the pool.
        n_way: classes per episode, at least 2.
        k_shot: support images per class, at least 1.
        n_query: query images per class, at least 1.
        rng: the random generator, e.g. ``np.random.default_rng(0)``.

    Returns:
        ``support_idx`` ``(n_way*k_shot,)``, ``support_y`` ``(n_way*k_shot,)`` in ``0..n_way-1``,
        ``query_idx`` ``(n_way*n_query,)``, ``query_y`` ``(n_way*n_query,)``; indices into ``labels``.

    Raises:
        ValueError: bad counts, or fewer than ``n_way`` classes with enough images (named).
    """
    classes, members = _group(labels)
    eligible = _eligible(classes, members, n_way, k_shot, n_query)
    return _draw(rng, members, eligible, n_way, k_shot, n_query)


@dataclass(frozen=True, eq=False)
class EpisodeResult:
    """Accuracy over few-shot episodes; ``str()`` is the line the evaluation CLI prints.

    Attributes:
        mean: mean accuracy over episodes, percent.
        ci95: half-width of the 95% confidence interval, 1.96·σ/√n (see ``mean_confidence_interval``).
        accuracies: ``(n_episodes,)`` per-episode accuracy, percent.
    """

    mean: float
    ci95: float
    accuracies: np.ndarray
    n_way: int
    k_shot: int
    n_query: int
    n_episodes: int

    def __str__(self) -> str:
        return (
            f"{self.n_way}-way {self.k_shot}-shot: {self.mean:.2f} ± {self.ci95:.2f} "
            f"({self.n_episodes} episodes, {self.n_query} queries)"
        )

    def to_dict(self) -> dict[str, float | int]:
        """The summary numbers (no per-episode accuracies), ready for JSON."""
        return {
            "n_way": self.n_way,
            "k_shot": self.k_shot,
            "n_query": self.n_query,
            "n_episodes": self.n_episodes,
            "mean": self.mean,
            "ci95": self.ci95,
        }


def evaluate_episodes(
    embeddings: npt.ArrayLike,
    labels: Sequence[Hashable] | np.ndarray,
    n_way: int = 5,
    k_shot: int = 1,
    n_query: int = 15,
    n_episodes: int = 3000,
    seed: int = 0,
    classifier: str | EpisodeClassifier = "prototype",
    normalize: bool = True,
    base_mean: npt.ArrayLike | None = None,
) -> EpisodeResult:
    """Mean few-shot accuracy over random episodes, with its 95% confidence interval.

    Args:
        embeddings: ``(N, D)`` frozen embeddings of the pool (raw encoder outputs are fine).
        labels: ``(N,)`` labels.
        n_way, k_shot, n_query: episode shape (paper: 5-way, 1 or 5 shots, 15 queries).
        n_episodes: number of episodes (paper: 3000).
        seed: seeds ``np.random.default_rng``; same seed, same episodes.
        classifier: ``"prototype"`` (nearest prototype by cosine), ``"simpleshot"`` (SimpleShot, Wang et
            al. 2019: CL2N features — centred on ``base_mean``, then L2-normalised — and the nearest
            support centroid by Euclidean distance) or a callable
            ``classifier(support_emb (S, D), support_y (S,), query_emb (Q, D)) -> query_y (Q,)`` with
            labels in ``0..n_way-1`` (e.g. a logistic regression).
        normalize: L2-normalise the embeddings (once) before handing them to a callable classifier.
            The prototype classifier is cosine-based either way.
        base_mean: ``(D,)`` mean raw embedding of the base (training) classes; required by
            ``"simpleshot"``, ignored otherwise.

    Returns:
        An ``EpisodeResult``.
    """
    x = _check_embeddings(embeddings, len(labels), "embeddings")
    if int(n_episodes) != n_episodes or n_episodes < 1:
        raise ValueError(f"n_episodes must be a positive integer, got {n_episodes}")
    if not callable(classifier) and classifier not in ("prototype", "simpleshot"):
        raise ValueError(f"unknown classifier {classifier!r}; use 'prototype', 'simpleshot' or a callable")
    if classifier == "simpleshot" and base_mean is None:
        raise ValueError("the simpleshot classifier centres on the base-class mean: pass base_mean (D,)")
    classes, members = _group(labels)
    eligible = _eligible(classes, members, n_way, k_shot, n_query)
    if len(eligible) < len(classes):
        logger.warning(
            "%d of %d classes have fewer than %d images and are left out of the episodes",
            len(classes) - len(eligible),
            len(classes),
            k_shot + n_query,
        )
    unit = centre_and_normalize(x, base_mean) if classifier == "simpleshot" else l2_normalize(x)
    feats = unit if normalize or not callable(classifier) else x
    rng = np.random.default_rng(seed)
    accuracies = np.empty(n_episodes, dtype=np.float64)
    for e in range(n_episodes):
        s_idx, s_y, q_idx, q_y = _draw(rng, members, eligible, n_way, k_shot, n_query)
        if callable(classifier):
            pred = np.asarray(classifier(feats[s_idx], s_y, feats[q_idx])).reshape(-1)
            if pred.shape != q_y.shape:
                raise ValueError(f"classifier returned {pred.shape[0]} predictions for {len(q_y)} queries")
        elif classifier == "simpleshot":
            centroids = unit[s_idx].reshape(n_way, k_shot, -1).mean(axis=1)  # (W, D), not renormalised
            # argmin ||q - c||² = argmax 2·q·c - ||c||² (||q|| = 1 for every query alike)
            pred = (2.0 * unit[q_idx] @ centroids.T - (centroids**2).sum(axis=1)).argmax(axis=1)  # (W*Q,)
        else:
            protos = unit[s_idx].reshape(n_way, k_shot, -1).mean(axis=1)  # (W, D)
            if k_shot > 1:
                protos = l2_normalize(protos)
            pred = (unit[q_idx] @ protos.T).argmax(axis=1)  # (W*Q,)
        accuracies[e] = 100.0 * np.count_nonzero(pred == q_y) / len(q_y)
    mean, ci95 = mean_confidence_interval(accuracies)
    return EpisodeResult(mean, ci95, accuracies, n_way, k_shot, n_query, n_episodes)
