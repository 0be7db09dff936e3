"""Choose the quality benchmark's recipe on VALIDATION data only (never the novel classes or the test split).

    python -m benchmarks.recipe_search --floors                       # frozen encoder / linear-probe grid
    python -m benchmarks.recipe_search --suite glyphs --variant 48px-e6 --seeds 0
    python -m benchmarks.recipe_search --suite fmnist --variant K10-s60-lr1e-3
    python -m benchmarks.recipe_search --summary                      # the table of everything run so far

Glyphs: fine-tune on the 96 ``train`` classes of glyphs64 (the benchmark's own runs), score 5-way 1- and
5-shot nearest-prototype accuracy on the 32 ``val`` classes (``training/splits/glyphs64.json``), which
neither training nor the reported table uses. Fashion-MNIST: score top-1 on 50 validation images per
class (seeded), never the test split. Each variant is a set of changes to :data:`START` (the former quick
recipe: 48 px, 2 epochs, 30 steps, the fine-tuning CLI's learning rates), run with CE and CLCE and both
batch compositions. One JSON line per run is appended to ``results/recipe_search/{suite}.jsonl``; a run
already there is skipped, so a search can be stopped and continued. ``benchmarks/quality.py``'s
``DEFAULT`` records the choice made from these lines (see ``results/recipe_search/summary.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import RESULTS, fail, machine_line
from benchmarks.quality import (
    DEFAULT,
    Recipe,
    append_row,
    embed,
    few_shot,
    finetune,
    fit_probe,
    fmnist_batch_and_epochs,
    run_config,
)
from training.datasets import DatasetError, build_datasets, take_per_class
from training.embed import load_class_set, load_encoder

OUT = RESULTS / "recipe_search"
#: Where the search starts: the quick recipe the benchmark had before it (48 px, 2 epochs, 30 steps).
START = dataclasses.replace(DEFAULT, glyph_epochs=2, fmnist_steps=30, fmnist_lr=3e-4, fmnist_head_lr=3e-3)
LR_1E3 = {"fmnist_lr": 1e-3, "fmnist_head_lr": 1e-2}
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "glyphs": {
        **{f"{px}px-e{e}": {"img_size": px, "glyph_epochs": e} for px in (48, 64) for e in (2, 4, 6)},
        "48px-e8": {"img_size": 48, "glyph_epochs": 8},
    },
    "fmnist": {
        "K10-s30": {"fmnist_steps": 30},
        "K10-s60": {"fmnist_steps": 60},
        "K10-s120": {"fmnist_steps": 120},
        "K10-s60-crop0.6": {"fmnist_steps": 60, "crop_scale": 0.6},
        "K10-s60-lr1e-4": {"fmnist_steps": 60, "fmnist_lr": 1e-4, "fmnist_head_lr": 3e-3},
        "K10-s60-lr1e-3": {"fmnist_steps": 60, **LR_1E3},
        "K10-s90-lr1e-3": {"fmnist_steps": 90, **LR_1E3},
        "K10-s120-lr1e-3": {"fmnist_steps": 120, **LR_1E3},
    },
}
FMNIST_VAL_PER_CLASS = 50  # the images that score a Fashion-MNIST variant


def recipe_for(changes: dict[str, Any]) -> Recipe:
    """:data:`START` with ``changes`` (Recipe fields; anything else is a fine-tuning option)."""
    fields = {f.name for f in dataclasses.fields(Recipe)}
    extra = {k: v for k, v in changes.items() if k not in fields}
    return dataclasses.replace(START, **{k: v for k, v in changes.items() if k in fields}, extra=extra)


def fmnist_val(seed: int, transform: Any = None) -> Any:
    """The scoring images: 50 per class of the validation split (seeded, disjoint from train and test)."""
    val = build_datasets("fashion-mnist", None, False, None, transform, seed=seed).val
    return val.subset(take_per_class(val.targets, FMNIST_VAL_PER_CLASS, [seed, 7]))


class Log:
    """The JSONL file of a suite: the runs done (skipped when asked again) and appending new ones."""

    def __init__(self, path: Path) -> None:
        self.path = path
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        self.done = {(r["variant"], r["composition"], r["loss"], r["seed"]) for r in rows}

    def add(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_row(self.path, row)
        self.done.add((row["variant"], row["composition"], row["loss"], row["seed"]))


def search_glyphs(name: str, changes: dict, runs: list[tuple[str, str]], seeds: list[int], log: Log,
                  work: Path) -> None:  # fmt: skip
    recipe = recipe_for(changes)
    val = load_class_set("glyphs64", "val")
    for seed in seeds:
        for composition, loss in runs:
            if (name, composition, loss, seed) in log.done:
                continue
            cfg = run_config(recipe, composition, loss, seed, recipe.batch_size, recipe.glyph_epochs,
                             dataset="glyphs64", hflip=0.0, warmup_epochs=0.25,
                             output=str(work / f"{name}-{composition}-{loss}-{seed}"))  # fmt: skip
            run, final, seconds = finetune(cfg)
            scores = few_shot(embed(run.eval_model, run.data_config, val.dataset), val.targets, recipe, seed,
                              ("prototype",), None)  # fmt: skip
            log.add({"suite": "glyphs", "variant": name, "changes": changes, "composition": composition, "loss": loss,
                     "seed": seed, "seconds": seconds, "base_top1": final.get("test_top1"), **scores})  # fmt: skip


def search_fmnist(name: str, changes: dict, runs: list[tuple[str, str]], seeds: list[int], log: Log,
                  work: Path) -> None:  # fmt: skip
    recipe = recipe_for(changes)
    for k in recipe.fmnist_k:
        batch_size, epochs = fmnist_batch_and_epochs(recipe, k)
        for seed in seeds:
            for composition, loss in runs:
                if (name, composition, loss, seed) in log.done:
                    continue
                cfg = run_config(recipe, composition, loss, seed, batch_size, epochs, dataset="fashion-mnist",
                                 lr=recipe.fmnist_lr, head_lr=recipe.fmnist_head_lr, train_per_class=k,
                                 val_per_class=recipe.fmnist_val_per_class, test_per_class=1,
                                 warmup_epochs=0.1 * epochs, output=str(work / f"{name}-{composition}-{loss}-{seed}"))  # fmt: skip
                run, _, seconds = finetune(cfg)
                top1 = validation_top1(run, seed)
                log.add({"suite": "fmnist", "variant": name, "changes": changes, "composition": composition,
                         "loss": loss, "seed": seed, "seconds": seconds, "epochs": epochs, "batch_size": batch_size,
                         "val_top1": top1})  # fmt: skip


def validation_top1(run: Any, seed: int) -> float:
    """Top-1 (%) of the run's best weights on :func:`fmnist_val`'s images, through its eval transform."""
    import torch
    from torch.utils.data import DataLoader

    from training.engine import evaluate
    from training.transforms import eval_transform

    val = fmnist_val(seed, eval_transform(run.data_config))
    result = evaluate(run.eval_model, DataLoader(val, batch_size=256), torch.device("cpu"), show_progress=False,
                      memory_format=torch.channels_last)  # fmt: skip
    return float(result.top1)


def floors(seeds: list[int], logs: dict[str, Log]) -> None:
    """The frozen encoder on the glyph val classes, and the probe grid on Fashion-MNIST validation, per size."""
    val = load_class_set("glyphs64", "val")
    for size in (48, 64):
        recipe = dataclasses.replace(START, img_size=size)
        enc = load_encoder(model_name=recipe.model, pretrained=recipe.pretrained, img_size=size)
        emb = embed(enc.model, enc.data_config, val.dataset)
        for seed in seeds:
            if (f"frozen-{size}", "-", "frozen", seed) not in logs["glyphs"].done:
                logs["glyphs"].add({"suite": "glyphs", "variant": f"frozen-{size}", "composition": "-",
                                    "loss": "frozen", "seed": seed, **few_shot(emb, val.targets, recipe, seed,
                                                                              ("prototype",), None)})  # fmt: skip
            vset = fmnist_val(seed)
            vx, vy = embed(enc.model, enc.data_config, vset), np.asarray(vset.targets)
            for k in (5, 10, 20):
                name = f"K{k}-probe-{size}"
                if (name, "-", "probe", seed) in logs["fmnist"].done:
                    continue
                train = build_datasets(
                    "fashion-mnist", None, False, None, None, train_per_class=k, seed=seed
                ).train
                x, y = embed(enc.model, enc.data_config, train), np.asarray(train.targets)
                val_top1, clf, norm = fit_probe(x, y, vx, vy)
                logs["fmnist"].add({"suite": "fmnist", "variant": name, "composition": "-", "loss": "probe",
                                    "seed": seed, "C": float(clf.C), "l2": norm, "val_top1": val_top1})  # fmt: skip


def summary(logs: dict[str, Log]) -> str:
    """Every variant's mean validation score per (composition, loss), in one Markdown table per suite."""
    lines = [f"Recipe search on validation data. Machine: {machine_line(torch_info=False)}.", ""]
    metric = {"glyphs": ("prototype_1shot", "prototype_5shot"), "fmnist": ("val_top1",)}
    for suite, log in logs.items():
        rows = [json.loads(line) for line in log.path.read_text().splitlines()] if log.path.exists() else []
        groups: dict[tuple[str, str, str], list[dict]] = {}
        for r in rows:
            groups.setdefault((r["variant"], r["composition"], r["loss"]), []).append(r)
        heads = " | ".join(metric[suite])
        lines += [f"**{suite}** (validation)", "", f"| variant | batches | loss | seeds | {heads} |",
                  "|---|---|---|---:|" + "---:|" * len(metric[suite])]  # fmt: skip
        for (variant, comp, loss), rs in groups.items():
            cells = " | ".join(f"{np.mean([r[m] for r in rs]):.2f}" for m in metric[suite])
            lines.append(f"| {variant} | {comp} | {loss} | {len(rs)} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recipe_search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--suite", choices=list(VARIANTS), default="glyphs")
    p.add_argument("--variant", nargs="+", default=[], help="names from VARIANTS (see --list)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--losses", nargs="+", default=["ce", "clce"])
    p.add_argument("--batches", nargs="+", choices=["balanced", "random"], default=["balanced", "random"])
    p.add_argument("--floors", action="store_true", help="the frozen-encoder and linear-probe rows")
    p.add_argument("--summary", action="store_true", help="write and print summary.md from the JSONL files")
    p.add_argument("--list", action="store_true", help="print the variants and their changes")
    p.add_argument("--output-dir", type=Path, default=OUT)
    args = p.parse_args(argv)
    logs = {suite: Log(args.output_dir / f"{suite}.jsonl") for suite in VARIANTS}
    if args.list:
        for suite, variants in VARIANTS.items():
            for name, changes in variants.items():
                print(f"{suite:7} {name:18} {changes}")
        return
    unknown = [v for v in args.variant if v not in VARIANTS[args.suite]]
    if unknown:
        fail(f"unknown {args.suite} variant {unknown[0]!r}; --list shows them")
    runs = [(c, loss) for c in args.batches for loss in args.losses]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.floors:
                floors(args.seeds, logs)
            search = search_glyphs if args.suite == "glyphs" else search_fmnist
            for name in args.variant:
                search(name, VARIANTS[args.suite][name], runs, args.seeds, logs[args.suite], Path(tmp))
    except (DatasetError, FileNotFoundError) as e:
        fail(str(e))
    if args.summary:
        text = summary(logs)
        (args.output_dir / "summary.md").write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    main()
