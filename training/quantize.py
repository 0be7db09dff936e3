"""Static int8 quantisation of an exported encoder with ONNX Runtime's quantisation tool.

:func:`quantize_encoder` turns the verified float32 ``encoder.onnx`` into an int8 one in three steps:

1. :func:`freeze_static_pads`: timm's ``tf_*`` models pad "same" at run time, so the exporter writes
   a chain of Shape / Gather / Ceil / ... nodes per stride-2 convolution that computes the pads from
   the input size. Only the batch axis is dynamic, so the pads are constants; they are evaluated
   once (at batch 1 and 2, which must agree) and written as initializers. Left in, the quantiser
   quantises that float arithmetic too and every padded convolution runs in float32 between a
   DequantizeLinear and a QuantizeLinear.
2. ``onnxruntime.quantization.quant_pre_process``: symbolic shape inference and ONNX Runtime's basic
   graph optimisations (constant folding; a Pad with constant pads folds into the next Conv).
3. ``onnxruntime.quantization.quantize_static``: QDQ format, int8 weights (symmetric, per output
   channel), uint8 activations (asymmetric, per tensor), ranges calibrated on N images
   (:data:`CALIBRATION_METHODS`). uint8 activations with int8 weights are what ONNX Runtime's CPU
   provider fuses into ``QLinearConv`` / ``QLinearAdd`` kernels (VNNI on x86); with int8
   activations (the tool's default) it left 18 of tf_efficientnet_lite0's 49 convolutions in
   float32 and ran slower than the float32 model.

The first :data:`FLOAT_CONVS` convolutions stay float32: they see the input, where int8 hurts most.
With ``mean = std = 0.5`` every normalised pixel lies half-way between two points of a uint8 grid
over [-1, 1], and a fine-tuned model amplifies that: on the quick-start checkpoint, quantising only
the stem gave a median embedding cosine of 0.89 with the float32 encoder, the whole encoder 0.87;
the whole encoder but the first two convolutions 0.977. At 224 px they are ~4 % of
tf_efficientnet_lite0's multiply-adds and cost no measurable speed. The head stays float32 (one
small matrix product). :func:`balanced_indices` picks the calibration
images; :func:`compare_top1` checks the int8 encoder against the float32 one on a labelled split.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clce_core.export_folder import EMBEDDING, ENCODER_INPUT, LOGITS

#: ``--calibration-method`` choices: min/max of every tensor over the images, or a histogram method
#: (which holds every calibrated activation of every image in memory: use fewer images at 224 px).
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_IMAGES = 300
#: How many convolutions, counted from the input in graph order, stay float32 (with every node before them).
FLOAT_CONVS = 2
#: What the card's ``quantization`` says about the scheme (fixed: the one the CPU provider fuses).
SCHEME = {
    "format": "QDQ",
    "weights": "int8, symmetric, per output channel",
    "activations": "uint8, asymmetric, per tensor",
    "float32": f"the head and the first {FLOAT_CONVS} convolutions",
    "tool": "onnxruntime.quantization.quantize_static",
}
_MAX_CALIBRATION_BATCH = 16

log = logging.getLogger(__name__)


class QuantizationError(Exception):
    """ONNX Runtime's quantisation tool failed on this graph; one line."""


@dataclass(frozen=True)
class Int8Plan:
    """Everything an int8 export needs besides the model.

    Attributes:
        images: calibration images ``(N, 3, H, W)`` float32, through the model's eval transform.
        validation: labelled batches ``((B, 3, H, W), (B,))`` on which the int8 encoder's top-1 is
            compared with the float32 encoder's.
        max_accuracy_drop: refuse the export when top-1 falls by more than this many points.
        method: one of :data:`CALIBRATION_METHODS`.
        seed: the seed that chose the calibration images (recorded).
        source: where the calibration images come from, e.g. ``"fashion-mnist train"``.
        validation_source: where the validation batches come from, e.g. ``"fashion-mnist val"``.
    """

    images: np.ndarray
    validation: Iterable[tuple[torch.Tensor, torch.Tensor]]
    max_accuracy_drop: float = 1.0
    method: str = "minmax"
    seed: int = 0
    source: str = ""
    validation_source: str = ""

    def calibration(self) -> dict[str, Any]:
        """The card's ``quantization.calibration``: the images, method and seed."""
        return {
            "images": len(self.images),
            "method": self.method,
            "seed": self.seed,
            "source": self.source,
            "class_balanced": True,
        }


