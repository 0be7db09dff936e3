"""Export a checkpoint to an ONNX model folder, verified against PyTorch.

    python -m training.export --checkpoint runs/flowers102-clce/best.pt --output models/flowers102-clce
    python -m training.export --checkpoint runs/X/best.pt --output models/X-fp16 --fp16 --force
    python -m training.export --checkpoint runs/X/best.pt --output models/X --check-accuracy
    python -m training.export --checkpoint runs/X/best.pt --output models/X --no-open-set
    python -m training.export --checkpoint runs/X/best.pt --output models/X-int8 --int8

Writes ``OUTPUT/encoder.onnx`` (pixel_values (N, 3, H, W) -> embedding (N, D), un-normalised),
``OUTPUT/head.onnx`` (embedding -> logits (N, C)), ``OUTPUT/prototypes.npy`` (the training-class
prototypes for open-set /classify, (C, D); not with --no-open-set) and ``OUTPUT/model.json`` (the
model card, written by ``clce_core.export_folder``; see docs/export.md). Before anything lands in
OUTPUT, ONNX Runtime (CPU) runs 7 check images (3 random, 4 structured) at batch 1 and 7 and must
match PyTorch: logits within 1e-4 x max(1, max|logit|) and embedding cosine >= 0.9999 (fp32), or
5e-2 x max(1, max|logit|), cosine >= 0.999 and the same top-1 (--fp16). --check-accuracy (or
--dataset/--data-dir) also runs the ONNX model once over the run's test split and compares its top-1
with PyTorch's and the checkpoint's recorded number. The prototypes come from the run's training
split (eval transform, the exported encoder); a rejection threshold is calibrated on its validation
split: the highest cosine that keeps --open-set-keep (95%) of the validation images. Both need the
run's data (--dataset/--data-dir to point elsewhere); --no-open-set exports without them.

--int8 quantises the verified float32 encoder statically (training/quantize.py: QDQ, int8 weights
per channel, uint8 activations) on --calibration-images class-balanced images of the run's training
split, checks it against PyTorch with the int8 tolerances (training/onnx_export.py) and refuses the
export when its top-1 on the run's validation split falls more than --max-accuracy-drop points
below the float32 export's. The head stays float32. See docs/export.md "int8".

Exit codes: 0 exported; 1 the export did not match PyTorch or lost too much accuracy (nothing
written); 2 bad arguments, checkpoint, data or output folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from clce_core.export_folder import ENCODER_FILE
from clce_core.open_set import DEFAULT_KEEP
from training.calibration import DEFAULT_CALIBRATION_IMAGES, Int8Plan, balanced_indices, stack_images
from training.card_info import CardInfo
from training.exporter import DEFAULT_OPSET, ExportError, ParityError, export_model
from training.onnx_export import describe_parity
from training.open_set import describe_open_set, open_set_data
from training.quantize import CALIBRATION_METHODS

if TYPE_CHECKING:
    from training.datasets import DatasetSplits

log = logging.getLogger(__name__)


def run_datasets(state: dict[str, Any], dataset: str | None, data_dir: str | None) -> DatasetSplits:
    """The run's (or the given) dataset, every split under the eval transform, split as the run split it.

    The training split keeps the run's ``train_per_class`` when it is the run's dataset.

    Raises:
        training.datasets.DatasetError: the dataset cannot be built.
        ExportError: its classes are not the checkpoint's.
    """
    from training.datasets import build_datasets
    from training.transforms import eval_transform

    cfg = state["config"]
    name = dataset or cfg["dataset"]
    own = name == cfg["dataset"]
    root = data_dir if data_dir is not None else (cfg.get("data_dir") if own else None)
    eval_tf = eval_transform(state["data_config"])
    seed, val_fraction = int(cfg.get("seed", 0)), float(cfg.get("val_fraction", 0.1))
    per_class = cfg.get("train_per_class") if own else None
    data = build_datasets(name, root, False, eval_tf, eval_tf, per_class, seed, val_fraction)
    if list(data.classes) != list(state["classes"]):
        raise ExportError(
            f"{name} has {len(data.classes)} classes ({', '.join(data.classes[:3])}, ...) but the checkpoint "
            f"was trained on {len(state['classes'])} ({', '.join(state['classes'][:3])}, ...); "
            "pass the run's own --dataset/--data-dir"
        )
    return data


def accuracy_loader(data: DatasetSplits, split: str, workers: int) -> tuple[Any, str]:
    """Batches of one split of :func:`run_datasets`' dataset, and a description.

    Raises:
        ExportError: the dataset has no such split.
    """
    from torch.utils.data import DataLoader

    subset = data.test if split == "test" else data.val
    if subset is None:
        raise ExportError(f"{data.name} has no {split} split; use --split val")
    return DataLoader(subset, batch_size=64, num_workers=workers), f"{data.name} {split}"


def int8_plan(data: DatasetSplits, config: dict[str, Any], args: argparse.Namespace) -> Int8Plan:
    """Calibration images from the run's training split and its validation split, as ``--int8`` uses them.

    Args:
        data: :func:`run_datasets`' dataset (eval transform on every split).
        config: the run's config; the validation split is capped at its ``val_per_class`` as in
            training (:func:`training.open_set.open_set_data`).
        args: ``calibration_images``, ``calibration_seed``, ``calibration_method``,
            ``max_accuracy_drop`` and ``workers``.
    """
    positions = balanced_indices(data.train.targets, args.calibration_images, args.calibration_seed)
    if len(positions) < args.calibration_images:
        log.warning(
            "calibrating on all %d images of the training split (asked for %d)",
            len(positions),
            args.calibration_images,
        )
    return Int8Plan(
        images=stack_images(data.train, positions),
        validation=open_set_data(data, config, workers=args.workers).val,
        max_accuracy_drop=args.max_accuracy_drop,
        method=args.calibration_method,
        seed=args.calibration_seed,
        source=f"{data.name} train",
        validation_source=f"{data.name} val",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.export",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a training run")
    parser.add_argument("--output", required=True, help="the export folder, e.g. models/NAME")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s)")
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="compute in float16 inside the graphs (inputs/outputs stay float32)",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="quantise the encoder to int8 (static, calibrated on the run's training split; head stays fp32)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        help=f"--int8: class-balanced training images to calibrate on (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    parser.add_argument(
        "--calibration-method", choices=CALIBRATION_METHODS, help="--int8: activation ranges (default minmax)"
    )
    parser.add_argument("--calibration-seed", type=int, help="--int8: seed choosing the images (default 0)")
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        help="--int8: refuse if validation top-1 falls more than this many points below fp32 (default 1.0)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing export in --output")
    parser.add_argument(
        "--check-accuracy",
        action="store_true",
        help="evaluate the ONNX model once on the run's test split and compare with PyTorch",
    )
    parser.add_argument(
        "--dataset", help="dataset for the accuracy check and the open-set prototypes (default: the run's)"
    )
    parser.add_argument("--data-dir", help="its location (default: the run's); implies --check-accuracy")
    parser.add_argument(
        "--split", choices=("test", "val"), default="test", help="split for the accuracy check"
    )
    parser.add_argument("--workers", type=int, default=0, help="data-loading workers for the accuracy check")
    parser.add_argument(
        "--no-open-set",
        action="store_true",
        help="export without prototypes.npy and a calibrated threshold (needs no data); /classify then "
        "reports similarity null and refuses a threshold",
    )
    parser.add_argument(
        "--open-set-keep",
        type=float,
        default=DEFAULT_KEEP,
        metavar="FRACTION",
        help="the calibrated threshold keeps this fraction of the validation images (default %(default)s)",
    )
    return parser


INT8_DEFAULTS = {
    "calibration_images": DEFAULT_CALIBRATION_IMAGES,
    "calibration_method": "minmax",
    "calibration_seed": 0,
    "max_accuracy_drop": 1.0,
}


def _int8_arguments(args: argparse.Namespace) -> str | None:
    """Fill the --int8 options' defaults; the reason they cannot be used, or None."""
    given = [name for name in INT8_DEFAULTS if getattr(args, name) is not None]
    if given and not args.int8:
        return f"--{given[0].replace('_', '-')} needs --int8"
    if args.int8 and args.fp16:
        return "--fp16 and --int8 exclude each other; choose one"
    for name, default in INT8_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.calibration_images < 1:
        return f"--calibration-images must be at least 1, got {args.calibration_images}"
    if not args.max_accuracy_drop >= 0:
        return f"--max-accuracy-drop must be a number of points >= 0, got {args.max_accuracy_drop}"
    return None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    if not 0.0 < args.open_set_keep <= 1.0:
        print(f"error: --open-set-keep is a fraction in (0, 1], got {args.open_set_keep}", file=sys.stderr)
        return 2
    problem = _int8_arguments(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from training.checkpoint import CheckpointError, model_from_checkpoint
    from training.datasets import DatasetError

    try:
        try:
            model, state = model_from_checkpoint(args.checkpoint)
            info = CardInfo.from_checkpoint(state, args.checkpoint)
        except (KeyError, TypeError, ValueError) as e:  # a CLCE checkpoint with a config this code cannot use
            raise CheckpointError(
                f"checkpoint {args.checkpoint} does not describe a model ({e!s:.200})"
            ) from None
        loader, described, open_set, plan = None, "", None, None
        check_accuracy = args.check_accuracy or args.dataset or args.data_dir
        if check_accuracy or args.int8 or not args.no_open_set:
            try:
                data = run_datasets(state, args.dataset, args.data_dir)
            except DatasetError as e:
                hint = (
                    ""
                    if check_accuracy or args.int8
                    else "; or pass --no-open-set to export without open-set prototypes"
                )
                raise DatasetError(f"{e}{hint}") from None
        if check_accuracy:
            loader, described = accuracy_loader(data, args.split, args.workers)
        if not args.no_open_set:
            open_set = open_set_data(data, state["config"], args.open_set_keep, args.workers)
        if args.int8:
            plan = int8_plan(data, state["config"], args)
        result = export_model(
            model,
            info,
            args.output,
            opset=args.opset,
            fp16=args.fp16,
            force=args.force,
            accuracy_loader=loader,
            open_set=open_set,
            int8=plan,
        )
    except (CheckpointError, ExportError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ParityError as e:
        print(f"error: {e}; nothing was written to {args.output}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    card = result.card
    print(
        f"exported {args.checkpoint} -> {result.output}/ ({card['precision']}, opset {card['opset']}, "
        f"{card['model_name']}, D={card['embedding_dim']}, {len(card['labels'])} classes)"
    )
    parity = card["parity"]
    batches = " and ".join(map(str, parity["batch_sizes"]))
    print(
        f"parity (ONNX Runtime CPU vs PyTorch, {parity['images']} check images at batch {batches}): ", end=""
    )
    print(describe_parity(parity))
    if card.get("quantization"):
        cal, check = card["quantization"]["calibration"], card["quantization"]["validation"]
        print(
            f"int8 (calibrated on {cal['images']} {cal['source']} images, {cal['method']}, seed {cal['seed']}): "
            f"top-1 on {check['images']} {check['split']} images {check['int8_top1']:.2f}% vs fp32 "
            f"{check['fp32_top1']:.2f}% (drop {check['drop']:.2f} points, limit {check['max_drop']:g}); "
            f"{check['disagreements']} predictions differ"
        )
    if "accuracy" in card:
        acc, recorded = card["accuracy"], card["metrics"].get(f"{args.split}_top1")
        note = f", recorded in training {recorded:.2f}%" if isinstance(recorded, int | float) else ""
        print(
            f"accuracy ({described}, {acc['images']} images): ONNX top-1 {acc['onnx_top1']:.2f}%, "
            f"PyTorch {acc['torch_top1']:.2f}%{note}; {acc['disagreements']} predictions differ"
        )
    else:
        print("accuracy: not checked; add --check-accuracy to run the ONNX model over the run's test split")
    if card.get("open_set"):
        print(f"open set: {describe_open_set(card['open_set'])}")
    else:
        print("open set: no prototypes (--no-open-set); /classify reports similarity null")
    print(f"model id (sha256 of encoder.onnx): {card['files'][ENCODER_FILE]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
