"""Which recipe knobs move CE and CLCE on the glyph few-shot suite? One knob at a time.

    python -m benchmarks.recipe_knobs                  # every variant, seed 0 (≈ 35 min on 2 CPU cores)
    python -m benchmarks.recipe_knobs --update --seeds 1 --only base random   # add seed 1 to two rows

Starting from ``quality.py``'s quick recipe (EfficientNet-Lite0 packaged weights, 48 px, 2 epochs on
``glyphs64/base``, batch 64 = 16 classes × 4 images, AdamW 3e-4 encoder / 3e-3 head, τ 0.5, λ 0.9),
each variant changes one knob (or one named pair) and fine-tunes CE and CLCE with it; both are then
scored with 5-way 1-/5-shot nearest-prototype episodes on the 144 novel classes, as in ``quality.py``.
Knobs that CE ignores (τ, λ) run CLCE only and are compared with the base CE.

Writes ``recipe_knobs.md`` (a table: CE, CLCE, CLCE − CE per variant), ``recipe_knobs.json`` (every
run) and ``recipe_knobs.png`` to ``--output-dir``; ``--update`` keeps the saved runs of every
(variant, seed) not run now, so seeds can be added to the rows that matter. With one seed,
differences of a few points are within seed-to-seed noise; the table prints each row's seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import RESULTS, fail, glyphs_dir, machine_line
from benchmarks.quality import QUICK, Recipe, glyph_runs


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    changes: dict  # Recipe fields (or RunConfig options, which go to Recipe.extra)
    composition: str = "balanced"
    losses: tuple[str, ...] = ("ce", "clce")


VARIANTS = [
    Variant("base", {}),
    Variant("random", {}, composition="random"),
    Variant("epochs-4", {"glyph_epochs": 4}),
    Variant("64px", {"img_size": 64}),
    Variant("64px-epochs-4", {"img_size": 64, "glyph_epochs": 4}),  # the prototype recipe
    Variant("64px-epochs-4-random", {"img_size": 64, "glyph_epochs": 4}, composition="random"),
    Variant("lr-1e-3", {"lr": 1e-3, "head_lr": 1e-2}),
    Variant("lr-1e-4", {"lr": 1e-4, "head_lr": 1e-3}),
    Variant("head-lr=lr", {"head_lr": 3e-4}),
    Variant("per-class-2", {"per_class": 2}),
    Variant("per-class-8", {"per_class": 8}),
    Variant("tau-0.1", {"tau": 0.1}, losses=("clce",)),
    Variant("tau-0.2", {"tau": 0.2}, losses=("clce",)),
    Variant("lam-0.5", {"lam": 0.5}, losses=("clce",)),
    Variant("lam-0.99", {"lam": 0.99}, losses=("clce",)),
    Variant("lam-0 (CE, 2 views)", {"lam": 0.0}, losses=("clce",)),  # CE on both views: CLCE's compute
]


def recipe_for(variant: Variant) -> Recipe:
    fields = {f.name for f in dataclasses.fields(Recipe)}
    known = {k: v for k, v in variant.changes.items() if k in fields}
    extra = {k: v for k, v in variant.changes.items() if k not in fields}
    return dataclasses.replace(QUICK, **known, extra=extra)


def floor_sizes(variants: list[Variant]) -> list[int]:
    """The image sizes the variants train at: the frozen floor is measured at each."""
    return sorted({recipe_for(v).img_size for v in variants})


def mean(rows: list[dict], variant: str, loss: str, metric: str) -> float | None:
    values = [
        r[metric] for r in rows if r["variant"] == variant and r["loss"] == loss and r.get(metric) is not None
    ]
    return float(np.mean(values)) if values else None


def markdown(rows: list[dict], variants: list[Variant], header: str) -> str:
    def fmt(x: float | None) -> str:
        return "—" if x is None else f"{x:.2f}"

    lines = [header, "", "| variant | change | CE 1-shot | CLCE 1-shot | CLCE − CE | CE 5-shot | CLCE 5-shot | "
             "CE base top-1 | CLCE base top-1 | seeds |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for v in variants:
        ce_variant = v.name if "ce" in v.losses else "base"
        ce1, cl1 = mean(rows, ce_variant, "ce", "1shot"), mean(rows, v.name, "clce", "1shot")
        change = ", ".join(f"{k}={val}" for k, val in v.changes.items()) or "—"
        if v.composition != "balanced":
            change = f"{v.composition} batches" + ("" if change == "—" else f", {change}")
        if ce_variant != v.name:
            change += " (CE: base)"
        delta = None if ce1 is None or cl1 is None else cl1 - ce1
        lines.append(
            f"| {v.name} | {change} | {fmt(ce1)} | {fmt(cl1)} | {fmt(delta)} | "
            f"{fmt(mean(rows, ce_variant, 'ce', '5shot'))} | {fmt(mean(rows, v.name, 'clce', '5shot'))} | "
            f"{fmt(mean(rows, ce_variant, 'ce', 'base_top1'))} | {fmt(mean(rows, v.name, 'clce', 'base_top1'))} | "
            f"{','.join(str(x) for x in sorted({r['seed'] for r in rows if r['variant'] == v.name}))} |"
        )
    floors = [
        f"{size} px: 1-shot {fmt(mean(rows, f'frozen {size}px', 'frozen', '1shot'))}, "
        f"5-shot {fmt(mean(rows, f'frozen {size}px', 'frozen', '5shot'))}"
        for size in floor_sizes(variants)
    ]
    lines += ["", f"Frozen pretrained encoder (the floor): {'; '.join(floors)}."]
    return "\n".join(lines)


def plot(rows: list[dict], variants: list[Variant], path: Path) -> None:
    """One row per variant: CE and CLCE 1-shot accuracy (one dot per seed), the frozen floor as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.45 * len(variants) + 1.2))
    for i, v in enumerate(variants):
        for loss, color, dy in (("ce", "C0", -0.12), ("clce", "C3", 0.12)):
            source = v.name if loss in v.losses else "base"
            xs = [r["1shot"] for r in rows if r["variant"] == source and r["loss"] == loss]
            ax.scatter(xs, [i + dy] * len(xs), color=color, s=28, label=loss.upper() if i == 0 else None,
                       marker="o" if source == v.name else "x")  # fmt: skip
    for size, style in zip(floor_sizes(variants), ("--", ":", "-."), strict=False):
        frozen = mean(rows, f"frozen {size}px", "frozen", "1shot")
        if frozen is not None:
            ax.axvline(frozen, color="grey", ls=style, lw=1, label=f"frozen encoder, {size} px")
    ax.set_yticks(range(len(variants)), [v.name for v in variants])
    ax.invert_yaxis()
    ax.set_xlabel("glyph novel classes, 5-way 1-shot accuracy (%)")
    ax.set_title("One knob at a time from the quick recipe (x: CE of the base recipe)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--only", nargs="+", metavar="VARIANT", choices=[v.name for v in VARIANTS],
                        help="run these variants (default: all)")  # fmt: skip
    parser.add_argument("--output-dir", type=Path, default=RESULTS / "recipe_knobs")
    parser.add_argument("--update", action="store_true",
                        help="keep OUTPUT_DIR's saved runs of the variants not run now (add or redo a few)")  # fmt: skip
    args = parser.parse_args()
    try:
        glyphs_dir()
    except FileNotFoundError as e:
        fail(str(e))
    to_run = [v for v in VARIANTS if not args.only or v.name in args.only]
    variants = to_run  # the table's rows
    args.output_dir.mkdir(parents=True, exist_ok=True)
    saved_path = args.output_dir / "recipe_knobs.json"
    rows: list[dict] = []
    minutes = 0.0
    if args.update and saved_path.exists():  # keep every saved (variant, seed) not run now
        saved = json.loads(saved_path.read_text())
        redo = {(v.name, seed) for v in to_run for seed in args.seeds}
        rows = [
            r
            for r in saved["runs"]
            if (r["variant"], r["seed"]) not in redo
            and not (r["variant"].startswith("frozen") and r["seed"] in args.seeds)
        ]
        minutes = saved["minutes"]
        variants = [v for v in VARIANTS if v.name in {r["variant"] for r in rows} | {v.name for v in to_run}]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for size in floor_sizes(variants):  # the frozen floor at every resolution shown
            floor = glyph_runs(dataclasses.replace(QUICK, img_size=size), [], args.seeds, Path(tmp))
            rows += [{**r, "variant": f"frozen {size}px"} for r in floor]
        for v in to_run:
            runs = [(v.composition, loss) for loss in v.losses]
            out = glyph_runs(recipe_for(v), runs, args.seeds, Path(tmp) / v.name, floor=False)
            rows += [{**r, "variant": v.name} for r in out]
    minutes += (time.perf_counter() - start) / 60
    seeds = sorted({r["seed"] for r in rows})
    header = (f"Machine: {machine_line()}. Glyph few-shot, 5-way, 15 queries, {QUICK.episodes} episodes; each "
              "cell is the mean over the seeds in the last column; base recipe = quality.py --quick; "
              f"runs took {minutes:.1f} min in all.")  # fmt: skip
    table = markdown(rows, variants, header)
    (args.output_dir / "recipe_knobs.md").write_text(table + "\n")
    (args.output_dir / "recipe_knobs.json").write_text(
        json.dumps({"machine": machine_line(), "seeds": seeds, "minutes": minutes, "runs": rows}, indent=1)
    )
    plot(rows, variants, args.output_dir / "recipe_knobs.png")
    print(table)
    print(f"wrote {args.output_dir}/recipe_knobs.md, .json, .png")


if __name__ == "__main__":
    main()
