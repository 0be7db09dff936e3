"""The quality benchmark's tables, paired differences, verdicts and plot (from its rows; no training).

A row is one run: ``suite`` (``glyphs`` / ``fmnist``), ``setting`` (``batch 64``, ``K=10``), ``loss``
(a registry name, or the floor: ``frozen`` / ``probe``), ``batches`` (``balanced`` / ``random`` / ``—``),
``seed`` and its metrics (glyphs: ``{classifier}_{1,5}shot``, ``base_top1``; Fashion-MNIST: ``top1``).
Across seeds: mean ± 95% Student-t half-width. Paired: the same statistic over per-seed differences of
two rows (a seed fixes data order and head initialisation for every loss); ``*`` marks an interval
that excludes 0.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from clce_core.stats import t_confidence_interval

Key = tuple[str, str, str, str]  # (suite, setting, loss, batches)
ORDER = ["frozen", "probe", "ce", "supcon", "hscl", "ce+supcon", "clce-nohnm", "clce"]
FLOORS = ("frozen", "probe")
NAMES = {
    "frozen": "frozen encoder",
    "probe": "frozen encoder + linear probe",
    "clce-nohnm": "clce-nohnm (CE + CL)",
}
METRICS = {"glyphs": ("prototype_1shot", "prototype_5shot"), "fmnist": ("top1",)}
LABELS = {
    "prototype_1shot": "1-shot",
    "prototype_5shot": "5-shot",
    "top1": "top-1",
    "base_top1": "base-class top-1",
}
# (label, a, b): a − b; "best:ce" is the better CE composition, "floor" the frozen row, "best" the best fine-tuned
COMPARISONS = [
    ("CLCE − best CE", "clce", "best:ce"),
    ("CE + CL (clce-nohnm) − best CE", "clce-nohnm", "best:ce"),
    ("hard negatives: CLCE − CE + CL", "clce", "clce-nohnm"),
    ("CE + SupCon − best CE", "ce+supcon", "best:ce"),
    ("CLCE − CE + SupCon", "clce", "ce+supcon"),
    ("CLCE − floor", "clce", "floor"),
    ("best fine-tuned − floor", "best", "floor"),
]
SWEEP_COMPARISONS = [
    ("CLCE − CE", "clce", "best:ce"),
    ("SupCon − CE", "supcon", "best:ce"),
    ("CLCE − SupCon", "clce", "supcon"),
]


def _values(rows: list[dict], key: Key, metric: str) -> dict[int, float]:
    """seed -> value of one group's metric."""
    return {r["seed"]: float(r[metric]) for r in rows if _key(r) == key and r.get(metric) is not None}


def _key(r: dict) -> Key:
    return (r["suite"], r["setting"], r["loss"], r.get("batches", "—"))


def _stat(values: list[float]) -> tuple[float, float]:
    return t_confidence_interval(values) if len(values) > 1 else (values[0], float("nan"))


def _cell(values: list[float], signed: bool = False, mark: bool = False) -> str:
    if not values:
        return "—"
    mean, half = _stat(values)
    text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    if not np.isfinite(half):
        return text
    star = " *" if mark and abs(mean) > half else ""
    return f"{text} ± {half:.2f}{star}"


def _order(key: Key) -> tuple:
    loss = key[2]
    return (ORDER.index(loss) if loss in ORDER else len(ORDER), loss, key[3] != "balanced")


def _name(key: Key) -> str:
    return NAMES.get(key[2], key[2])


def _settings(rows: list[dict], suite: str) -> list[str]:
    def number(s: str) -> float:
        digits = "".join(ch for ch in s if ch.isdigit() or ch == ".")
        return float(digits) if digits else 0.0

    return sorted({r["setting"] for r in rows if r["suite"] == suite and r["loss"] not in FLOORS}, key=number)


def _groups(rows: list[dict], suite: str, setting: str) -> list[Key]:
    """The groups of a setting, the floor (which has setting ``frozen`` for glyphs) first."""
    keys = {_key(r) for r in rows if r["suite"] == suite and (r["setting"] == setting or r["loss"] in FLOORS)}
    return sorted(keys, key=_order)


