"""Export a model to an ONNX model folder, verified against PyTorch before it lands (:func:`export_model`).

The folder is staged beside ``output`` and renamed into place only after ONNX Runtime reproduces
PyTorch on the check images (and, when asked, the int8 encoder keeps its top-1): a failed export
leaves nothing behind and an existing export untouched. The command line is :mod:`training.export`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
    write_card,
    write_prototypes,
)
from clce_core.models import ClassifierModel
from training.calibration import Int8Plan, compare_top1
from training.card_info import CardInfo, build_card
from training.onnx_export import (
    TOLERANCES,
    ConversionError,
    check_images,
    convert_to_fp16,
    evaluate_accuracy,
    export_onnx,
    measure_parity,
    ort_session,
    parity_failures,
    supported_opsets,
)
from training.open_set import OpenSetData, build_open_set
from training.quantize import QuantizationError, Scheme, quantize_encoder

DEFAULT_OPSET = 17


class ExportError(Exception):
    """The export cannot start or be written (output path, opset, labels); one line, exit code 2."""


class ParityError(Exception):
    """The exported files do not reproduce PyTorch within the tolerance; one line with the numbers."""


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
