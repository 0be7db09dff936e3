"""The float work of preprocessing, as ONNX: uint8 pixels in front of ``encoder.onnx``, composed at load time.

The server hands ONNX Runtime the ``(N, H, W, 3)`` uint8 pixels of the eval transform's crop
(:meth:`clce_core.preprocessing.EvalTransform.decode`), a quarter of the bytes of float32, and a
small graph does the rest before the encoder's first layer::

    pixels (N, H, W, 3) uint8 -> Transpose (N, 3, H, W) -> Cast float32 -> / 255 -> - mean -> / std

the operations and order of torchvision's ``ToTensor`` + ``Normalize`` (and of
:meth:`~clce_core.preprocessing.EvalTransform.normalize`: the same float32 values, bit for bit), on
whatever execution provider runs the encoder (on CUDA the arithmetic runs on the GPU). The
transpose comes first, on the uint8 pixels: arithmetic broadcast over the last axis and a float
transpose after it cost ONNX Runtime's CPU kernels three times as much (67 against 23 ms of CPU
for 32 images of 224 px; numpy does the same work in 7 ms, docs/serving.md). :func:`with_pixel_input` joins
it to the encoder with ``onnx.compose.merge_models``; the export folder is not touched: its files
keep their sha256, which :func:`clce_core.export_folder.read_card` checks before this runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from clce_core.export_folder import ENCODER_INPUT

#: The composed encoder's input: ``(N, H, W, 3)`` uint8 RGB.
PIXELS = "pixels"
_PREFIX = "clce_pixels/"


def pixel_graph(
    height: int, width: int, mean: Sequence[float], std: Sequence[float], opset: int, ir_version: int
) -> onnx.ModelProto:
    """The preprocessing graph alone: ``pixels`` uint8 ``(N, H, W, 3)`` -> ``pixel_values`` float32 ``(N, 3, H, W)``."""
    constants = [
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1), "mean"),
        numpy_helper.from_array(np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1), "std"),
    ]
    nodes = [
        helper.make_node("Transpose", [PIXELS], ["channels_first"], perm=[0, 3, 1, 2]),  # (N, 3, H, W)
        helper.make_node("Cast", ["channels_first"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["as_float", "scale"], ["unit"]),
        helper.make_node("Sub", ["unit", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], [ENCODER_INPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "clce_pixels",
        [helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, ["N", height, width, 3])],
        [helper.make_tensor_value_info(ENCODER_INPUT, TensorProto.FLOAT, ["N", 3, height, width])],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def with_pixel_input(
    encoder: onnx.ModelProto, height: int, width: int, mean: Sequence[float], std: Sequence[float]
) -> bytes:
    """The encoder with :func:`pixel_graph` in front: input ``pixels`` uint8, outputs unchanged.

    Args:
        encoder: ``encoder.onnx`` as loaded (its input is ``pixel_values``, checked by the caller).
        height, width: The network input's size (the card's ``input_size``).
        mean, std: The card's normalisation.

    Returns:
        The serialised composed model, for ``onnxruntime.InferenceSession``.

    Raises:
        ValueError: the encoder imports no ai.onnx opset, or a node's input is produced nowhere;
            onnx's own errors where it cannot compose.
    """
    opset = next((o.version for o in encoder.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ValueError("the encoder imports no ai.onnx opset")
    encoder = topologically_sorted(encoder)
    pre = compose.add_prefix(
        pixel_graph(height, width, mean, std, opset, encoder.ir_version),
        _PREFIX,
        rename_inputs=False,
        rename_outputs=False,
    )
    merged = compose.merge_models(pre, encoder, io_map=[(ENCODER_INPUT, ENCODER_INPUT)])
    return merged.SerializeToString()


def topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose top-level nodes come after the nodes that produce their inputs.

    ONNX Runtime accepts a graph in any node order, but ``onnx.compose`` checks the order: an
    ``--fp16`` export (onnxconverter-common's float16 conversion appends the input and output
    ``Cast`` nodes at the end of the graph) would not compose otherwise. Stable: a sorted graph keeps
    its order.

    Raises:
        ValueError: some node's input is neither a graph input, an initializer nor another node's output.
    """
    graph = model.graph
    ready = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        left = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                left.append(node)
        if len(left) == len(pending):
            missing = sorted({n for node in left for n in node.input if n not in ready})
            raise ValueError(
                f"the encoder's nodes read tensors that nothing produces: {', '.join(missing[:5])}"
            )
        pending = left
    result = onnx.ModelProto()
    result.CopyFrom(model)
    del result.graph.node[:]
    result.graph.node.extend(ordered)
    return result