# --------------------------------------------------------------------------------------- calibration set


def balanced_indices(targets: Iterable[int], n: int, seed: int) -> np.ndarray:
    """Sorted positions of ``n`` items, class-balanced: class counts differ by at most one (seeded).

    Each class's items are shuffled; the first of every class come before the second of any, and
    the last partial round goes to randomly chosen classes. A class with too few items gives all
    of them; fewer than ``n`` items in all gives every item.
    """
    targets_arr = np.asarray(list(targets), dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(targets_arr))
    rank = np.empty(len(targets_arr), dtype=np.int64)
    for c in np.unique(targets_arr):
        members = order[targets_arr[order] == c]
        rank[members] = np.arange(len(members))
    picked = np.lexsort((rng.permutation(len(targets_arr)), rank))[:n]  # by rank, ties at random
    return np.sort(picked)


def stack_images(dataset: Any, positions: np.ndarray) -> np.ndarray:
    """``dataset[i][0]`` for every position, stacked: ``(len(positions), 3, H, W)`` float32."""
    return np.stack([np.asarray(dataset[int(i)][0], dtype=np.float32) for i in positions])


def _equal_batch(n: int) -> int:
    """The largest batch size <= 16 that divides ``n``: the histogram calibrators need equal batches."""
    return max(b for b in range(1, _MAX_CALIBRATION_BATCH + 1) if n % b == 0)


