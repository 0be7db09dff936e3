"""What open-set ``/classify`` rejects: in-distribution test images against out-of-distribution ones.

    python -m benchmarks.open_set --model-dir models/quickstart --dataset fashion-mnist
    python -m benchmarks.open_set --model-dir models/X --dataset imagefolder --data-dir DIR --threshold 0.6

Runs the export as the server does (``read_card``, ``ModelRuntime``, the card's preprocessing,
``serving.classification.predict``) over four sets and reports, at the threshold (default: the one
calibrated at export, ``calibrated``), the share of each set that is rejected, the median
similarity (best cosine to the training-class prototypes) and, for the out-of-distribution sets, the
AUROC of the similarity against the in-distribution test images (1 = every OOD image scores below
every test image; 0.5 = no separation; threshold-free):

* ``test``: the dataset's test split (``--test-per-class`` images per class, seeded), with the head's
  top-1 accuracy on all of them and on the kept ones;
* ``photos``: the photographs and scans that ship inside scikit-image (coffee, cat, astronaut, ...);
* ``glyphs``: rendered characters, ``--glyphs-dir`` (default ``$CLCE_GLYPHS_DIR/novel``, else
  ``~/.cache/clce/data/glyphs64/novel``; the shared set is ``../shared/data/glyphs64/novel``),
  skipped when absent;
* ``noise``: uniform RGB noise.

Also prints what ``/classify`` says about the coffee photo with and without the threshold. Writes
``--output`` (JSON) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.harness import RESULTS, glyphs_dir, machine_line, publish
from clce_core.export_folder import read_card
from clce_core.preprocessing import array_to_rgb
from serving.classification import CALIBRATED, Prediction, parse_threshold, predict, resolve_threshold
from serving.sessions import ModelRuntime

PHOTOS = (
    "coffee", "chelsea", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel",
    "retina", "camera", "coins", "moon", "page", "text", "clock", "horse", "brick", "grass", "gravel",
)  # fmt: skip


def photos() -> Iterator[tuple[str, Image.Image]]:
    """scikit-image's bundled photographs, as RGB images."""
    from skimage import data

    for name in PHOTOS:
        yield name, array_to_rgb(getattr(data, name)())


def glyphs(folder: Path, count: int, seed: int) -> Iterator[tuple[str, Image.Image]]:
    files = sorted(folder.glob("*/*.png"))
    for i in np.random.default_rng(seed).permutation(len(files))[:count]:
        yield files[i].name, Image.open(files[i]).convert("RGB")


def noise(count: int, seed: int) -> Iterator[tuple[str, Image.Image]]:
    rng = np.random.default_rng(seed)
    for i in range(count):
        yield f"noise-{i}", Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))


def in_distribution(
    dataset: str, data_dir: str | None, per_class: int, seed: int
) -> tuple[list, list[int], list[str]]:
    """``per_class`` seeded test images per class (RGB PIL), their labels and the class names."""
    from training.datasets import build_datasets, take_per_class

    data = build_datasets(dataset, data_dir, False, None, None)
    if data.test is None:
        raise SystemExit(f"error: {dataset} has no test split")
    test = data.test.subset(take_per_class(data.test.targets, per_class, seed))
    images = [test[i][0] for i in range(len(test))]
    return images, list(test.targets), list(data.classes)


