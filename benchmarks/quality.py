"""Does CLCE pay off? Every loss of the registry against CE and the frozen encoder, over paired seeds.

    python -m benchmarks.quality                  # the default recipe (chosen on validation data; budget 75 min on 2 CPU cores)
    python -m benchmarks.quality --quick          # 3 seeds, a shorter recipe (≤ 20 min)
    python -m benchmarks.quality --full           # longer: more epochs and steps, the whole test split, 3000 episodes
    python -m benchmarks.quality --suite glyphs --batch-sweep 64 128 256 --losses ce supcon clce --seeds 0 1 2

Two suites, the same recipe for every loss:

* ``glyphs`` — few-shot on classes never trained on: fine-tune on the 96 ``train`` classes of glyphs64
  (``training/splits/glyphs64.json``), then 5-way 1- and 5-shot episodes (15 queries) on the 144 novel
  classes. Floor: the frozen pretrained encoder. Classifiers: nearest prototype (every row), SimpleShot
  (centred on the mean embedding of the 96 training classes) and logistic regression (frozen, CE, CLCE).
* ``fmnist`` — low-data transfer: fine-tune on K Fashion-MNIST images per class, top-1 on the test split
  (a fixed class-balanced subset unless ``--full``). Floor: a logistic-regression probe on the frozen
  encoder's features of the same K images (its C chosen on the validation split).

No peeking: every recipe choice (epochs, resolution, learning rates, batch composition, steps) was made
by ``python -m benchmarks.recipe_search`` on the glyph VALIDATION classes and the Fashion-MNIST
validation split; this script touches the novel classes and the test split once per final run.
Batch composition: ``balanced`` batches hold B/m classes × m images (m = 4), ``random`` is plain
shuffling. CE runs with both, and the better of the two is the baseline the others must beat; the
contrastive losses use balanced batches (the composition validation chose for CLCE on the glyphs;
see benchmarks/README.md for Fashion-MNIST).

Seeds (default 0–4): a seed fixes the data split, data order and head initialisation for every loss,
so differences are PAIRED per seed: mean ± 95% Student-t interval of the per-seed differences; a
difference is significant when that interval excludes 0. Each loss's own mean ± t-interval is shown
too. Writes ``quality.md`` (tables and one verdict line per suite), ``quality.json`` (every run, the
recipe, the machine) and ``quality.png`` to ``--output-dir``. The glyph set is read from
``$CLCE_GLYPHS_DIR`` (render it with ``python -m benchmarks.render_glyphs``); Fashion-MNIST from
``$CLCE_DATA_HOME/fashion-mnist`` or Debian's ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from benchmarks.quality_report import markdown, plot
from clce_core.fewshot import evaluate_episodes
from training.config import RunConfig
from training.datasets import DatasetError, build_datasets, take_per_class
from training.embed import embed_images, load_class_set, load_encoder
from training.evaluation import logreg_classifier
from training.finetune import Run
from training.transforms import eval_transform

LOSSES = ["ce", "supcon", "hscl", "ce+supcon", "clce-nohnm", "clce"]  # the whole registry
CLASSIFIERS = ("prototype", "simpleshot", "logreg")
CLASSIFIER_LOSSES = ("frozen", "ce", "clce")  # the rows that get every classifier


@dataclass
class Recipe:
    """The shared fine-tuning recipe; the modes differ only here. Chosen on validation data."""

    model: str = "tf_efficientnet_lite0"
    pretrained: str = "packaged"
    img_size: int = 48
    batch_size: int = 64  # glyphs; Fashion-MNIST: min(batch_size, 10·K / 3), so an epoch has ≥ 3 steps
    per_class: int = 4
    lr: float = 3e-4  # glyphs (the fine-tuning CLI's default; validation chose no other)
    head_lr: float = 3e-3
    fmnist_lr: float = 1e-3  # Fashion-MNIST: validation top-1 CE 69.6 / CLCE 73.2 vs 64.0 / 68.8 at 3e-4
    fmnist_head_lr: float = 1e-2
    lam: float = 0.9
    tau: float = 0.5
    glyph_epochs: int = 6
    fmnist_k: list[int] = field(default_factory=lambda: [10])
    fmnist_steps: int = 60  # optimizer steps for each K (epochs = steps / batches per epoch)
    fmnist_val_per_class: int = 10  # validation images per class that choose best.pt
    fmnist_test_per_class: int | None = 200  # None: the whole 10k test split
    episodes: int = 1000
    queries: int = 15
    workers: int = 0  # small images: decoding in the main process beats a worker on 2 cores
    extra: dict[str, Any] = field(default_factory=dict)  # any other RunConfig option


DEFAULT = Recipe()
QUICK = Recipe(glyph_epochs=3, fmnist_steps=30, fmnist_test_per_class=100, episodes=500)
FULL = Recipe(img_size=64, glyph_epochs=8, fmnist_k=[5, 10, 20], fmnist_steps=120, fmnist_test_per_class=None,
              episodes=3000)  # fmt: skip
MODES = {"default": (DEFAULT, [0, 1, 2, 3, 4]), "quick": (QUICK, [0, 1, 2]), "full": (FULL, [0, 1, 2, 3, 4])}


# ------------------------------------------------------------------------------------------ runs


def plan(losses: list[str], batches: list[str], random_losses: list[str]) -> list[tuple[str, str]]:
    """(composition, loss) pairs: every loss with balanced batches, ``random_losses`` with random ones too."""
    return [(c, loss) for c in batches for loss in losses if c == "balanced" or loss in random_losses]


def run_config(recipe: Recipe, composition: str, loss: str, seed: int, batch_size: int, epochs: int,
               **suite: Any) -> RunConfig:  # fmt: skip
    """One run of the shared recipe; ``suite`` holds what a suite sets itself (data, warm-up, output,
    learning rates: ``lr`` and ``head_lr`` default to the glyph suite's)."""
    rates = {"lr": recipe.lr, "head_lr": recipe.head_lr}
    return RunConfig(
        model=recipe.model, pretrained=recipe.pretrained, img_size=recipe.img_size, batch_size=batch_size,
        per_class=recipe.per_class if composition == "balanced" else 0, epochs=epochs, lam=recipe.lam,
        tau=recipe.tau, loss=loss, seed=seed, workers=recipe.workers, **{**rates, **suite}, **recipe.extra,
    )  # fmt: skip


def finetune(cfg: RunConfig) -> tuple[Run, dict[str, float], float]:
    """One in-process fine-tuning run: the run (``eval_model`` holds best.pt's weights), test metrics, seconds."""
    start = time.perf_counter()
    run = Run(cfg.resolved(), show_progress=False)
    final = run.fit()
    return run, final, time.perf_counter() - start


def embed(model: Any, data_config: dict, images: Any) -> np.ndarray:
    """``(N, D)`` raw embeddings of ``images`` through the model's eval transform."""
    return embed_images(model, images, transform=eval_transform(data_config), show_progress=False)


class RowLog:
    """Each finished run: one rounded line on stderr (progress), one exact JSON line in ``path``
    (``OUTPUT_DIR/NAME.runs.jsonl``), so a run stopped half-way keeps every row it finished."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def __call__(self, row: dict) -> None:
        append_row(self.path, row)


def append_row(path: Path, row: dict) -> None:
    """Append ``row`` exactly to the JSONL file ``path``; show it, rounded, on stderr (progress)."""
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
    print(json.dumps(shown), file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ glyphs


def few_shot(emb: np.ndarray, labels: np.ndarray, recipe: Recipe, seed: int, classifiers: tuple[str, ...],
             base_mean: np.ndarray | None) -> dict[str, float]:  # fmt: skip
    """``{classifier}_{k}shot`` accuracies (5-way, 1 and 5 shots), the same episodes for every classifier."""
    out = {}
    for name in classifiers:
        clf = logreg_classifier() if name == "logreg" else name
        for shots in (1, 5):
            res = evaluate_episodes(emb, labels, n_way=5, k_shot=shots, n_query=recipe.queries,
                                    n_episodes=recipe.episodes, seed=seed, classifier=clf, base_mean=base_mean)  # fmt: skip
            out[f"{name}_{shots}shot"] = res.mean
    return out


def glyph_suite(recipe: Recipe, runs: list[tuple[str, str]], seeds: list[int], work: Path, record: RowLog,
                batch_sizes: list[int] | None = None, floor: bool = True) -> list[dict]:  # fmt: skip
    novel = load_class_set("glyphs64", "test")  # the 144 novel classes: reported, never chosen on
    base = load_class_set("glyphs64", "train")  # the 96 fine-tuning classes: SimpleShot's centre
    rows = []
    if floor:
        enc = load_encoder(model_name=recipe.model, pretrained=recipe.pretrained, img_size=recipe.img_size)
        emb = embed(enc.model, enc.data_config, novel.dataset)
        base_mean = embed(enc.model, enc.data_config, base.dataset).mean(axis=0)
        for seed in seeds:
            rows.append({"suite": "glyphs", "setting": "frozen", "loss": "frozen", "batches": "—", "seed": seed,
                         **few_shot(emb, novel.targets, recipe, seed, CLASSIFIERS, base_mean)})  # fmt: skip
            record(rows[-1])
    for batch_size in batch_sizes or [recipe.batch_size]:
        for seed in seeds:
            for composition, loss in runs:
                cfg = run_config(recipe, composition, loss, seed, batch_size, recipe.glyph_epochs,
                                 dataset="glyphs64", hflip=0.0,  # mirroring changes a character
                                 warmup_epochs=0.25, output=str(work / f"glyphs-b{batch_size}-{composition}-{loss}-s{seed}"))  # fmt: skip
                run, final, seconds = finetune(cfg)
                emb = embed(run.eval_model, run.data_config, novel.dataset)
                every = loss in CLASSIFIER_LOSSES and not batch_sizes
                base_mean = (
                    embed(run.eval_model, run.data_config, base.dataset).mean(axis=0) if every else None
                )
                rows.append({"suite": "glyphs", "setting": f"batch {batch_size}", "loss": loss, "batches": composition,
                             "seed": seed, "base_top1": final.get("test_top1"), "seconds": seconds,
                             **few_shot(emb, novel.targets, recipe, seed, CLASSIFIERS if every else ("prototype",), base_mean)})  # fmt: skip
                record(rows[-1])
    return rows


# ------------------------------------------------------------------------------------------ Fashion-MNIST


def fmnist_batch_and_epochs(recipe: Recipe, k: int) -> tuple[int, int]:
    """Batch ``min(batch_size, 10K/3)`` (a multiple of per_class) and the epochs that make ``fmnist_steps``."""
    batch_size = min(recipe.batch_size, (10 * k) // 3) // recipe.per_class * recipe.per_class
    return batch_size, max(1, round(recipe.fmnist_steps / ((10 * k) // batch_size)))


#: The linear probe's grid: (L2-normalise the features?, inverse regularisation C).
PROBE_GRID = [(norm, c) for norm in (False, True) for c in (0.01, 0.1, 1.0, 10.0, 100.0)]


def fit_probe(x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray) -> tuple[float, Any, bool]:
    """Logistic regression on features ``x`` ``(N, D)`` / labels ``y`` ``(N,)`` for every point of
    :data:`PROBE_GRID`; the one best on ``(vx, vy)`` (the first on ties): (its validation top-1 in %,
    the fitted classifier, whether it normalises)."""
    from sklearn.linear_model import LogisticRegression

    from clce_core.fewshot import l2_normalize

    best: tuple[float, Any, bool] = (-1.0, None, False)
    for norm, c in PROBE_GRID:
        f = l2_normalize if norm else np.asarray
        clf = LogisticRegression(C=c, max_iter=3000).fit(f(x), y)
        val = 100.0 * float((clf.predict(f(vx)) == vy).mean())
        best = max(best, (val, clf, norm), key=lambda b: b[0])
    return best


def linear_probe(recipe: Recipe, k: int, seed: int, encoder: Any) -> dict[str, float]:
    """Logistic regression on the frozen encoder's features of the run's K images per class; C (and
    whether to L2-normalise) chosen on 50 validation images per class; top-1 on the runs' test subset."""
    from clce_core.fewshot import l2_normalize

    def features(split: Any) -> tuple[np.ndarray, np.ndarray]:
        return embed(encoder.model, encoder.data_config, split), np.asarray(split.targets)

    splits = build_datasets("fashion-mnist", None, False, None, None, train_per_class=k, seed=seed)
    x, y = features(splits.train)
    vx, vy = features(splits.val.subset(take_per_class(splits.val.targets, 50, [seed, 7])))
    test = splits.test
    if recipe.fmnist_test_per_class is not None:  # the subset Run evaluates (seed 0, as RunConfig does)
        test = test.subset(take_per_class(test.targets, recipe.fmnist_test_per_class, 0))
    tx, ty = features(test)
    val, clf, norm = fit_probe(x, y, vx, vy)
    pred = clf.predict(l2_normalize(tx) if norm else tx)
    return {
        "top1": 100.0 * float((pred == ty).mean()),
        "val_top1": val,
        "probe_C": float(clf.C),
        "probe_l2": norm,
    }


def fmnist_suite(recipe: Recipe, runs: list[tuple[str, str]], seeds: list[int], work: Path, record: RowLog,
                 floor: bool = True) -> list[dict]:  # fmt: skip
    rows = []
    encoder = (
        load_encoder(model_name=recipe.model, pretrained=recipe.pretrained, img_size=recipe.img_size)
        if floor
        else None
    )
    for k in recipe.fmnist_k:
        batch_size, epochs = fmnist_batch_and_epochs(recipe, k)
        for seed in seeds:
            if encoder is not None:
                rows.append({"suite": "fmnist", "setting": f"K={k}", "loss": "probe", "batches": "—", "seed": seed,
                             **linear_probe(recipe, k, seed, encoder)})  # fmt: skip
                record(rows[-1])
            for composition, loss in runs:
                cfg = run_config(recipe, composition, loss, seed, batch_size, epochs, dataset="fashion-mnist",
                                 lr=recipe.fmnist_lr, head_lr=recipe.fmnist_head_lr,
                                 train_per_class=k, val_per_class=recipe.fmnist_val_per_class,
                                 test_per_class=recipe.fmnist_test_per_class, warmup_epochs=0.1 * epochs,
                                 output=str(work / f"fmnist-k{k}-{composition}-{loss}-s{seed}"))  # fmt: skip
                _, final, seconds = finetune(cfg)
                rows.append({"suite": "fmnist", "setting": f"K={k}", "loss": loss, "batches": composition, "seed": seed,
                             "top1": final["test_top1"], "seconds": seconds, "epochs": epochs, "batch_size": batch_size})  # fmt: skip
                record(rows[-1])
    return rows


# ------------------------------------------------------------------------------------------ the CLI


def recipe_line(r: Recipe, mode: str) -> str:
    test = (
        "the whole 10k test split"
        if r.fmnist_test_per_class is None
        else f"a {10 * r.fmnist_test_per_class}-image test subset"
    )
    return (
        f"mode {mode}: {r.model} ({r.pretrained} weights), {r.img_size} px, batch {r.batch_size} images "
        f"(balanced: {r.batch_size // r.per_class} classes × {r.per_class}), λ {r.lam}, τ {r.tau}; glyphs {r.glyph_epochs} "
        f"epochs, AdamW {r.lr:g} encoder / {r.head_lr:g} head, {r.episodes} episodes of {r.queries} queries per class; Fashion-MNIST K = "
        f"{', '.join(map(str, r.fmnist_k))}, {r.fmnist_steps} steps, AdamW {r.fmnist_lr:g} / {r.fmnist_head_lr:g}, {test}" + (f"; overrides {r.extra}" if r.extra else "")
    )  # fmt: skip


def apply_overrides(recipe: Recipe, items: list[str]) -> Recipe:
    """``KEY=VALUE`` (YAML values) onto a copy: Recipe fields, else RunConfig options (``extra``)."""
    import yaml

    recipe = dataclasses.replace(recipe, extra=dict(recipe.extra))
    names = {f.name for f in dataclasses.fields(Recipe)}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            fail(f"--set takes KEY=VALUE, got {item!r}")
        value = yaml.safe_load(text)
        if key in names:
            setattr(recipe, key, value)
        elif key in {f.name for f in dataclasses.fields(RunConfig)}:
            recipe.extra[key] = value
        else:
            fail(
                f"--set {key}: neither a recipe field ({', '.join(sorted(names - {'extra'}))}) nor a fine-tuning option"
            )
    return recipe


def combine(folders: list[Path], name: str) -> dict:
    """The results of runs made in several output folders, as one: every finished run from each
    folder's ``NAME.runs.jsonl`` (a run that two folders both made counts once, the first folder's),
    each folder's header and minutes where it finished (``NAME.json``)."""
    rows, seen, headers, minutes = [], set(), [], []
    for folder in folders:
        done, lines = folder / f"{name}.json", folder / f"{name}.runs.jsonl"
        if not done.exists() and not lines.exists():
            fail(
                f"--combine {folder}: no {name}.json or {name}.runs.jsonl there (is it an --output-dir of this benchmark?)"
            )
        part = json.loads(done.read_text()) if done.exists() else None
        if part is not None:
            headers.append(f"[{folder.name}] {part['header']}")
            minutes.append(part["minutes"])
        else:
            headers.append(f"[{folder.name}] stopped before the end; its finished runs are included.")
        found = [json.loads(line) for line in lines.read_text().splitlines()] if lines.exists() else None
        for row in found if found is not None else (part or {}).get("runs", []):
            key = (row["suite"], row["setting"], row["loss"], row["batches"], row["seed"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return {"machine": machine_line(), "header": " ".join(headers), "minutes": minutes, "runs": rows}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="3 seeds, a shorter recipe (≤ 20 min on 2 CPU cores)"
    )
    mode.add_argument("--full", action="store_true", help="the longer recipe (hours on a CPU)")
    p.add_argument("--suite", choices=["all", "fmnist", "glyphs"], default="all")
    p.add_argument("--losses", nargs="+", default=LOSSES, help="registry names (default: all of them)")
    p.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2 3 4 (--quick: 0 1 2)")
    p.add_argument("--batches", nargs="+", choices=["balanced", "random"], default=["balanced", "random"],
                   help="batch compositions (default both)")  # fmt: skip
    p.add_argument("--random-losses", nargs="+", default=["ce"],
                   help="the losses that also run with random batches (default: ce, the baseline)")  # fmt: skip
    p.add_argument("--batch-sweep", nargs="+", type=int, help="glyph batch sizes (images), e.g. 64 128 256")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field or a fine-tuning option",
    )
    p.add_argument("--output-dir", type=Path, default=RESULTS / "quality")
    p.add_argument("--replot", action="store_true", help="redraw the table and plot from OUTPUT_DIR's JSON")
    p.add_argument("--combine", nargs="+", type=Path, metavar="DIR",
                   help="join the runs of several output folders (e.g. one process per suite or per seed, "
                        "each on its own core; a stopped one counts with the runs it finished) into "
                        "OUTPUT_DIR's table, JSON and plot")  # fmt: skip
    p.add_argument(
        "--keep-runs", action="store_true", help="keep the run folders (checkpoints) in OUTPUT_DIR/runs"
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    name = "quality_batch_sweep" if args.batch_sweep else "quality"
    out = args.output_dir
    if args.replot or args.combine:
        if args.combine:
            saved = combine(args.combine, name)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.json").write_text(json.dumps(saved, indent=1))
        else:
            saved = json.loads((out / f"{name}.json").read_text())
        (out / f"{name}.md").write_text(markdown(saved["runs"], saved["header"]) + "\n")
        plot(saved["runs"], out / f"{name}.png")
        print(markdown(saved["runs"], saved["header"]))
        print(f"wrote {out}/{name}.md and .png")
        return
    mode = "quick" if args.quick else "full" if args.full else "default"
    recipe, seeds = MODES[mode]
    recipe, seeds = apply_overrides(recipe, args.set), args.seeds or seeds
    suites = ["fmnist", "glyphs"] if args.suite == "all" and not args.batch_sweep else [args.suite]
    if args.batch_sweep:
        suites = ["glyphs"]
    if "glyphs" in suites:
        try:
            glyphs_dir()
        except FileNotFoundError as e:
            fail(f"{e}; or run with --suite fmnist")
    runs = plan(args.losses, args.batches, args.random_losses)
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    record = RowLog(out / f"{name}.runs.jsonl")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = out / "runs" if args.keep_runs else Path(tmp)
            if "fmnist" in suites:
                rows += fmnist_suite(recipe, runs, seeds, work, record)
            if "glyphs" in suites:
                rows += glyph_suite(
                    recipe, runs, seeds, work, record, args.batch_sweep, floor=not args.batch_sweep
                )
    except DatasetError as e:
        fail(str(e))
    minutes = (time.perf_counter() - start) / 60
    header = (f"Machine: {machine_line()}. {recipe_line(recipe, mode)}. Seeds {', '.join(map(str, seeds))}; "
              f"took {minutes:.1f} min.")  # fmt: skip
    table = markdown(rows, header)
    (out / f"{name}.md").write_text(table + "\n")
    results = {"machine": machine_line(), "mode": mode, "recipe": dataclasses.asdict(recipe), "seeds": seeds,
               "minutes": minutes, "header": header, "runs": rows}  # fmt: skip
    (out / f"{name}.json").write_text(json.dumps(results, indent=1))
    plot(rows, out / f"{name}.png")
    print(table)
    print(f"wrote {out}/{name}.md, .json, .png")


if __name__ == "__main__":
    main()
