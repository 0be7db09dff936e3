"""Evaluate an encoder: few-shot episodes with 95% CIs, top-1 / per-class accuracy, embedding report.

    python -m training.evaluate --checkpoint runs/glyphs-clce/best.pt --data-dir data/glyphs64/novel
    python -m training.evaluate --model tf_efficientnet_lite0 --pretrained packaged --img-size 64 \\
        --data-dir data/glyphs64/novel --episodes 1000 --report reports/floor
    python -m training.evaluate --checkpoint best.pt --dataset cifar-fs --split test --output results.json
    python -m training.evaluate --compare runs/ce/best.pt runs/clce/best.pt --data-dir DIR --report DIR

Every image is embedded once (eval transform of the model, no_grad); the episodes then run in numpy:
N-way K-shot, nearest prototype by cosine on L2-normalised embeddings, or ``--classifier simpleshot``
(Wang et al. 2019: centre on the mean embedding of the base classes — ``--base-data-dir DIR``, or the
``train`` classes of ``--dataset`` — L2-normalise, nearest centroid), or ``--classifier logreg``.
One line is printed per setting, e.g. ``5-way 1-shot: 85.62 ± 0.59 (3000 episodes, 15 queries)``
(mean over episodes ± 1.96·σ/√n). Top-1 and per-class accuracy follow when the checkpoint's classes
include the evaluated classes. ``--report DIR`` writes report.md with figures (pair-similarity
histograms, t-SNE, confusion matrix) and results.json; ``--save-embeddings PATH`` dumps the embeddings
(a folder with embeddings.npy, labels.npy, classes.json, or one .npz).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from clce_core.models import WeightsError
from training.checkpoint import CheckpointError
from training.datasets import DatasetError
from training.device import resolve_device
from training.embed import Encoder, load_class_set, load_encoder, save_embeddings
from training.evaluation import (
    CLASSIFIERS,
    ModelEvaluation,
    check_episodes,
    evaluate_encoder,
    evaluation_to_dict,
    mean_embedding,
)

log = logging.getLogger("clce.evaluate")


# ------------------------------------------------------------------------------------------ the CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.evaluate",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a best.pt / last.pt from python -m training.finetune")
    src.add_argument("--model", help="a timm model name: the frozen pretrained encoder (no head)")
    src.add_argument("--compare", nargs=2, metavar=("A.pt", "B.pt"), help="two checkpoints side by side")
    p.add_argument("--pretrained", help="with --model: packaged | hub | none | PATH (default: auto)")
    p.add_argument("--img-size", type=int, help="with --model: input size (a checkpoint carries its own)")
    p.add_argument("--names", nargs=2, metavar=("A", "B"), help="with --compare: names in tables and figures")
    p.add_argument("--dataset", help="dataset name; cifar-fs / fc100: --split picks the few-shot class list")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="default: test")
    p.add_argument(
        "--data-dir", help="without --dataset: a folder of class folders; with it: the dataset root"
    )
    p.add_argument("--download", action="store_true", help="download a missing dataset (needs a network)")
    p.add_argument("--ways", type=int, nargs="+", default=[5], help="N of N-way (default 5)")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="K of K-shot (default 1 5)")
    p.add_argument("--queries", type=int, default=15, help="query images per class (default 15)")
    p.add_argument("--episodes", type=int, default=3000, help="episodes per setting (default 3000)")
    p.add_argument("--seed", type=int, default=0, help="seeds the episodes and the report's sampling")
    p.add_argument("--classifier", default="prototype", choices=list(CLASSIFIERS))
    p.add_argument(
        "--base-data-dir",
        help="with --classifier simpleshot: the base classes (a folder of class folders) whose mean "
        "embedding centres the features (default: the train classes of --dataset)",
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--output", help="write the numbers to this JSON file")
    p.add_argument("--report", metavar="DIR", help="write report.md, figures and results.json here")
    p.add_argument("--report-classes", nargs="+", metavar="CLASS", help="classes for the pair histogram")
    p.add_argument(
        "--tsne-points", type=int, default=2000, help="t-SNE subsample size (default 2000; 0: no t-SNE)"
    )
    p.add_argument("--tsne-classes", type=int, default=20, help="classes shown in the t-SNE map (default 20)")
    p.add_argument("--save-embeddings", metavar="PATH", help="a folder (embeddings.npy, ...) or a .npz file")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.model is None and (args.pretrained is not None or args.img_size is not None):
        raise ValueError("--pretrained and --img-size apply to --model; a checkpoint carries its own")
    if args.names and not args.compare:
        raise ValueError("--names applies to --compare")
    lows = {"queries": 1, "episodes": 1, "batch_size": 1, "tsne_points": 0, "tsne_classes": 1}
    for flag, low in lows.items():
        if getattr(args, flag) < low:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least {low}, got {getattr(args, flag)}")
    for flag, low in (("ways", 2), ("shots", 1)):
        if min(getattr(args, flag)) < low:
            raise ValueError(f"--{flag} must be at least {low}, got {min(getattr(args, flag))}")
    if args.base_data_dir and args.classifier != "simpleshot":
        raise ValueError("--base-data-dir applies to --classifier simpleshot")
    if args.classifier == "simpleshot" and not (args.base_data_dir or args.dataset):
        raise ValueError(
            "--classifier simpleshot centres on the base classes' mean embedding: give --base-data-dir DIR "
            "(a folder of class folders) or --dataset NAME (its train classes)"
        )
    if args.compare and args.save_embeddings and args.save_embeddings.endswith(".npz"):
        raise ValueError("with --compare, --save-embeddings takes a folder (one subfolder per model)")


def _check_report_classes(wanted: list[str] | None, classes: list[str]) -> None:
    missing = [c for c in wanted or [] if c not in classes]
    if missing:
        raise ValueError(
            f"--report-classes: {', '.join(missing)} not among the {len(classes)} evaluated classes "
            f"(e.g. {', '.join(classes[:5])})"
        )


def _name_of(path: str) -> str:
    """``runs/glyphs-ce/best.pt`` -> ``glyphs-ce``; ``ce.pt`` -> ``ce``."""
    p = Path(path)
    return (p.parent.name if p.stem in ("best", "last") else "") or p.stem


def _load_encoders(args: argparse.Namespace, device: torch.device) -> list[tuple[str, Encoder]]:
    if args.model:
        pretrained = args.pretrained or "auto"
        return [(args.model, load_encoder(None, args.model, pretrained, args.img_size, device))]
    paths = args.compare or [args.checkpoint]
    names = list(args.names or [_name_of(p) for p in paths])
    if len(names) == 2 and names[0] == names[1]:
        names = [f"{names[0]} (A)", f"{names[1]} (B)"]
    return [(name, load_encoder(path, device=device)) for name, path in zip(names, paths, strict=True)]


def _print_results(ev: ModelEvaluation, classes: list[str], header: bool) -> None:
    if header:
        print(f"[{ev.name}] {ev.source}")
    for r in ev.fewshot:
        print(r)
    print(f"isotropy: {ev.isotropy:.4f}")
    cls = ev.classification
    if cls is None:
        return
    print(f"top-1: {cls.top1:.2f}  top-5: {cls.top5:.2f}  ({len(ev.labels)} images, {len(classes)} classes)")
    order = np.argsort(np.nan_to_num(cls.per_class, nan=np.inf), kind="stable")  # lowest first
    shown = order if len(classes) <= 30 else order[:10]
    more = "" if len(shown) == len(classes) else f", the lowest 10 of {len(classes)}"
    print(f"per-class accuracy (lowest first{more}):")
    width = max(len(classes[i]) for i in shown)
    for i in shown:
        print(f"  {classes[i]:<{width}}  {cls.per_class[i]:6.2f}  ({int(cls.confusion[i].sum())} images)")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        device = resolve_device(args.device)
        class_set = load_class_set(args.dataset, args.split, args.data_dir, args.download)
        classes = class_set.classes
        settings = [(w, k) for w in args.ways for k in args.shots]
        check_episodes(class_set.targets, classes, settings, args.queries)  # fail before embedding
        _check_report_classes(args.report_classes, classes)
        base_set = None
        if args.classifier == "simpleshot":
            base_set = load_class_set(
                None if args.base_data_dir else args.dataset, "train", args.base_data_dir or args.data_dir
            )
        encoders = _load_encoders(args, device)
        log.info("%s: %d classes, %d images", class_set.description, len(classes), len(class_set.targets))
        evaluations = []
        for name, enc in encoders:
            base_mean = mean_embedding(enc, base_set, device, args.batch_size) if base_set else None
            ev = evaluate_encoder(
                enc, class_set, settings, name=name, queries=args.queries, episodes=args.episodes,
                seed=args.seed, classifier=args.classifier, base_mean=base_mean, batch_size=args.batch_size,
                workers=args.workers, device=device, show_progress=sys.stderr.isatty(),
            )  # fmt: skip
            _print_results(ev, classes, header=len(encoders) > 1)
            evaluations.append(ev)
        for ev in evaluations if args.save_embeddings else []:
            path = Path(args.save_embeddings) / ev.name if len(evaluations) > 1 else args.save_embeddings
            save_embeddings(path, ev.embeddings, ev.labels, classes, class_set.paths())
        results = {
            "config": {k: v for k, v in vars(args).items() if k != "names"},
            "class_set": {
                "description": class_set.description,
                "num_classes": len(classes),
                "num_images": len(class_set.targets),
                "classes": classes,
            },
            "models": [evaluation_to_dict(ev, classes) for ev in evaluations],
        }
        if args.report:
            from training.report import write_report

            report = write_report(
                args.report, evaluations, classes, class_set.description, args.report_classes, args.seed,
                tsne_points=args.tsne_points, tsne_classes=args.tsne_classes, results=results,
            )  # fmt: skip
            print(f"report: {report}")
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    except (DatasetError, CheckpointError, WeightsError, ValueError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
