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
small matrix product).

:class:`Scheme` holds these choices; its defaults are the product's, the alternatives exist to be
measured against them (``benchmarks/int8_variants.py``). The calibration images and the accuracy
check are in :mod:`training.calibration`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clce_core.export_folder import ENCODER_INPUT

#: ``--calibration-method`` choices: min/max of every tensor over the images, or a histogram method
#: (which holds every calibrated activation of every image in memory: use fewer images at 224 px).
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: How many convolutions, counted from the input in graph order, stay float32 (with every node before them).
FLOAT_CONVS = 2
_MAX_CALIBRATION_BATCH = 16

log = logging.getLogger(__name__)


class QuantizationError(Exception):
    """ONNX Runtime's quantisation tool failed on this graph; one line."""


@dataclass(frozen=True)
class Scheme:
    """How :func:`quantize_encoder` quantises. The defaults are the product's (``--int8``).

    Attributes:
        activations: ``"uint8"`` (what the CPU provider fuses with int8 weights) or ``"int8"``
            (the tool's default).
        per_channel: int8 weights per output channel, else one scale per tensor.
        float_convs: convolutions, from the input, that stay float32 with every node before them.
        freeze_pads: run :func:`freeze_static_pads` first.
    """

    activations: str = "uint8"
    per_channel: bool = True
    float_convs: int = FLOAT_CONVS
    freeze_pads: bool = True

    def describe(self) -> dict[str, str]:
        """The scheme as the card's ``quantization`` records it."""
        return {
            "format": "QDQ",
            "weights": f"int8, symmetric, {'per output channel' if self.per_channel else 'per tensor'}",
            "activations": f"{self.activations}, asymmetric, per tensor",
            "float32": f"the head and the first {self.float_convs} convolutions",
            "tool": "onnxruntime.quantization.quantize_static",
        }


# --------------------------------------------------------------------------------------- calibration data


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


def prepare_float(
    source: str | os.PathLike[str], target: str | os.PathLike[str], freeze_pads: bool = True
) -> None:
    """Steps 1 and 2: the float32 encoder with frozen pads, shape-inferred and optimised, at ``target``.

    The same function as ``source`` (float32 throughout); what :func:`quantize_encoder` calibrates.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(source))
    if freeze_pads:
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
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    images: np.ndarray,
    method: str = "minmax",
    scheme: Scheme = Scheme(),  # noqa: B008 (frozen: never mutated)
) -> None:
    """Write an int8 (QDQ) copy of the float32 encoder at ``source`` to ``target`` (may be the same path).

    Args:
        source: the float32 ``encoder.onnx`` (``pixel_values`` (N, 3, H, W) -> ``embedding`` (N, D)).
        target: where the int8 encoder goes; its inputs and outputs stay float32.
        images: calibration images ``(N, 3, H, W)`` float32.
        method: one of :data:`CALIBRATION_METHODS`.
        scheme: what to quantise how (default: the product's).

    Raises:
        QuantizationError: an unknown method, no images, or the tool failed or quantised nothing.
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
            prepare_float(source, prepared, scheme.freeze_pads)
            nodes = onnx.load(str(prepared)).graph.node
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
                quantize_static(
                    str(prepared),
                    str(target),
                    _Batches(images, _equal_batch(len(images))),
                    quant_format=QuantFormat.QDQ,
                    per_channel=scheme.per_channel,
                    activation_type=QuantType.QUInt8 if scheme.activations == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[method],
                    nodes_to_exclude=_input_nodes(nodes, scheme.float_convs),
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                )
        except (OSError, MemoryError):
            raise
        except Exception as e:  # the tool raises bare ValueError / AssertionError / onnxruntime errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise QuantizationError(f"ONNX Runtime's quantisation tool failed: {first[:300]}") from None
    if not any(node.op_type == "QuantizeLinear" for node in onnx.load(str(target)).graph.node):
        raise QuantizationError(
            f"ONNX Runtime's quantisation tool found nothing to quantise past the first {scheme.float_convs} "
            "convolutions of this encoder; export it without --int8"
        )
