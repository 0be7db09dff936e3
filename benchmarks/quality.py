"""The paper's comparison, offline and reproducible: CE vs CE+SupCon vs CLCE without / with hard negatives.

    python -m benchmarks.quality                      # --quick (default): ≤ 30 min on 2 CPU cores
    python -m benchmarks.quality --full               # larger recipe, full test split, 3000 episodes
    python -m benchmarks.quality --suite glyphs --batch-sweep 64 128 256 --losses ce supcon clce --batches balanced

Suites (the same recipe for every loss, seeds 0, 1, 2 by default):

* ``fmnist`` — low-data transfer: fine-tune the packaged ImageNet EfficientNet-Lite0 on K = 5 and 20
  Fashion-MNIST images per class; top-1 on the official 10k test split (``--quick`` evaluates a fixed,
  seeded, class-balanced 1,000-image subset of it and says so).
* ``glyphs`` — few-shot on classes never trained on: fine-tune on ``glyphs64/base`` (128 classes), then
  5-way 1-shot and 5-shot nearest-prototype episodes (15 queries) on ``glyphs64/novel`` (144 classes);
  the frozen pretrained encoder is the floor. The glyph set is read from ``$CLCE_GLYPHS_DIR``
  (default ``~/.cache/clce/data/glyphs64``).

Batch composition (``--batches``): **balanced** batches hold B/m classes × m images (m = 4, CONTRACTS'
``--per-class``), **random** batches are plain shuffling. On the glyph suite every loss runs with
balanced batches and CE and CLCE also with random ones (``--random-losses``), because the issue's
prototype found that the composition decides which of the two wins there. Fashion-MNIST runs the
first ``--batches`` composition only (balanced by default): with 10 classes a random batch already
holds several images of most classes, and the quick run must fit 30 minutes. Its batches are
min(64, 10K/3) images.

Across seeds: mean ± 95% CI with Student's t (t = 4.30 at 3 seeds). Writes ``quality.md`` (the table),
``quality.json`` (every run) and PNG plots to ``--output-dir``; the README quotes the table whichever
way the numbers fall.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import RESULTS, fail, glyphs_dir, machine_line
from clce_core.fewshot import evaluate_episodes
from clce_core.stats import t_confidence_interval
from training.config import RunConfig
from training.embed import embed_images, load_class_set, load_encoder
from training.finetune import Run
from training.transforms import eval_transform

LOSSES = ["ce", "ce+supcon", "clce-nohnm", "clce"]
DISPLAY_ORDER = ["frozen", "ce", "supcon", "hscl", "ce+supcon", "clce-nohnm", "clce"]  # rows, bars


@dataclass
class Recipe:
    """The shared fine-tuning recipe; ``--quick`` and ``--full`` differ only here."""

    img_size: int = 48
    batch_size: int = 64  # glyphs; Fashion-MNIST uses min(batch_size, K·10 / 3) so an epoch has ≥ 3 steps
    per_class: int = 4
    lr: float = 3e-4
    head_lr: float = 3e-3
    lam: float = 0.9
    tau: float = 0.5
    fmnist_steps: int = 30  # optimizer steps for each K (epochs = steps / batches per epoch)
    fmnist_test_per_class: int | None = 100  # None: the whole 10k test split
    glyph_epochs: int = 2
    episodes: int = 1000
    workers: int = 0  # tiny images: decoding in the main process beats a worker on 2 cores
    extra: dict[str, Any] = field(default_factory=dict)


QUICK = Recipe()
FULL = Recipe(img_size=64, fmnist_steps=60, fmnist_test_per_class=None, glyph_epochs=4, episodes=3000)


def finetune(cfg: RunConfig) -> tuple[Run, dict[str, float], float]:
    """One in-process fine-tuning run; returns the run, its final test metrics and seconds taken."""
    start = time.perf_counter()
    run = Run(cfg.resolved(), show_progress=False)
    final = run.fit()
    return run, final, time.perf_counter() - start


def plan(losses: list[str], batches: list[str], random_losses: list[str]) -> list[tuple[str, str]]:
    """(composition, loss) pairs to run: every loss with each composition, ``random`` only for ``random_losses``."""
    return [
        (composition, loss)
        for composition in batches
        for loss in losses
        if composition == "balanced" or loss in random_losses
    ]


def per_class(recipe: Recipe, composition: str) -> int:
    """``--per-class`` for a composition: m images per class, or 0 for uniformly shuffled batches."""
    return recipe.per_class if composition == "balanced" else 0


def run_config(
    recipe: Recipe, composition: str, loss: str, seed: int, batch_size: int, epochs: int, **suite: Any
) -> RunConfig:
    """One run of the shared recipe; ``suite`` holds what a suite sets itself (data, warm-up, output)."""
    return RunConfig(
        img_size=recipe.img_size,
        batch_size=batch_size,
        per_class=per_class(recipe, composition),
        epochs=epochs,
        lr=recipe.lr,
        head_lr=recipe.head_lr,
        lam=recipe.lam,
        tau=recipe.tau,
        loss=loss,
        seed=seed,
        workers=recipe.workers,
        **suite,
        **recipe.extra,
    )


def fmnist_runs(
    recipe: Recipe, runs: list[tuple[str, str]], seeds: list[int], ks: list[int], work: Path
) -> list[dict]:
    rows = []
    for k in ks:
        batch_size = min(recipe.batch_size, (10 * k) // 3) // recipe.per_class * recipe.per_class
        batches_per_epoch = (10 * k) // batch_size
        epochs = max(1, round(recipe.fmnist_steps / batches_per_epoch))
        for seed in seeds:
            for composition, loss in runs:
                cfg = run_config(
                    recipe, composition, loss, seed, batch_size, epochs,
                    dataset="fashion-mnist",
                    train_per_class=k,
                    val_per_class=5,
                    test_per_class=recipe.fmnist_test_per_class,
                    warmup_epochs=0.1 * epochs,
                    output=str(work / f"fmnist-k{k}-{composition}-{loss}-s{seed}"),
                )  # fmt: skip
                _, final, seconds = finetune(cfg)
                rows.append(
                    {"suite": "fmnist", "setting": f"K={k} {composition}", "loss": loss, "seed": seed,
                     "top1": final["test_top1"], "seconds": seconds, "epochs": epochs, "batch_size": batch_size}
                )  # fmt: skip
                log(rows[-1])
    return rows


def glyph_runs(
    recipe: Recipe,
    runs: list[tuple[str, str]],
    seeds: list[int],
    work: Path,
    batch_sizes: list[int] | None = None,
    floor: bool = True,
) -> list[dict]:
    novel = load_class_set(data_dir=glyphs_dir() / "novel")
    rows = []
    if floor:  # the frozen floor: no fine-tuning, embedded once, each seed's episodes
        enc = load_encoder(
            model_name="tf_efficientnet_lite0", pretrained="packaged", img_size=recipe.img_size
        )
        frozen = embed_images(
            enc.model, novel.dataset, transform=eval_transform(enc.data_config), show_progress=False
        )
    for seed in seeds if floor else []:
        rows.append({"suite": "glyphs", "setting": "frozen", "loss": "frozen", "seed": seed, "batch_size": 0,
                     **few_shot(frozen, novel.targets, recipe.episodes, seed), "seconds": 0.0})  # fmt: skip
        log(rows[-1])
    for batch_size in batch_sizes or [recipe.batch_size]:
        for seed in seeds:
            for composition, loss in runs:
                cfg = run_config(
                    recipe, composition, loss, seed, batch_size, recipe.glyph_epochs,
                    dataset="imagefolder",
                    data_dir=str(glyphs_dir() / "base"),
                    hflip=0.0,  # mirroring changes a character
                    warmup_epochs=0.25,
                    output=str(work / f"glyphs-b{batch_size}-{composition}-{loss}-s{seed}"),
                )  # fmt: skip
                run, final, seconds = finetune(cfg)  # run.eval_model holds best.pt's weights after fit
                emb = embed_images(
                    run.eval_model,
                    novel.dataset,
                    transform=eval_transform(run.data_config),
                    show_progress=False,
                )
                rows.append({"suite": "glyphs", "setting": f"batch {batch_size} {composition}", "loss": loss, "seed": seed,
                             "batch_size": batch_size, "base_top1": final.get("test_top1"),
                             **few_shot(emb, novel.targets, recipe.episodes, seed), "seconds": seconds})  # fmt: skip
                log(rows[-1])
    return rows


def few_shot(embeddings: np.ndarray, labels: np.ndarray, episodes: int, seed: int) -> dict[str, float]:
    out = {}
    for shots in (1, 5):
        res = evaluate_episodes(
            embeddings, labels, n_way=5, k_shot=shots, n_query=15, n_episodes=episodes, seed=seed
        )
        out[f"{shots}shot"] = res.mean
        out[f"{shots}shot_ci"] = res.ci95
    return out


def log(row: dict) -> None:
    shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
    print(json.dumps(shown), file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ tables


def aggregate(rows: list[dict], metric: str) -> dict[tuple[str, str, str], tuple[float, float, int]]:
    """(suite, setting, loss) -> (mean, 95% t half-width, number of seeds)."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        if metric in r and r[metric] is not None:
            groups.setdefault((r["suite"], r["setting"], r["loss"]), []).append(float(r[metric]))
    out = {}
    for key, values in groups.items():
        mean, half = t_confidence_interval(values) if len(values) > 1 else (values[0], float("nan"))
        out[key] = (mean, half, len(values))
    return out


