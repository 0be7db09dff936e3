"""Embedding-quality report: pair-similarity histograms (paper Fig. 3-4), t-SNE (Fig. 5), confusion
heatmaps, and ``report.md`` showing them with the numbers (few-shot, top-1, isotropy, Eq. 4).

One model or several side by side: one figure per kind with a panel per model, on the same bins, axes
and points, so CE and CLCE compare at a glance. Figures use matplotlib's object API (``Figure``, no
pyplot), so no global backend is touched and no display is needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from clce_core.fewshot import l2_normalize
from clce_core.metrics import pair_cosine_similarities

if TYPE_CHECKING:
    from training.evaluation import ModelEvaluation

__all__ = [
    "confusion_figure",
    "pick_report_classes",
    "similarity_figure",
    "similarity_stats",
    "tsne_figure",
    "tsne_map",
    "tsne_subsample",
    "write_report",
]

PANEL_W, PANEL_H = 5.5, 4.0
EXACT_TSNE_POINTS = 500


def pick_report_classes(classes: Sequence[str], wanted: Sequence[str] | None, seed: int) -> list[str]:
    """``wanted`` if given, else two classes drawn with ``seed`` (in class-list order)."""
    if wanted:
        return list(wanted)
    picked = np.random.default_rng(seed).choice(len(classes), size=min(2, len(classes)), replace=False)
    return [classes[i] for i in sorted(picked)]


def similarity_stats(pos: np.ndarray, neg: np.ndarray) -> dict[str, float | int | None]:
    """Mean and standard deviation of positive and negative pair cosines, and the gap of the means."""

    def stat(x: np.ndarray, f: Any) -> float | None:
        return float(f(x)) if len(x) else None

    out = {"positive_pairs": len(pos), "negative_pairs": len(neg)}
    out |= {"positive_mean": stat(pos, np.mean), "positive_std": stat(pos, np.std)}
    out |= {"negative_mean": stat(neg, np.mean), "negative_std": stat(neg, np.std)}
    both = out["positive_mean"] is not None and out["negative_mean"] is not None
    out["gap"] = out["positive_mean"] - out["negative_mean"] if both else None  # type: ignore[operator]
    return out


def _panels(n: int, **kwargs: Any) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(PANEL_W * n, PANEL_H), layout="constrained")
    return fig, list(fig.subplots(1, n, squeeze=False, **kwargs)[0])


def similarity_figure(path: Path, panels: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str) -> None:
    """Histograms of positive vs negative pair cosines, one panel per model, shared bins and axes."""
    values = [a for _, pos, neg in panels for a in (pos, neg) if len(a)]
    lo = min((float(a.min()) for a in values), default=-1.0)
    hi = max((float(a.max()) for a in values), default=1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 61)
    fig, axes = _panels(len(panels), sharex=True, sharey=True)
    for ax, (name, pos, neg) in zip(axes, panels, strict=True):
        ax.hist(neg, bins, density=True, alpha=0.55, color="tab:red", label=f"negative ({len(neg)} pairs)")
        ax.hist(pos, bins, density=True, alpha=0.55, color="tab:green", label=f"positive ({len(pos)} pairs)")
        ax.set_title(name)
        ax.set_xlabel("cosine similarity")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("density")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def tsne_subsample(labels: np.ndarray, max_points: int, max_classes: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_points`` images of at most ``max_classes`` classes (seeded)."""
    rng = np.random.default_rng(seed)
    present = np.unique(labels)
    if len(present) > max_classes:
        present = np.sort(rng.choice(present, size=max_classes, replace=False))
    idx = np.flatnonzero(np.isin(labels, present))
    if len(idx) > max_points:
        idx = np.sort(rng.choice(idx, size=max_points, replace=False))
    return idx


