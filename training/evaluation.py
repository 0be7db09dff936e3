"""What an evaluation measures on one encoder, and how: few-shot episodes, isotropy, the head's accuracy.

:func:`evaluate_encoder` embeds every image of a class set once, then runs the few-shot settings in
numpy (nearest prototype by cosine, SimpleShot's centred nearest centroid, or logistic regression
per episode), the isotropy score (paper
Eq. 4) and, when the encoder's head knows the evaluated classes, top-1 / per-class accuracy and the
confusion matrix. It returns a :class:`ModelEvaluation`, which the CLI (:mod:`training.evaluate`)
prints and :mod:`training.report` draws; :func:`evaluation_to_dict` is its ``results.json`` form.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clce_core.fewshot import EpisodeClassifier, EpisodeResult, evaluate_episodes, sample_episode
from clce_core.metrics import confusion_matrix, isotropy_score, per_class_accuracy, topk_accuracy
from training.embed import ClassSet, Encoder, embed_and_classify, embed_images
from training.transforms import eval_transform

__all__ = [
    "OTHER",
    "Classification",
    "ModelEvaluation",
    "check_episodes",
    "classify_with_head",
    "evaluate_encoder",
    "evaluation_to_dict",
    "logreg_classifier",
    "mean_embedding",
    "run_fewshot",
]

CLASSIFIERS = ("prototype", "simpleshot", "logreg")

log = logging.getLogger("clce.evaluate")
OTHER = "(other)"  # confusion column: predicted a head class outside the evaluated set


@dataclass
class Classification:
    """The checkpoint head on the evaluated images (percentages). ``confusion`` rows: evaluated classes;
    columns: ``columns`` = the evaluated classes, plus ``(other)`` when the head has more classes."""

    top1: float
    top5: float
    per_class: np.ndarray  # (C,), NaN for a class without images
    confusion: np.ndarray  # (C, C) or (C, C+1)
    columns: list[str]


@dataclass
class ModelEvaluation:
    """Everything measured on one encoder; what results.json and the report show."""

    name: str
    source: str
    embeddings: np.ndarray  # (N, D) un-normalised
    labels: np.ndarray  # (N,) positions in the class list
    fewshot: list[EpisodeResult]
    isotropy: float
    classification: Classification | None = None
    info: dict[str, Any] = field(default_factory=dict)


def classify_with_head(
    logits: np.ndarray, labels: np.ndarray, classes: list[str], head_classes: list[str]
) -> Classification | None:
    """Top-1/top-5, per-class accuracy and confusion of the head, or None when some evaluated class is
    not one of the head's (then the head cannot be right). Head classes are matched by name, any order.

    Args:
        logits: ``(N, H)`` head outputs; labels: ``(N,)`` positions in ``classes``.
    """
    index = {c: i for i, c in enumerate(head_classes)}
    if not classes or any(c not in index for c in classes):
        return None
    cols = [index[c] for c in classes]
    rest = sorted(set(range(len(head_classes))) - set(cols))
    z = logits[:, cols + rest]  # (N, H): evaluated classes first, in their order
    acc = topk_accuracy(z, labels, ks=(1, 5))
    c = len(classes)
    n_cols = c + (1 if rest else 0)
    pred = np.minimum(z.argmax(axis=1), c)  # any other head class -> column C
    cm = confusion_matrix(pred, labels, n_cols)[:c]
    per_class = per_class_accuracy(pred, labels, n_cols)[:c]
    return Classification(acc[1], acc[5], per_class, cm, list(classes) + ([OTHER] if rest else []))


def logreg_classifier(c: float = 1.0, max_iter: int = 1000) -> EpisodeClassifier:
    """Logistic regression fitted on each episode's support set (scikit-learn), for ``evaluate_episodes``."""
    from sklearn.linear_model import LogisticRegression

    def classify(support: np.ndarray, support_y: np.ndarray, queries: np.ndarray) -> np.ndarray:
        return LogisticRegression(C=c, max_iter=max_iter).fit(support, support_y).predict(queries)

    return classify


