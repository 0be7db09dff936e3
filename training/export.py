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
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clce_core.export_folder import (
    CARD_FILE,
    EMBEDDING,
    ENCODER_FILE,
    ENCODER_INPUT,
    HEAD_FILE,
    LOGITS,
    ExportFolderError,
    ModelCard,
    write_card,
    write_prototypes,
)
from clce_core.models import ClassifierModel
from clce_core.open_set import DEFAULT_KEEP
from training.calibration import (
    DEFAULT_CALIBRATION_IMAGES,
    Int8Plan,
    balanced_indices,
    compare_top1,
    stack_images,
)
from training.onnx_export import (
    TOLERANCES,
    ConversionError,
    check_images,
    convert_to_fp16,
    describe_parity,
    evaluate_accuracy,
    export_onnx,
    measure_parity,
    ort_session,
    parity_failures,
    supported_opsets,
)
from training.open_set import OpenSetData, build_open_set, describe_open_set, open_set_data
from training.quantize import CALIBRATION_METHODS, QuantizationError, Scheme, quantize_encoder

if TYPE_CHECKING:
    from training.datasets import DatasetSplits

DEFAULT_OPSET = 17
log = logging.getLogger(__name__)


class ExportError(Exception):
    """The export cannot start or be written (output path, opset, labels); one line, exit code 2."""


class ParityError(Exception):
    """The exported files do not reproduce PyTorch within the tolerance; one line with the numbers."""


@dataclass
class CardInfo:
    """What ``model.json`` says beyond the network itself.

    Attributes:
        model_name: the timm model name.
        labels: class names in logit order (C of them).
        data_config: eval preprocessing: input_size [3, H, W], interpolation, crop_pct, crop_mode, mean, std.
        loss: ``{"name", "lam", "tau"}`` of the training run (None for a head that was never trained).
        metrics: training metrics (val_top1, test_top1, ... in percent).
    """

    model_name: str
    labels: list[str]
    data_config: dict[str, Any]
    loss: dict[str, Any] = field(default_factory=lambda: {"name": None, "lam": None, "tau": None})
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], checkpoint: str | os.PathLike[str]) -> CardInfo:
        """Card info of a training checkpoint; its test metrics come from ``metrics.jsonl`` beside it.

        The last line of ``metrics.jsonl`` holds the test top-1 of ``best.pt``; it is taken when its
        ``best_epoch`` is this checkpoint's epoch.
        """
        cfg = state["config"]
        metrics = {k: v for k, v in dict(state.get("metrics") or {}).items() if k != "epoch"}
        metrics["epoch"] = int(state["epoch"])
        if "best_val_top1" in state:
            metrics["best_val_top1"] = state["best_val_top1"]
        with contextlib.suppress(OSError, ValueError):
            for line in Path(checkpoint).with_name("metrics.jsonl").read_text().splitlines():
                row = json.loads(line) if line.strip() else {}
                if "test_top1" in row and row.get("best_epoch") == state["epoch"]:
                    metrics.update(test_top1=row["test_top1"], test_top5=row.get("test_top5"))
        return cls(
            model_name=state.get("model_name") or cfg["model"],
            labels=[str(c) for c in state["classes"]],
            data_config=dict(state["data_config"]),
            loss={"name": cfg.get("loss"), "lam": cfg.get("lam"), "tau": cfg.get("tau")},
            metrics=metrics,
        )

    @classmethod
    def from_model(cls, model: ClassifierModel, labels: list[str] | None = None) -> CardInfo:
        """Card info of a model without a training run (e.g. packaged weights and a fresh head)."""
        labels = labels or [f"class_{i}" for i in range(model.num_classes)]
        return cls(model.model_name, list(labels), model.data_config)


@dataclass
class ExportResult:
    """What :func:`export_model` wrote: the folder and its model card (``model.json`` as a dict)."""

    output: Path
    card: dict[str, Any]


# --------------------------------------------------------------------------------------- the folder


def check_output(output: Path, force: bool) -> None:
    """Refuse a file, or a folder holding anything but an export; an export is replaced only with ``force``.

    Raises:
        ExportError: saying what to do instead.
    """
    if output.is_symlink():
        raise ExportError(f"--output {output} is a symbolic link; pass the folder it points to")
    if output.exists() and not output.is_dir():
        raise ExportError(f"--output {output} is a file, not a folder; choose a new folder path")
    if output.is_dir() and any(output.iterdir()):
        if not (output / CARD_FILE).is_file():
            raise ExportError(
                f"--output {output} is a non-empty folder without {CARD_FILE}, not a model export; "
                "choose a new folder (it is never overwritten, even with --force)"
            )
        if not force:
            raise ExportError(f"{output} already holds an exported model; pass --force to replace it")
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"cannot create {output}: {parent} is a file")
            break