def tsne_map(embeddings: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE of L2-normalised embeddings ``(n, D) -> (n, 2)`` (PCA to 50 dimensions first)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = l2_normalize(np.asarray(embeddings, dtype=np.float64))
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    method = "exact" if len(x) <= EXACT_TSNE_POINTS else "barnes_hut"  # exact: faster on few points
    return TSNE(2, perplexity=perplexity, init="pca", method=method, random_state=seed).fit_transform(x)


def tsne_figure(
    path: Path, panels: Sequence[tuple[str, np.ndarray]], labels: np.ndarray, classes: Sequence[str]
) -> None:
    """Scatter of t-SNE maps coloured by class (≤ 20 classes), one panel per model, same points."""
    from matplotlib import colormaps

    shown = np.unique(labels)
    cmap = colormaps["tab10" if len(shown) <= 10 else "tab20"]
    fig, axes = _panels(len(panels))
    for ax, (name, xy) in zip(axes, panels, strict=True):
        for j, c in enumerate(shown):
            m = labels == c
            ax.scatter(xy[m, 0], xy[m, 1], s=8, color=cmap(j % 20), label=classes[c], alpha=0.8)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(fontsize=6, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"t-SNE of {len(labels)} images, {len(shown)} classes")
    fig.savefig(path, dpi=110)


def confusion_figure(
    path: Path, panels: Sequence[tuple[str, np.ndarray, list[str]]], rows: list[str]
) -> None:
    """Row-normalised confusion heatmaps (percent of each true class), one panel per model."""
    fig, axes = _panels(len(panels))
    image = None
    for ax, (name, cm, columns) in zip(axes, panels, strict=True):
        totals = np.maximum(cm.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(100.0 * cm / totals, cmap="Blues", vmin=0, vmax=100, interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if len(columns) <= 40:
            ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=6)
            ax.set_yticks(range(len(rows)), rows, fontsize=6)
    if image is not None:
        fig.colorbar(image, ax=axes, label="% of the true class", shrink=0.8)
    fig.savefig(path, dpi=110)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or x != x else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _fewshot_section(evaluations: Sequence[ModelEvaluation]) -> list[str]:
    names = [ev.name for ev in evaluations]
    first = evaluations[0].fewshot
    rows = []
    for i, r in enumerate(first):
        cells = [f"{ev.fewshot[i].mean:.2f} ± {_fmt(ev.fewshot[i].ci95, 2)}" for ev in evaluations]
        rows.append([f"{r.n_way}-way {r.k_shot}-shot", *cells])
    note = f"Mean accuracy (%) ± 95% CI over {first[0].n_episodes} episodes, {first[0].n_query} queries per class."
    isotropy = [[ev.name, f"{ev.isotropy:.4f}"] for ev in evaluations]
    return [
        *["## Few-shot accuracy", "", *_table(["setting", *names], rows), "", note, ""],
        *["## Isotropy (Eq. 4)", "", *_table(["model", "IS (1 = isotropic)"], isotropy), ""],
    ]


def _classification_section(
    out: Path, evaluations: Sequence[ModelEvaluation], classes: Sequence[str]
) -> list[str]:
    heads = [(ev.name, ev.classification) for ev in evaluations if ev.classification is not None]
    if not heads:
        return []
    top = [[name, f"{c.top1:.2f}", f"{c.top5:.2f}"] for name, c in heads]
    per = [[cls, *[_fmt(c.per_class[i], 2) for _, c in heads]] for i, cls in enumerate(classes)]
    confusion_figure(
        out / "confusion.png", [(name, c.confusion, c.columns) for name, c in heads], list(classes)
    )
    return [
        *["## Classification by the head", "", *_table(["model", "top-1", "top-5"], top), ""],
        *["<details><summary>Per-class accuracy (%)</summary>", ""],
        *[*_table(["class", *[name for name, _ in heads]], per), "", "</details>", ""],
        *["![confusion matrices](confusion.png)", ""],
    ]


def _similarity_section(
    out: Path, evaluations: Sequence[ModelEvaluation], classes: Sequence[str], chosen: list[str], seed: int
) -> tuple[list[str], list[dict[str, Any]]]:
    rows, sims = [], [{} for _ in evaluations]
    for key, subset, title in (
        ("classes", chosen, f"classes {', '.join(chosen)} against all"),
        ("all", None, "all classes"),
    ):
        panels = []
        for k, ev in enumerate(evaluations):
            named = np.asarray(classes, dtype=object)[ev.labels]
            pos, neg = pair_cosine_similarities(ev.embeddings, named, subset, seed=seed)
            panels.append((ev.name, pos, neg))
            sims[k][key] = s = similarity_stats(pos, neg)
            positive = f"{_fmt(s['positive_mean'])} ± {_fmt(s['positive_std'])}"
            negative = f"{_fmt(s['negative_mean'])} ± {_fmt(s['negative_std'])}"
            rows.append([title, ev.name, positive, negative, _fmt(s["gap"])])
        similarity_figure(out / f"similarity_{key}.png", panels, f"Pair cosine similarity: {title}")
    header = ["pairs", "model", "positive mean ± sd", "negative mean ± sd", "gap"]
    md = ["## Cosine similarity of positive and negative pairs (Fig. 3-4)", "", *_table(header, rows), ""]
    md += [
        f"![pairs of {', '.join(chosen)}](similarity_classes.png)",
        "",
        "![all pairs](similarity_all.png)",
        "",
    ]
    return md, sims


def write_report(
    out_dir: str | Path,
    evaluations: Sequence[ModelEvaluation],
    classes: Sequence[str],
    description: str,
    report_classes: Sequence[str] | None = None,
    seed: int = 0,
    tsne_points: int = 2000,
    tsne_classes: int = 20,
    results: dict[str, Any] | None = None,
) -> Path:
    """Figures, ``report.md`` and ``results.json`` for one or more evaluated encoders.

    Writes ``similarity_classes.png`` (pairs of ``report_classes``, default two seeded random classes,
    against everything), ``similarity_all.png`` (all classes), ``tsne.png`` and, when any model has a
    head for these classes, ``confusion.png``. ``tsne_points=0`` skips the t-SNE map. ``results`` (the CLI's JSON) gains each model's pair
    statistics under ``models[i]["similarity"]`` and is written as ``results.json``.

    Returns:
        The path of ``report.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = evaluations[0].labels
    chosen = pick_report_classes(classes, report_classes, seed)
    md = [f"# Embedding report: {' vs '.join(ev.name for ev in evaluations)}", ""]
    md += [f"Class set: {description} ({len(classes)} classes, {len(labels)} images).", ""]
    md += [f"- **{ev.name}**: `{ev.source}`" for ev in evaluations] + [""]
    md += _fewshot_section(evaluations)
    md += _classification_section(out, evaluations, classes)
    similarity_md, sims = _similarity_section(out, evaluations, classes, chosen, seed)
    md += similarity_md
    idx = tsne_subsample(labels, tsne_points, tsne_classes, seed) if tsne_points > 0 else labels[:0]
    if len(idx) >= 5:
        maps = [(ev.name, tsne_map(ev.embeddings[idx], seed)) for ev in evaluations]
        tsne_figure(out / "tsne.png", maps, labels[idx], classes)
        shown = f"{len(idx)} images of {len(np.unique(labels[idx]))} classes (seed {seed})."
        md += ["## t-SNE (Fig. 5)", "", shown, "", "![t-SNE](tsne.png)", ""]
    if results is not None:
        for model, sim in zip(results.get("models", []), sims, strict=False):
            model["similarity"] = {"report_classes": chosen, **sim}
        (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text("\n".join(md) + "\n")
    return out / "report.md"
