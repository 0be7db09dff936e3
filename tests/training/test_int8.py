"""python -m training.export --int8: a tiny fine-tuned model quantised, judged, and served.

The int8 folder must be an ordinary export: ``python -m serving.predict`` (a subprocess) and the app
(``/classify``, ``/embed``, ``/fewshot``) answer what ONNX Runtime computes from the int8 files, and
that stays within the int8 tolerance of PyTorch.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from clce_core.export_folder import read_card
from clce_core.preprocessing import load_image
from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import files, running
from training import export, exporter, finetune
from training.calibration import balanced_indices
from training.checkpoint import model_from_checkpoint
from training.onnx_export import TOLERANCES, export_onnx, ort_session
from training.quantize import FLOAT_CONVS, freeze_static_pads, quantize_encoder

from .test_export import _image_folder, _one_error_line

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-step fine-tuning run of test_efficientnet on colour images (16 train, 8 val), exported --int8."""
    root = tmp_path_factory.mktemp("int8")
    data = _image_folder(root / "colours")
    args = [
        "--dataset", "imagefolder", "--data-dir", str(data), "--model", "test_efficientnet", "--pretrained",
        "none", "--img-size", "32", "--batch-size", "8", "--per-class", "2", "--epochs", "1",
        "--max-steps-per-epoch", "2", "--workers", "0", "--output", str(root / "run"),
    ]  # fmt: skip
    assert finetune.main(args) == 0
    checkpoint = root / "run" / "best.pt"
    out = root / "models" / "tiny-int8"
    assert export.main(["--checkpoint", str(checkpoint), "--output", str(out), "--int8"]) == 0
    return {"data": data, "checkpoint": checkpoint, "model_dir": out}


def _op_counts(path: Path, optimised: bool = False) -> Counter[str]:
    """Node types of an ONNX file, or of the graph ONNX Runtime's CPU provider runs (all optimisations)."""
    if not optimised:
        return Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path.with_suffix(".optimised.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    counts = _op_counts(path.with_suffix(".optimised.onnx"))
    path.with_suffix(".optimised.onnx").unlink()
    return counts


def test_card_records_precision_calibration_and_the_drop(run: dict[str, Path], capsys) -> None:
    card = read_card(run["model_dir"])  # the sha256 of every file verified
    raw = card.raw
    assert card.precision == "int8" and list(raw).index("quantization") == list(raw).index("precision") + 1
    assert card.quantization["format"] == "QDQ" and "per output channel" in card.quantization["weights"]
    cal = card.quantization["calibration"]
    assert cal["images"] == 16 and cal["method"] == "minmax" and cal["seed"] == 0  # 300 asked, 16 exist
    assert cal["source"] == "imagefolder train" and cal["class_balanced"]
    check = card.quantization["validation"]
    assert check["images"] == 8 and check["split"] == "imagefolder val" and check["max_drop"] == 1.0
    assert check["drop"] == pytest.approx(check["fp32_top1"] - check["int8_top1"]) and check["drop"] <= 1.0
    parity = raw["parity"]
    assert parity["embedding_cosine_bound"] == TOLERANCES["int8"].embedding_cos
    assert parity["embedding_min_cosine"] >= TOLERANCES["int8"].embedding_cos


def test_the_encoder_is_int8_and_runs_fused(run: dict[str, Path], tmp_path: Path) -> None:
    encoder, head = run["model_dir"] / "encoder.onnx", run["model_dir"] / "head.onnx"
    graph = onnx.load(str(encoder)).graph
    for value in (graph.input[0], graph.output[0]):  # the contract's float32 edges
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in graph.initializer if len(t.dims) == 4]
    assert sum(t.data_type == onnx.TensorProto.INT8 for t in weights) == len(weights) - FLOAT_CONVS
    ops = _op_counts(encoder)
    assert ops["QuantizeLinear"] and ops["DequantizeLinear"]
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(_op_counts(head))  # the head stays float32
    # what the CPU provider runs: every convolution but the first FLOAT_CONVS as QLinearConv
    (tmp_path / "encoder.onnx").write_bytes(encoder.read_bytes())
    fused = _op_counts(tmp_path / "encoder.onnx", optimised=True)
    assert fused["QLinearConv"] == ops["Conv"] - FLOAT_CONVS
    assert (
        fused["Conv"] + fused["FusedConv"] == FLOAT_CONVS
    )  # float32 kernels (FusedConv: with its activation)