def run_images(
    card, runtime: ModelRuntime, images: list[Image.Image], threshold: float | None, batch: int = 64
) -> list[Prediction]:
    out: list[Prediction] = []
    for start in range(0, len(images), batch):
        pixels = np.stack(
            [card.preprocess.to_uint8(im) for im in images[start : start + batch]]
        )  # (B, H, W, 3) uint8
        embedding, logits = runtime.run(pixels)
        out += predict(card, embedding, logits, 1, threshold)
    return out


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an in-distribution similarity > an out-of-distribution one), ties counted half."""
    inside = np.sort(inside)
    below = np.searchsorted(inside, outside, side="right")  # in-distribution scores <= each OOD score
    ties = below - np.searchsorted(inside, outside, side="left")
    return float(((len(inside) - below).sum() + 0.5 * ties.sum()) / (len(inside) * len(outside)))


def summarise(predictions: list[Prediction]) -> dict:
    similarity = np.array([p.similarity for p in predictions], dtype=np.float64)
    return {
        "images": len(predictions),
        "rejected_pct": 100.0 * float(np.mean([p.rejected for p in predictions])),
        "median_similarity": float(np.median(similarity)),
        "similarity": similarity,
    }


def build_parser() -> argparse.ArgumentParser:
    summary, details = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(
        "python -m benchmarks.open_set",
        description=summary,
        epilog=details,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-dir", required=True, help="an export with prototypes.npy")
    p.add_argument("--dataset", required=True, help="the in-distribution dataset (the run's)")
    p.add_argument("--data-dir", help="its location (default: the dataset's default)")
    p.add_argument("--threshold", type=parse_threshold, default=CALIBRATED, help="a cosine or 'calibrated'")
    p.add_argument("--test-per-class", type=int, default=100, help="test images per class (default 100)")
    p.add_argument("--glyphs", type=int, default=500, help="glyph images (default 500)")
    p.add_argument(
        "--glyphs-dir", type=Path, default=glyphs_dir(check=False) / "novel", help="class folders of glyphs"
    )
    p.add_argument("--noise", type=int, default=100, help="noise images (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=RESULTS / "open_set.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    card = read_card(args.model_dir)
    threshold = resolve_threshold(card, args.threshold)
    runtime = ModelRuntime(card, device="auto")
    images, targets, classes = in_distribution(args.dataset, args.data_dir, args.test_per_class, args.seed)
    if classes != card.labels:
        print(
            f"error: {args.dataset}'s classes are not the model's ({card.labels[:3]}, ...)", file=sys.stderr
        )
        return 2
    sets = {"test": images, "photos": [im for _, im in photos()]}
    if args.glyphs_dir.is_dir():
        sets["glyphs"] = [im for _, im in glyphs(args.glyphs_dir, args.glyphs, args.seed)]
    sets["noise"] = [im for _, im in noise(args.noise, args.seed)]
    results: dict = {
        "machine": machine_line(threads=0),
        "model_dir": str(args.model_dir),
        "threshold": threshold,
    }
    results["open_set"] = card.open_set
    predictions = {name: run_images(card, runtime, ims, threshold) for name, ims in sets.items()}
    rows = {name: summarise(p) for name, p in predictions.items()}
    top1 = [p.top_k[0][0] for p in predictions["test"]]  # the head's answer, also where rejected
    correct = np.array([label == classes[t] for label, t in zip(top1, targets, strict=True)])
    kept = ~np.array([p.rejected for p in predictions["test"]])
    rows["test"]["top1_all"] = 100.0 * float(correct.mean())
    rows["test"]["top1_kept"] = 100.0 * float(correct[kept].mean()) if kept.any() else None
    for name, row in rows.items():
        if name != "test":
            row["auroc_vs_test"] = auroc(rows["test"]["similarity"], row["similarity"])
    rows["photos"]["kept"] = [n for n, p in zip(PHOTOS, predictions["photos"], strict=True) if not p.rejected]
    coffee = [im for name, im in photos() if name == "coffee"]
    plain, gated = (run_images(card, runtime, coffee, t)[0] for t in (None, threshold))
    results["coffee"] = {
        "without_threshold": {"label": plain.label, "probability": plain.top_k[0][1]},
        "with_threshold": {"label": gated.label, "rejected": gated.rejected, "similarity": gated.similarity},
    }
    results["sets"] = {
        name: {k: v for k, v in row.items() if k != "similarity"} for name, row in rows.items()
    }

    lines = [
        f"machine: {results['machine']}; threshold {threshold:.4f} ({args.threshold})",
        "",
        "| set | images | rejected | median similarity | AUROC vs test | top-1 all / kept |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["sets"].items():
        auc = f"{row['auroc_vs_test']:.3f}" if "auroc_vs_test" in row else ""
        top1 = f"{row['top1_all']:.1f}% / {row['top1_kept']:.1f}%" if "top1_all" in row else ""
        lines.append(
            f"| {name} | {row['images']} | {row['rejected_pct']:.1f}% | {row['median_similarity']:.3f} | {auc} | {top1} |"
        )
    lines += [
        "",
        f"photos kept (not rejected): {', '.join(rows['photos']['kept']) or 'none'}",
        f"coffee photo: without a threshold {plain.label} {plain.top_k[0][1]:.2f}; with it {gated.label} "
        f"(rejected {gated.rejected}, similarity {gated.similarity:.3f})",
    ]
    publish(results, args.output, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