class _Batches:
    """``onnxruntime.quantization.CalibrationDataReader`` over an ``(N, 3, H, W)`` array."""

    def __init__(self, images: np.ndarray, batch: int) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [images[i : i + batch] for i in range(0, len(images), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._batches, None)
        return None if x is None else {ENCODER_INPUT: np.ascontiguousarray(x, dtype=np.float32)}


# --------------------------------------------------------------------------------------- the graph


def freeze_static_pads(model: Any) -> int:
    """Replace every Pad's computed ``pads`` input with its value, and drop the nodes that computed it.

    The values are computed by ONNX Runtime at batch 1 and 2 (zeros of the model's fixed C, H, W);
    a pads input that differs between them depends on the batch and is left as it is.

    Args:
        model: an ``onnx.ModelProto`` whose first input has fixed dimensions after the batch axis;
            changed in place.

    Returns:
        How many Pad inputs were frozen.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = model.graph
    constant = {t.name for t in graph.initializer} | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output
    }
    computed = sorted(
        {
            n.input[1]
            for n in graph.node
            if n.op_type == "Pad" and len(n.input) > 1 and n.input[1] not in constant
        }
    )
    if not computed:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(
        helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None) for name in computed
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    first = graph.input[0]
    dims = [d.dim_value for d in first.type.tensor_type.shape.dim[1:]]
    at = [session.run(computed, {first.name: np.zeros((b, *dims), np.float32)}) for b in (1, 2)]
    frozen = {}
    for name, one, two in zip(computed, *at, strict=True):
        if np.array_equal(one, two):
            frozen[name] = f"{name}_frozen"
            graph.initializer.append(numpy_helper.from_array(np.asarray(one), frozen[name]))
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in frozen:
                node.input[i] = frozen[name]
    _drop_dead_nodes(graph)
    return len(frozen)


def _drop_dead_nodes(graph: Any) -> None:
    """Remove nodes none of whose outputs is used, repeatedly, then initializers nothing reads."""
    while True:
        used = {o.name for o in graph.output} | {name for node in graph.node for name in node.input}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def prepare_float(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Steps 1 and 2: the float32 encoder with frozen pads, shape-inferred and optimised, at ``target``.

    The same function as ``source`` (float32 throughout); what :func:`quantize_encoder` calibrates.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(source))
    log.info("froze %d computed Pad inputs", freeze_static_pads(model))
    quant_pre_process(model, str(target))


def _input_nodes(nodes: Any, convs: int) -> list[str]:
    """Names of the nodes, in graph (topological) order, up to and including the ``convs``-th Conv.

    All of them, activations between the convolutions included: a Conv whose input arrives through
    a DequantizeLinear is quantised by ONNX Runtime at load time, excluded or not. A graph with
    fewer convolutions (a ViT has one, the patch embedding) keeps only those before the last float.
    """
    convs = min(convs, sum(node.op_type == "Conv" for node in nodes))
    names, seen = [], 0
    for node in nodes:
        if seen == convs:
            break
        names.append(node.name)
        seen += node.op_type == "Conv"
    return names


def quantize_encoder(
    source: str | os.PathLike[str], target: str | os.PathLike[str], images: np.ndarray, method: str = "minmax"
) -> None:
    """Write an int8 (QDQ) copy of the float32 encoder at ``source`` to ``target`` (may be the same path).

    Args:
        source: the float32 ``encoder.onnx`` (``pixel_values`` (N, 3, H, W) -> ``embedding`` (N, D)).
        target: where the int8 encoder goes; its inputs and outputs stay float32.
        images: calibration images ``(N, 3, H, W)`` float32.
        method: one of :data:`CALIBRATION_METHODS`.

    Raises:
        QuantizationError: an unknown method, no images, or the tool failed.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise QuantizationError(f"unknown calibration method {method!r}; choose one of {', '.join(methods)}")
    if len(images) == 0:
        raise QuantizationError("no calibration images; pass --calibration-images N with N >= 1")
    with tempfile.TemporaryDirectory(prefix="clce-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            prepare_float(source, prepared)
            nodes = onnx.load(str(prepared)).graph.node
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
                quantize_static(
                    str(prepared),
                    str(target),
                    _Batches(images, _equal_batch(len(images))),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[method],
                    nodes_to_exclude=_input_nodes(nodes, FLOAT_CONVS),
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                )
        except (OSError, MemoryError):
            raise
        except Exception as e:  # the tool raises bare ValueError / AssertionError / onnxruntime errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise QuantizationError(f"ONNX Runtime's quantisation tool failed: {first[:300]}") from None
    if not any(node.op_type == "QuantizeLinear" for node in onnx.load(str(target)).graph.node):
        raise QuantizationError(
            f"ONNX Runtime's quantisation tool found nothing to quantise past the first {FLOAT_CONVS} "
            "convolutions of this encoder; export it without --int8"
        )


# --------------------------------------------------------------------------------------- the check


def compare_top1(
    fp32_encoder: Any, int8_encoder: Any, head: Any, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, Any]:
    """Top-1 of the float32 and the int8 encoder, each followed by the same head, on labelled batches.

    Args:
        fp32_encoder / int8_encoder / head: ONNX Runtime sessions.
        loader: batches of ``(images (B, 3, H, W), labels (B,))``.

    Returns:
        ``images``, ``fp32_top1``, ``int8_top1`` (percent), ``drop`` (fp32 minus int8, points) and
        ``disagreements`` (images whose two predictions differ).
    """
    correct = {"fp32": 0, "int8": 0}
    differ = total = 0
    for images, labels in loader:
        x = images.float().numpy()  # (B, 3, H, W)
        predictions = {}
        for name, encoder in (("fp32", fp32_encoder), ("int8", int8_encoder)):
            embedding = encoder.run([EMBEDDING], {ENCODER_INPUT: x})[0]  # (B, D)
            predictions[name] = head.run([LOGITS], {EMBEDDING: embedding})[0].argmax(1)  # (B,)
            correct[name] += int((predictions[name] == labels.numpy()).sum())
        differ += int((predictions["fp32"] != predictions["int8"]).sum())
        total += len(labels)
    pct = 100.0 / max(total, 1)
    fp32_top1, int8_top1 = correct["fp32"] * pct, correct["int8"] * pct
    return {
        "images": total,
        "fp32_top1": fp32_top1,
        "int8_top1": int8_top1,
        "drop": round(fp32_top1 - int8_top1, 6),  # (no 0.20000000000000284 in the card)
        "disagreements": differ,
    }