def resolve(rows: list[dict], groups: list[Key], which: str, metric: str) -> Key | None:
    """A comparison's side: a loss (balanced batches if it ran both), ``best:LOSS`` (its better
    composition by mean), ``floor`` or ``best`` (the fine-tuned group with the highest mean)."""

    def mean(k: Key) -> float:
        v = list(_values(rows, k, metric).values())
        return float(np.mean(v)) if v else -np.inf

    if which == "floor":
        found = [k for k in groups if k[2] in FLOORS]
    elif which == "best":
        found = sorted((k for k in groups if k[2] not in FLOORS), key=mean, reverse=True)[:1]
    elif which.startswith("best:"):
        found = sorted((k for k in groups if k[2] == which[5:]), key=mean, reverse=True)[:1]
    else:
        found = sorted((k for k in groups if k[2] == which), key=lambda k: k[3] != "balanced")[:1]
    return found[0] if found else None


def paired(rows: list[dict], a: Key, b: Key, metric: str) -> list[float]:
    """Per-seed differences a − b over the seeds both have."""
    va, vb = _values(rows, a, metric), _values(rows, b, metric)
    return [va[s] - vb[s] for s in sorted(set(va) & set(vb))]


def _describe(key: Key) -> str:
    return _name(key) + (f", {key[3]} batches" if key[3] not in ("—", "balanced") else "")


def comparison_rows(
    rows: list[dict], suite: str, setting: str, comparisons: list
) -> list[tuple[str, dict[str, list[float]], dict[str, str]]]:
    """(label, {metric: per-seed differences}, {metric: what the sides resolved to}) for each
    comparison that applies. A side such as ``best`` may resolve to another group for each metric."""
    groups = _groups(rows, suite, setting)
    out = []
    for label, a_sel, b_sel in comparisons:
        diffs, sides = {}, {}
        for metric in METRICS[suite]:
            a, b = resolve(rows, groups, a_sel, metric), resolve(rows, groups, b_sel, metric)
            if a is None or b is None or a == b:
                continue
            diffs[metric] = paired(rows, a, b, metric)
            sides[metric] = f"{_describe(a)} − {_describe(b)}"
        if diffs:
            out.append((label, diffs, sides))
    return out


def _sides_cell(sides: dict[str, str]) -> str:
    """One description when every metric compares the same groups, else one per metric."""
    if len(set(sides.values())) == 1:
        return next(iter(sides.values()))
    return "; ".join(f"{LABELS[m]}: {side}" for m, side in sides.items())


def verdict(rows: list[dict], suite: str, setting: str) -> str:
    """One sentence: which differences of the headline metric are significant, and which are not."""
    metric = METRICS[suite][0]
    parts = []
    for label, diffs, sides in comparison_rows(rows, suite, setting, COMPARISONS):
        d = diffs.get(metric)
        if not d:
            continue
        mean, half = _stat(d)
        if not np.isfinite(half):
            parts.append(f"{label} {mean:+.2f} (one seed: no interval)")
            continue
        sig = "significant" if abs(mean) > half else "not significant"
        parts.append(f"{label} {mean:+.2f} ± {half:.2f} ({sig}; {sides[metric]})")
    return f"{LABELS[metric]}: " + "; ".join(parts) + "." if parts else ""


def _suite_title(suite: str, setting: str, rows: list[dict]) -> str:
    seeds = len({r["seed"] for r in rows if r["suite"] == suite})
    if suite == "glyphs":
        return f"Glyph few-shot, {setting}: 5-way accuracy (%) on the 144 novel classes; mean ± 95% t-interval over {seeds} seeds"
    return (
        f"Fashion-MNIST, {setting} images per class: test top-1 (%); mean ± 95% t-interval over {seeds} seeds"
    )


def markdown(rows: list[dict], header: str) -> str:
    """The whole report: per suite and setting, every loss, the classifiers, the paired differences, a verdict."""
    lines = [header, ""]
    sweep = (
        any(r["suite"] == "glyphs" and r["loss"] not in FLOORS for r in rows)
        and len(_settings(rows, "glyphs")) > 1
    )
    for suite in ("glyphs", "fmnist"):
        for setting in _settings(rows, suite):
            groups = _groups(rows, suite, setting)
            metrics = [*METRICS[suite], *(["base_top1"] if suite == "glyphs" else [])]
            lines += [f"**{_suite_title(suite, setting, rows)}**", ""]
            lines += ["| loss | batches | " + " | ".join(LABELS[m] for m in metrics) + " |",
                      "|---|---|" + "---:|" * len(metrics)]  # fmt: skip
            for k in groups:
                cells = [_cell(list(_values(rows, k, m).values())) for m in metrics]
                lines.append(f"| {_name(k)} | {k[3]} | " + " | ".join(cells) + " |")
            lines.append("")
            lines += _classifier_table(rows, groups)
            comps = SWEEP_COMPARISONS if sweep and suite == "glyphs" else COMPARISONS
            found = comparison_rows(rows, suite, setting, comps)
            if found:
                lines += [
                    "Paired differences (points; mean ± 95% t-interval of the per-seed differences; * = the interval excludes 0)",
                    "",
                ]
                lines += ["| comparison | rows | " + " | ".join(LABELS[m] for m in METRICS[suite]) + " |",
                          "|---|---|" + "---:|" * len(METRICS[suite])]  # fmt: skip
                for label, diffs, sides in found:
                    cells = [_cell(diffs.get(m, []), signed=True, mark=True) for m in METRICS[suite]]
                    lines.append(f"| {label} | {_sides_cell(sides)} | " + " | ".join(cells) + " |")
                lines.append("")
            if not sweep or suite != "glyphs":
                v = verdict(rows, suite, setting)
                if v:
                    lines += [f"Verdict ({suite}, {setting}) — {v}", ""]
    return "\n".join(lines)


