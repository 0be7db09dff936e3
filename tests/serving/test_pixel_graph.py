"""serving.pixel_graph: the uint8 preprocessing graph in front of encoder.onnx gives the numpy path's values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from clce_core.export_folder import ENCODER_INPUT, read_card, sha256_file
from clce_core.preprocessing import EvalTransform
from serving.pixel_graph import PIXELS, pixel_graph
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