def check_episodes(
    labels: np.ndarray, classes: list[str], settings: list[tuple[int, int]], queries: int
) -> None:
    """Fail before embedding when a setting cannot be drawn (clce_core's message names the classes;
    the flags that set it lead)."""
    named = np.asarray(classes, dtype=object)[labels]
    for ways, shots in settings:
        try:
            sample_episode(named, ways, shots, queries, np.random.default_rng(0))
        except ValueError as e:
            raise ValueError(f"--ways {ways} --shots {shots} --queries {queries}: {e}") from None


def run_fewshot(
    embeddings: np.ndarray,
    labels: np.ndarray,
    settings: list[tuple[int, int]],
    queries: int,
    episodes: int,
    seed: int,
    classifier: str = "prototype",
    base_mean: np.ndarray | None = None,
) -> list[EpisodeResult]:
    """One :class:`EpisodeResult` per ``(ways, shots)`` setting, same seed for each.

    Args:
        classifier: one of :data:`CLASSIFIERS`; ``simpleshot`` needs ``base_mean`` ``(D,)``.
    """
    fn = logreg_classifier() if classifier == "logreg" else classifier
    return [
        evaluate_episodes(embeddings, labels, w, k, queries, episodes, seed, classifier=fn, base_mean=base_mean)
        for w, k in settings
    ]


def mean_embedding(
    encoder: Encoder, class_set: ClassSet, device: torch.device | str = "cpu", batch_size: int = 128
) -> np.ndarray:
    """The mean raw embedding ``(D,)`` of a class set's images: SimpleShot's base-class centre."""
    tf = eval_transform(encoder.data_config)
    emb = embed_images(encoder.model, class_set.dataset, device, batch_size, transform=tf, show_progress=False)
    return emb.mean(axis=0)


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def evaluation_to_dict(ev: ModelEvaluation, classes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": ev.name, "source": ev.source, **ev.info}
    out["embedding_dim"] = int(ev.embeddings.shape[1])
    out["isotropy"] = ev.isotropy
    out["fewshot"] = [{**r.to_dict(), "ci95": _nan_to_none(r.ci95), "line": str(r)} for r in ev.fewshot]
    cls = ev.classification
    out["classification"] = None
    if cls is not None:
        out["classification"] = {
            "top1": cls.top1,
            "top5": cls.top5,
            "per_class": {c: _nan_to_none(a) for c, a in zip(classes, cls.per_class, strict=True)},
            "confusion_columns": cls.columns,
            "confusion_matrix": cls.confusion.tolist(),
        }
    return out


def evaluate_encoder(
    encoder: Encoder,
    class_set: ClassSet,
    settings: list[tuple[int, int]],
    *,
    name: str | None = None,
    queries: int = 15,
    episodes: int = 3000,
    seed: int = 0,
    classifier: str = "prototype",
    base_mean: np.ndarray | None = None,
    batch_size: int = 128,
    workers: int = 0,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
) -> ModelEvaluation:
    """Embed every image of ``class_set`` once, run the few-shot ``settings`` ``[(ways, shots), ...]``,
    the isotropy score and, when the encoder's head knows the classes, top-1 / per-class accuracy."""
    name = name or encoder.source
    start = time.perf_counter()
    tf = eval_transform(encoder.data_config)
    emb, logits = embed_and_classify(
        encoder.model, class_set.dataset, device, batch_size, transform=tf, workers=workers,
        show_progress=show_progress, desc=f"embed {name}",
    )  # fmt: skip
    embed_s = time.perf_counter() - start
    labels = class_set.targets
    start = time.perf_counter()
    results = run_fewshot(emb, labels, settings, queries, episodes, seed, classifier, base_mean)
    episodes_s = time.perf_counter() - start
    log.info("%s: embedded %d images in %.1f s; episodes in %.2f s", name, len(emb), embed_s, episodes_s)
    cls = None
    if encoder.classes is not None:
        cls = classify_with_head(logits, labels, class_set.classes, encoder.classes)
        if cls is None:
            n = len(encoder.classes)
            log.info("%s: no top-1: the checkpoint's %d classes do not include the evaluated ones", name, n)
    info = {
        "checkpoint": encoder.checkpoint,
        "model": encoder.model.model_name,
        "weights": "checkpoint" if encoder.checkpoint else encoder.model.weights,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in encoder.data_config.items()},
        "timings_s": {"embed": round(embed_s, 3), "episodes": round(episodes_s, 3)},
    }
    return ModelEvaluation(name, encoder.source, emb, labels, results, isotropy_score(emb), cls, info)