def _classifier_table(rows: list[dict], groups: list[Key]) -> list[str]:
    """Prototype vs SimpleShot vs logistic regression, for the groups that have all three."""
    names = ("prototype", "simpleshot", "logreg")
    have = [k for k in groups if all(_values(rows, k, f"{n}_1shot") for n in names)]
    if not have:
        return []
    lines = ["Few-shot classifiers on the same episodes (1-shot / 5-shot)", "",
             "| encoder | batches | nearest prototype | SimpleShot | logistic regression |", "|---|---|---:|---:|---:|"]  # fmt: skip
    for k in have:
        cells = [
            " / ".join(_cell(list(_values(rows, k, f"{n}_{s}shot").values())) for s in (1, 5)) for n in names
        ]
        lines.append(f"| {_name(k)} | {k[3]} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def plot(rows: list[dict], path: Path) -> None:
    """One panel per suite/setting and headline metric: bars (mean, 95% t whiskers), one colour per loss;
    one panel per suite of the paired differences of the headline metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, Callable]] = []
    for suite in ("glyphs", "fmnist"):
        for setting in _settings(rows, suite):
            groups = _groups(rows, suite, setting)
            for metric in METRICS[suite]:
                panels.append((f"{suite} {setting}: {LABELS[metric]}", _bars(rows, groups, metric)))
            comps = comparison_rows(rows, suite, setting, COMPARISONS)
            if comps:
                panels.append((f"{suite} {setting}: paired differences ({LABELS[METRICS[suite][0]]})",
                               _diffs(comps, METRICS[suite][0])))  # fmt: skip
    if not panels:
        return
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 4.2 * nrows), squeeze=False)
    for ax, (title, draw) in zip(axes.flat, panels, strict=False):
        draw(ax)
        ax.set_title(title, fontsize=9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _colour(loss: str) -> str:
    return f"C{ORDER.index(loss) if loss in ORDER else len(ORDER)}"


def _bars(rows: list[dict], groups: list[Key], metric: str) -> Callable:
    def draw(ax) -> None:
        stats = [(k, _stat(list(v.values()))) for k in groups if (v := _values(rows, k, metric))]
        xs = np.arange(len(stats))
        ax.bar(xs, [s[0] for _, s in stats], yerr=[s[1] if np.isfinite(s[1]) else 0 for _, s in stats],
               capsize=3, color=[_colour(k[2]) for k, _ in stats],
               hatch=[("//" if k[3] == "random" else "") for k, _ in stats])  # fmt: skip
        ax.set_xticks(xs, [{"frozen": "frozen", "probe": "probe"}.get(k[2], k[2])
                           + ("\n(random)" if k[3] == "random" else "") for k, _ in stats], fontsize=7, rotation=30)  # fmt: skip
        low = min(s[0] - (s[1] if np.isfinite(s[1]) else 0) for _, s in stats)
        ax.set_ylim(bottom=max(0.0, low - 5))

    return draw


def _diffs(comps: list, metric: str) -> Callable:
    def draw(ax) -> None:
        shown = [(label, _stat(d[metric])) for label, d, _ in comps if d.get(metric)]
        ys = np.arange(len(shown))[::-1]
        for y, (_, (mean, half)) in zip(ys, shown, strict=True):
            ax.errorbar(mean, y, xerr=half if np.isfinite(half) else 0, fmt="o",
                        color="C3" if np.isfinite(half) and abs(mean) > half else "grey", capsize=3)  # fmt: skip
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(ys, [label for label, _ in shown], fontsize=7)
        ax.set_xlabel("points (red: 95% interval excludes 0)", fontsize=8)

    return draw