@contextlib.contextmanager
def _staging_folder(output: Path) -> Iterator[Path]:
    """A fresh hidden folder beside ``output``; removed unless it was renamed into place."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    except OSError as e:
        raise ExportError(f"cannot write to {output}: {e.strerror or e}") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the export is an ordinary folder
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, output: Path) -> None:
    """Rename the staged folder to ``output``; an old export there is renamed aside first, then removed."""
    old = None
    if output.is_dir():
        if any(output.iterdir()):
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            os.rename(output, old)
        else:
            output.rmdir()
    try:
        os.rename(tmp, output)
    except OSError:
        if old is not None:
            os.rename(old, output)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_card(info: CardInfo, embedding_dim: int, opset: int, precision: str) -> ModelCard:
    """The model card of an export, before :func:`~clce_core.export_folder.write_card` adds the files' sha256.

    Raises:
        ExportFolderError: labels or preprocessing the card cannot hold (e.g. duplicate labels).
    """
    import onnx
    import timm

    return ModelCard.from_data_config(
        info.data_config,
        model_name=info.model_name,
        labels=list(info.labels),
        embedding_dim=int(embedding_dim),
        loss=dict(info.loss),
        metrics=dict(info.metrics),
        opset=int(opset),
        precision=precision,
        versions={"torch": str(torch.__version__), "timm": timm.__version__, "onnx": onnx.__version__},
    )


# --------------------------------------------------------------------------------------- the export


def export_model(
    model: ClassifierModel,
    info: CardInfo,
    output: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    force: bool = False,
    images: np.ndarray | None = None,
    accuracy_loader: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    open_set: OpenSetData | None = None,
    int8: Int8Plan | None = None,
) -> ExportResult:
    """Export ``model`` to ``output``/{encoder.onnx, head.onnx, model.json}, verified, then renamed into place.

    Args:
        model: the model to export (exported on the CPU, float32, eval mode).
        info: labels, preprocessing, loss and metrics for the card.
        output: the export folder: new, empty, or holding an export (replaced only with ``force``).
        opset: ONNX opset for the legacy exporter.
        fp16: float16 compute inside both graphs, float32 inputs and outputs.
        images: normalised check images ``(N, 3, H, W)``; default :func:`training.onnx_export.check_images`.
        accuracy_loader: labelled batches (eval transform) on which ONNX top-1 is compared with PyTorch's
            once; the numbers go into the card as ``accuracy``.
        open_set: training and validation batches for ``prototypes.npy`` and the calibrated threshold
            (:mod:`training.open_set`), made with the exported encoder (the int8 one with ``int8``);
            None: an export without them.
        int8: quantise the encoder to int8 with these calibration images, after the float32 files
            pass; refused when top-1 on ``int8.validation`` drops more than ``int8.max_accuracy_drop``.

    Raises:
        ExportError: bad output path, opset or labels, the exporter or quantiser failed, or the
            open-set data cannot make prototypes (nothing is written).
        ParityError: ONNX Runtime disagrees with PyTorch beyond the tolerance, or the int8 encoder
            loses too much top-1 (nothing is written).
    """
    output = Path(output)
    lo, hi = supported_opsets()
    if not lo <= opset <= hi:
        raise ExportError(
            f"--opset {opset} is not supported by torch {torch.__version__}'s legacy ONNX exporter "
            f"(opsets {lo}-{hi}); use --opset {DEFAULT_OPSET}"
        )
    if fp16 and int8 is not None:
        raise ExportError("--fp16 and --int8 exclude each other; choose one")
    check_output(output, force)
    model = model.float().cpu().eval()
    if len(info.labels) != model.num_classes:
        raise ExportError(f"{len(info.labels)} labels for a head with {model.num_classes} classes")
    c, h, w = (int(v) for v in info.data_config["input_size"])
    precision = "fp16" if fp16 else "int8" if int8 is not None else "fp32"
    try:
        card = build_card(info, model.embedding_dim, opset, precision)
    except ExportFolderError as e:
        raise ExportError(f"the model card cannot be written: {e}") from None
    tol = TOLERANCES["fp16" if fp16 else "fp32"]
    images = check_images(info.data_config) if images is None else images
    with _staging_folder(output) as tmp:
        try:
            images_in, embedding_in = torch.randn(2, c, h, w), torch.randn(2, model.embedding_dim)
            with torch.no_grad():
                export_onnx(model.encoder, images_in, tmp / ENCODER_FILE, ENCODER_INPUT, EMBEDDING, opset)
                export_onnx(model.head, embedding_in, tmp / HEAD_FILE, EMBEDDING, LOGITS, opset)
            if fp16:
                convert_to_fp16(tmp / ENCODER_FILE)
                convert_to_fp16(tmp / HEAD_FILE)
        except ConversionError as e:
            raise ExportError(str(e)) from None
        except OSError as e:
            raise ExportError(f"cannot write to {output}: {e.strerror or e}") from None
        try:
            encoder, head = ort_session(tmp / ENCODER_FILE), ort_session(tmp / HEAD_FILE)
        except Exception as e:  # onnxruntime's Fail / InvalidGraph / NotImplemented
            first = str(e).strip().splitlines()[0][:300]
            raise ExportError(f"ONNX Runtime cannot load the opset {opset} export: {first}") from None
        parity = measure_parity(model, encoder, head, images, tol)
        failures = parity_failures(parity, tol)
        if failures:
            raise ParityError(f"the {precision} export does not match PyTorch: {'; '.join(failures)}")
        if int8 is not None:
            encoder, parity, quantization = _quantize(tmp / ENCODER_FILE, model, encoder, head, images, int8)
            tol = replace(TOLERANCES["int8"], top1_points=int8.max_accuracy_drop)
            card = replace(card, quantization=quantization)
        extras: dict[str, Any] = {"parity": parity}
        if accuracy_loader is not None:
            accuracy = evaluate_accuracy(model, encoder, head, accuracy_loader)
            extras["accuracy"] = accuracy
            diff = accuracy["torch_top1"] - accuracy["onnx_top1"]
            if not (diff if int8 is not None else abs(diff)) <= tol.top1_points:  # int8: only a drop counts
                raise ParityError(
                    f"ONNX top-1 {accuracy['onnx_top1']:.2f}% vs PyTorch {accuracy['torch_top1']:.2f}% on "
                    f"{accuracy['images']} images differs by more than {tol.top1_points:g} points"
                )
        extra_files = []
        if open_set is not None:
            try:
                prototypes, summary = build_open_set(encoder, head, open_set, len(info.labels), images)
            except ValueError as e:
                raise ExportError(
                    f"cannot make the open-set prototypes: {e}; or pass --no-open-set"
                ) from None
            extra_files.append(write_prototypes(tmp, prototypes))
            card = replace(card, open_set=summary)
        try:
            card = write_card(tmp, replace(card, extras=extras), extra_files)
        except OSError as e:
            raise ExportError(f"cannot write to {output}: {e.strerror or e}") from None
        try:
            _move_into_place(tmp, output)
        except OSError as e:
            raise ExportError(f"cannot move the export into {output}: {e.strerror or e}") from None
    return ExportResult(output, card.raw)


def _quantize(
    path: Path, model: ClassifierModel, fp32_encoder: Any, head: Any, images: np.ndarray, int8: Int8Plan
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Quantise the verified encoder at ``path`` in place and judge it.

    Returns:
        The int8 encoder's session, its parity with PyTorch and the card's ``quantization``.

    Raises:
        ExportError: the quantiser failed.
        ParityError: the int8 files miss the int8 tolerance, or top-1 drops too far.
    """
    try:
        quantize_encoder(path, path, int8.images, int8.method)
    except QuantizationError as e:
        raise ExportError(str(e)) from None
    encoder = ort_session(path)
    tol = TOLERANCES["int8"]
    parity = measure_parity(model, encoder, head, images, tol)
    failures = parity_failures(parity, tol)
    if failures:
        raise ParityError(f"the int8 export does not match PyTorch: {'; '.join(failures)}")
    check = compare_top1(fp32_encoder, encoder, head, int8.validation)
    check.update(split=int8.validation_source, max_drop=int8.max_accuracy_drop)
    if not check["drop"] <= int8.max_accuracy_drop:
        raise ParityError(
            f"int8 top-1 {check['int8_top1']:.2f}% vs fp32 {check['fp32_top1']:.2f}% on {check['images']} "
            f"{int8.validation_source} images: a drop of {check['drop']:.2f} points exceeds "
            f"--max-accuracy-drop {int8.max_accuracy_drop:g}"
        )
    return encoder, parity, {**Scheme().describe(), "calibration": int8.calibration(), "validation": check}


# --------------------------------------------------------------------------------------- the CLI


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