def test_int8_round_trips_through_predict_and_the_server(run: dict[str, Path], tmp_path: Path) -> None:
    model_dir = run["model_dir"]
    card = read_card(model_dir)
    paths = sorted((run["data"] / "val").rglob("*.png"))
    support = sorted((run["data"] / "train").rglob("[01].png"))  # 2 per class
    x = np.stack([card.preprocess(load_image(p)) for p in [*paths, *support]])  # (N, 3, H, W)
    embedding = ort_session(card.encoder_path).run(None, {"pixel_values": x})[0]  # the int8 files' own answer
    logits = ort_session(card.head_path).run(None, {"embedding": embedding})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    n = len(paths)

    torch_model, _ = model_from_checkpoint(run["checkpoint"])
    with torch.no_grad():
        ref = torch_model.encoder(torch.from_numpy(x[:n])).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert (unit[:n] * ref).sum(1).min() >= TOLERANCES["int8"].embedding_cos  # int8 stays near PyTorch

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "serving.predict", "--model-dir", str(model_dir), *map(str, paths), "--json", "--top-k", "4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    predicted = [json.loads(line) for line in done.stdout.splitlines()]
    by_label = [{t["label"]: t["probability"] for t in r["top_k"]} for r in predicted]
    np.testing.assert_allclose([[p[c] for c in card.labels] for p in by_label], probs[:n], atol=1e-5)

    def upload(field: str, items: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
        return files(field, *[(f"{p.parent.name}-{p.name}", p.read_bytes()) for p in items])

    async def ask() -> list[Any]:
        settings = Settings(model_dir=model_dir, db_path=tmp_path / "s.db", intra_op_threads=1)
        async with running(create_app(settings)) as client:
            return [
                await client.post("/classify", params={"top_k": 4}, files=upload("images", paths)),
                await client.post("/embed", files=upload("images", paths)),
                await client.post(
                    "/fewshot",
                    files=[*upload("support", support), *upload("queries", paths)],
                    data={"support_labels": [p.parent.name for p in support]},
                ),
            ]

    classify, embed, fewshot = (r.json() for r in asyncio.run(ask()))
    assert classify["model"] == embed["model"] == fewshot["model"] == card.sha256
    served = [{t["label"]: t["probability"] for t in r["top_k"]} for r in classify["results"]]
    np.testing.assert_allclose([[p[c] for c in card.labels] for p in served], probs[:n], atol=1e-5)
    np.testing.assert_allclose(embed["embeddings"], unit[:n], atol=1e-5)
    labels = [p.parent.name for p in support]
    protos = np.stack([unit[n:][[lab == c for lab in labels]].mean(0) for c in fewshot["classes"]])
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    scores = [[r["scores"][c] for c in fewshot["classes"]] for r in fewshot["results"]]
    np.testing.assert_allclose(scores, unit[:n] @ protos.T, atol=1e-5)


def test_a_drop_beyond_the_limit_exits_1_and_writes_nothing(
    run: dict[str, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured = exporter.compare_top1

    def worse(*args: Any) -> dict[str, Any]:  # the real comparison, then 3 points lost
        check = measured(*args)
        return {**check, "int8_top1": check["fp32_top1"] - 3.0, "drop": 3.0}

    monkeypatch.setattr(exporter, "compare_top1", worse)
    out = tmp_path / "models" / "refused"
    args = [
        "--checkpoint",
        str(run["checkpoint"]),
        "--output",
        str(out),
        "--int8",
        "--max-accuracy-drop",
        "2.5",
    ]
    assert export.main(args) == 1
    err = _one_error_line(capsys)
    assert "a drop of 3.00 points exceeds --max-accuracy-drop 2.5" in err and "nothing was written" in err
    assert not out.exists() and list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--calibration-images", "8"], "--calibration-images needs --int8"),
        (["--int8", "--fp16"], "exclude each other"),
        (["--int8", "--calibration-images", "0"], "at least 1"),
        (["--int8", "--max-accuracy-drop", "-1"], ">= 0"),
    ],
)
def test_bad_int8_arguments_exit_2(
    run: dict[str, Path], tmp_path: Path, capsys, extra: list[str], words: str
) -> None:
    out = tmp_path / "out"
    assert export.main(["--checkpoint", str(run["checkpoint"]), "--output", str(out), *extra]) == 2
    assert words in _one_error_line(capsys)
    assert not out.exists()


def test_balanced_indices_are_balanced_seeded_and_bounded() -> None:
    targets = np.repeat([0, 1, 2, 3], [50, 7, 30, 3])  # 90 items, unbalanced classes
    picked = balanced_indices(targets, 22, seed=0)
    assert len(picked) == 22 and len(set(picked)) == 22 and (np.diff(picked) > 0).all()
    counts = np.bincount(targets[picked], minlength=4)
    assert counts[3] == 3 and counts[:3].max() - counts[:3].min() <= 1  # class 3 gives all it has
    assert np.array_equal(picked, balanced_indices(targets, 22, seed=0))
    assert not np.array_equal(picked, balanced_indices(targets, 22, seed=1))
    assert np.array_equal(balanced_indices(targets, 500, seed=0), np.arange(90))


def test_freeze_static_pads_turns_same_padding_into_constants(tmp_path: Path) -> None:
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        Conv2dSame(3, 4, 3, stride=2), torch.nn.ReLU(), Conv2dSame(4, 4, 5, stride=2)
    ).eval()
    path = tmp_path / "same.onnx"
    export_onnx(module, torch.randn(2, 3, 23, 30), path, "pixel_values", "embedding", 17)
    model = onnx.load(str(path))
    before = Counter(node.op_type for node in model.graph.node)
    assert before["Pad"] == 2 and before["Shape"] >= 1  # the exporter computes the pads at run time
    assert freeze_static_pads(model) == 2
    after = Counter(node.op_type for node in model.graph.node)
    assert after["Pad"] == 2 and not after["Shape"] and sum(after.values()) < sum(before.values())
    frozen = {t.name for t in model.graph.initializer}
    assert all(node.input[1] in frozen for node in model.graph.node if node.op_type == "Pad")
    onnx.checker.check_model(model)
    x = np.random.default_rng(0).standard_normal((3, 3, 23, 30), dtype=np.float32)
    for batch in (1, 3):
        with torch.no_grad():
            want = module(torch.from_numpy(x[:batch])).numpy()
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"pixel_values": x[:batch]}
        )[0]
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_takes_any_number_of_images(method: str, tmp_path: Path, capsys) -> None:
    """10 images do not split into batches of 16: the histogram calibrators need equal batches."""
    from clce_core.models import create_model

    model = create_model("test_efficientnet", 4, "none", img_size=32).eval()
    path = tmp_path / "encoder.onnx"
    export_onnx(model.encoder, torch.randn(2, 3, 32, 32), path, "pixel_values", "embedding", 17)
    images = np.random.default_rng(0).standard_normal((10, 3, 32, 32), dtype=np.float32)
    quantize_encoder(path, tmp_path / "int8.onnx", images, method)
    assert capsys.readouterr().out == ""  # the tool's progress prints stay out of the CLI's output
    out = ort_session(tmp_path / "int8.onnx").run(None, {"pixel_values": images[:3]})[0]
    assert out.shape == (3, model.embedding_dim) and np.isfinite(out).all()


def test_a_vit_is_quantised_past_its_patch_embedding(tmp_path: Path) -> None:
    """A ViT has one convolution: it stays float32, the attention and MLP matrix products do not."""
    from clce_core.models import create_model

    model = create_model("test_vit", 4, "none", img_size=32).eval()
    path = tmp_path / "encoder.onnx"
    export_onnx(model.encoder, torch.randn(2, 3, 32, 32), path, "pixel_values", "embedding", 17)
    images = np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32)
    quantize_encoder(path, tmp_path / "int8.onnx", images)
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    produced_by = {out: node.op_type for node in graph.node for out in node.output}
    matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    assert matmuls and all(produced_by.get(node.input[1]) == "DequantizeLinear" for node in matmuls)
    (conv,) = [node for node in graph.node if node.op_type == "Conv"]
    assert conv.input[1] not in produced_by  # a float32 initializer, not a DequantizeLinear output