def _cell(stat: tuple[float, float, int] | None) -> str:
    if stat is None:
        return "—"
    mean, half, _ = stat
    return f"{mean:.2f} ± {half:.2f}" if np.isfinite(half) else f"{mean:.2f}"


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, ""]
    fm = aggregate([r for r in rows if r["suite"] == "fmnist"], "top1")
    if fm:
        settings = sorted({k[1] for k in fm}, key=_setting_order)
        lines += ["**Fashion-MNIST low-data transfer**, test top-1 (%)", ""]
        lines += ["| loss | " + " | ".join(settings) + " |", "|---|" + "---:|" * len(settings)]
        for loss in sorted({k[2] for k in fm}, key=_loss_order):
            lines.append(
                f"| {loss} | " + " | ".join(_cell(fm.get(("fmnist", s, loss))) for s in settings) + " |"
            )
        lines.append("")
    gl = [r for r in rows if r["suite"] == "glyphs"]
    if gl:
        one, five, base = aggregate(gl, "1shot"), aggregate(gl, "5shot"), aggregate(gl, "base_top1")
        lines += ["**Glyph few-shot** on 144 novel classes, 5-way accuracy (%), 15 queries", ""]
        lines += ["| setting | loss | 1-shot | 5-shot | base-class test top-1 |", "|---|---|---:|---:|---:|"]
        for key in sorted(one, key=lambda k: (_setting_order(k[1]), _loss_order(k[2]))):
            lines.append(
                f"| {key[1]} | {key[2]} | {_cell(one[key])} | {_cell(five.get(key))} | {_cell(base.get(key))} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Bars with 95% CI whiskers, one panel per suite."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    fm = aggregate([r for r in rows if r["suite"] == "fmnist"], "top1")
    if fm:
        panels.append(("Fashion-MNIST test top-1 (%)", fm))
    gl = [r for r in rows if r["suite"] == "glyphs"]
    for shots in ("1shot", "5shot"):
        if gl:
            panels.append((f"Glyphs novel 5-way {shots[0]}-shot (%)", aggregate(gl, shots)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, stats) in zip(axes[0], panels, strict=True):
        settings = sorted({k[1] for k in stats}, key=_setting_order)
        losses = sorted({k[2] for k in stats}, key=_loss_order)
        width = 0.8 / len(losses)
        for j, loss in enumerate(losses):
            points = [
                (i, stats[(k_suite(stats), s, loss)])
                for i, s in enumerate(settings)
                if (k_suite(stats), s, loss) in stats
            ]
            ax.bar(
                [i + j * width for i, _ in points],
                [stat[0] for _, stat in points],
                width,
                yerr=[stat[1] if np.isfinite(stat[1]) else 0.0 for _, stat in points],
                capsize=3,
                color=f"C{_loss_order(loss)[0]}",  # one colour per loss in every panel
                label=loss,
            )
        ax.set_xticks(
            [i + 0.4 - width / 2 for i in range(len(settings))],
            [s.replace(" balanced", "\nbalanced").replace(" random", "\nrandom") for s in settings],
        )
        ax.set_title(title)
        ax.set_ylim(bottom=max(0, min(v[0] for v in stats.values()) - 10))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _loss_order(loss: str) -> tuple[int, str]:
    """The frozen floor, the baselines, then CLCE; unknown names last, alphabetically."""
    return (DISPLAY_ORDER.index(loss) if loss in DISPLAY_ORDER else len(DISPLAY_ORDER), loss)


def _setting_order(setting: str) -> tuple[int, float, str]:
    """frozen first, then K=5 < K=20 and batch 64 < batch 128 by their number, balanced before random."""
    if setting == "frozen":
        return (0, 0.0, "")
    words = setting.replace("=", " ").split()
    return (1, float(words[1]), words[2] if len(words) > 2 else "")


def k_suite(stats: dict) -> str:
    """The suite name shared by the keys of one panel."""
    return next(iter(stats))[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=["all", "fmnist", "glyphs"], default="all")
    parser.add_argument(
        "--full", action="store_true", help="the larger recipe (hours on a CPU); default --quick"
    )
    parser.add_argument("--losses", nargs="+", default=LOSSES, help="registry names to compare")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--ks", nargs="+", type=int, default=[5, 20], help="Fashion-MNIST images per class")
    parser.add_argument(
        "--batch-sweep", nargs="+", type=int, help="glyph batch sizes (images), e.g. 64 128 256"
    )
    parser.add_argument(
        "--batches",
        nargs="+",
        choices=["balanced", "random"],
        default=["balanced", "random"],
        help="batch compositions: balanced = B/m classes × m images (m = per_class), random = plain "
        "shuffling; every loss runs with each (default: both)",
    )
    parser.add_argument(
        "--random-losses",
        nargs="+",
        default=["ce", "clce"],
        help="the losses that also run with random batches (default: ce clce, the pair whose order "
        "batch composition flipped in the issue's prototype; 'all' for every --losses entry)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field or a RunConfig option",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS / "quality")
    parser.add_argument("--replot", action="store_true", help="redraw OUTPUT_DIR's plot from its JSON")
    parser.add_argument(
        "--keep-runs", action="store_true", help="keep the run folders (checkpoints) in OUTPUT_DIR/runs"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    name = "quality" if not args.batch_sweep else "quality_batch_sweep"
    if args.replot:
        saved = json.loads((args.output_dir / f"{name}.json").read_text())
        plot(saved["runs"], args.output_dir / f"{name}.png")
        print(f"redrew {args.output_dir}/{name}.png")
        return
    recipe = FULL if args.full else QUICK
    for item in args.set:
        key, value = item.split("=", 1)
        if hasattr(recipe, key):
            setattr(recipe, key, type(getattr(recipe, key) or 0)(value) if value != "None" else None)
        else:
            recipe.extra[key] = yaml_value(value)
    if args.suite in ("all", "glyphs"):
        try:
            glyphs_dir()
        except FileNotFoundError as e:
            fail(f"{e}; or run with --suite fmnist")

    start = time.perf_counter()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.output_dir / "runs" if args.keep_runs else Path(tmp)
        runs = plan(
            args.losses, args.batches, args.losses if args.random_losses == ["all"] else args.random_losses
        )
        rows: list[dict] = []
        if args.suite in ("all", "fmnist"):  # the first composition only: see the module docstring
            rows += fmnist_runs(
                recipe, [r for r in runs if r[0] == args.batches[0]], args.seeds, args.ks, work
            )
        if args.suite in ("all", "glyphs"):
            rows += glyph_runs(recipe, runs, args.seeds, work, args.batch_sweep)
    minutes = (time.perf_counter() - start) / 60
    mode = "full" if args.full else "quick"
    header = (
        f"Machine: {machine_line()}. Mode: {mode} ({recipe_line(recipe)}); seeds {args.seeds}; "
        f"mean ± 95% CI (Student's t) over seeds; took {minutes:.1f} min."
    )
    table = markdown(rows, header)
    (args.output_dir / f"{name}.md").write_text(table + "\n")
    (args.output_dir / f"{name}.json").write_text(
        json.dumps(
            {
                "machine": machine_line(),
                "mode": mode,
                "recipe": recipe.__dict__,
                "minutes": minutes,
                "runs": rows,
            },
            indent=1,
        )
    )
    plot(rows, args.output_dir / f"{name}.png")
    print(table)
    print(f"wrote {args.output_dir}/{name}.md, .json, .png")


def recipe_line(r: Recipe) -> str:
    test = (
        "full 10k test"
        if r.fmnist_test_per_class is None
        else f"{10 * r.fmnist_test_per_class}-image test subset"
    )
    return (
        f"EfficientNet-Lite0 packaged weights, {r.img_size} px, batch {r.batch_size} images "
        f"(balanced: {r.batch_size // r.per_class} classes × {r.per_class}; random: shuffled), AdamW {r.lr:g} encoder / {r.head_lr:g} head, λ {r.lam}, "
        f"τ {r.tau}; Fashion-MNIST {r.fmnist_steps} steps, {test}; glyphs {r.glyph_epochs} epochs, "
        f"{r.episodes} episodes" + (f"; overrides {r.extra}" if r.extra else "")
    )


def yaml_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


if __name__ == "__main__":
    main()
