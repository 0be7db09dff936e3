"""serving.pixel_graph: the uint8 preprocessing graph in front of encoder.onnx gives the numpy path's values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from clce_core.export_folder import ENCODER_INPUT, read_card, sha256_file
from clce_core.preprocessing import EvalTransform
from serving.pixel_graph import PIXELS, pixel_graph, with_pixel_input
from serving.sessions import ModelRuntime
from tests.serving.conftest import make_export

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _crops(n: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)  # (N, H, W, 3)


def test_the_graph_is_torchvisions_normalize_bit_for_bit() -> None:
    transform = EvalTransform((3, 5, 7), mean=MEAN, std=STD)
    graph = pixel_graph(5, 7, MEAN, STD, opset=17, ir_version=8)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    crops = _crops(3, 5, 7)
    (out,) = session.run([ENCODER_INPUT], {PIXELS: crops})
    assert out.shape == (3, 3, 5, 7) and out.dtype == np.float32
    assert np.array_equal(out, transform.normalize(crops))  # the numpy path, pinned to timm


def test_runtime_takes_uint8_and_leaves_the_export_as_it_was(tmp_path: Path) -> None:
    folder = make_export(tmp_path / "export", input_size=(3, 24, 20))
    card = read_card(folder)
    before = {name: sha256_file(folder / name) for name in card.files}
    runtime = ModelRuntime(card)
    assert [(i.name, i.shape[1:], i.type) for i in runtime.encoder.get_inputs()] == [
        (PIXELS, [24, 20, 3], "tensor(uint8)")
    ]
    crops = _crops(4, 24, 20)
    embedding, logits = runtime.run(crops)
    plain = ort.InferenceSession(str(card.encoder_path), providers=["CPUExecutionProvider"])
    (expected,) = plain.run(["embedding"], {ENCODER_INPUT: card.preprocess.normalize(crops)})
    assert np.array_equal(embedding, expected) and logits.shape == (4, 3)
    assert {name: sha256_file(folder / name) for name in card.files} == before == card.files


def test_an_encoder_in_any_node_order_composes() -> None:
    """An --fp16 export lists its input Cast after the nodes that read it (onnxconverter-common);
    ONNX Runtime runs such a graph, and the composed one must run too, with the same outputs."""
    nodes = [
        helper.make_node(
            "ReduceMean", ["half"], ["embedding"], axes=[2, 3], keepdims=0
        ),  # reads a later node
        helper.make_node("Cast", [ENCODER_INPUT], ["half"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "unsorted",
        [helper.make_tensor_value_info(ENCODER_INPUT, TensorProto.FLOAT, ["N", 3, 5, 7])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 3])],
    )  # fmt: skip
    encoder = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    encoder.ir_version = 8
    crops = _crops(2, 5, 7)
    plain = ort.InferenceSession(encoder.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = plain.run(
        ["embedding"], {ENCODER_INPUT: EvalTransform((3, 5, 7), mean=MEAN, std=STD).normalize(crops)}
    )
    composed = ort.InferenceSession(
        with_pixel_input(encoder, 5, 7, MEAN, STD), providers=["CPUExecutionProvider"]
    )
    (out,) = composed.run(["embedding"], {PIXELS: crops})
    assert np.array_equal(out, expected)
    assert [n.op_type for n in encoder.graph.node] == ["ReduceMean", "Cast"]  # the input is not changed
