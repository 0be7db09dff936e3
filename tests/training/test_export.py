"""python -m training.export: a tiny conv net and a tiny ViT to ONNX, verified; every refusal is one line."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from training import export, exporter, finetune
from training.checkpoint import model_from_checkpoint
from training.onnx_export import TOLERANCES, Tolerance, ort_session
from training.transforms import eval_transform

CONTRACT_KEYS = [  # CONTRACTS "Export folder", in its order
    "schema_version", "model_name", "labels", "embedding_dim", "input_size", "interpolation", "crop_pct",
    "mean", "std", "loss", "metrics", "opset", "versions", "files", "created",
]  # fmt: skip
EXTRA_KEYS = ["crop_mode", "precision", "quantization", "open_set", "parity"]
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200), "grey": (128, 128, 128)}


def _image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in {"train": 4, "val": 2, "test": 2}.items():
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (40, 40, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """best.pt of a one-step run of a tiny EfficientNet and a tiny ViT at 32 px (and ``data``: the images)."""
    root = tmp_path_factory.mktemp("export")
    data = _image_folder(root / "colours")
    out = {"data": data}
    for model in ("test_efficientnet", "test_vit"):
        run = root / model
        args = [
            "--dataset", "imagefolder", "--data-dir", str(data), "--model", model, "--pretrained", "none",
            "--img-size", "32", "--batch-size", "8", "--per-class", "2", "--epochs", "1",
            "--max-steps-per-epoch", "1", "--workers", "0", "--output", str(run),
        ]  # fmt: skip
        assert finetune.main(args) == 0
        out[model] = run / "best.pt"
    return out


def _photos() -> list[Image.Image]:
    """7 photographs (scikit-image) and variants, RGB."""
    from skimage import data

    photos = [data.coffee(), data.chelsea(), data.astronaut(), data.rocket()]
    photos += [photos[0][:, ::-1], photos[1][::2, ::3], np.stack([data.camera()] * 3, -1)]
    return [Image.fromarray(np.ascontiguousarray(p)) for p in photos]


def _real_images(data_config: dict) -> np.ndarray:
    """:func:`_photos` through the model's timm eval transform: (7, 3, H, W)."""
    tf = eval_transform(data_config)
    return np.stack([tf(photo).numpy() for photo in _photos()])


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.slow
@pytest.mark.parametrize("model", ["test_efficientnet", "test_vit"])
def test_export_folder_and_parity(model: str, checkpoints: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "models" / model
    assert export.main(["--checkpoint", str(checkpoints[model]), "--output", str(out)]) == 0
    assert "parity" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "encoder.onnx",
        "head.onnx",
        "model.json",
        "prototypes.npy",
    ]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"
    card = json.loads((out / "model.json").read_text())
    assert [k for k in card if k in CONTRACT_KEYS] == CONTRACT_KEYS  # in the contract's order
    assert set(card) == set(CONTRACT_KEYS + EXTRA_KEYS)
    torch_model, state = model_from_checkpoint(checkpoints[model])
    assert card["schema_version"] == 1 and card["model_name"] == model and card["opset"] == 17
    assert card["labels"] == state["classes"] and card["embedding_dim"] == torch_model.embedding_dim
    assert card["input_size"] == [3, 32, 32] and card["precision"] == "fp32" and card["quantization"] is None
    assert card["loss"] == {"name": "clce", "lam": state["config"]["lam"], "tau": state["config"]["tau"]}
    assert card["metrics"]["val_top1"] == state["metrics"]["val_top1"] and "test_top1" in card["metrics"]
    assert set(card["versions"]) == {"torch", "timm", "onnx"} and card["created"].endswith("Z")
    for name in ("encoder.onnx", "head.onnx", "prototypes.npy"):
        assert card["files"][name] == hashlib.sha256((out / name).read_bytes()).hexdigest()

    # graph signatures: float32, only the batch axis dynamic
    for name, inp, outp, in_shape, out_shape in (
        ("encoder.onnx", "pixel_values", "embedding", [3, 32, 32], [torch_model.embedding_dim]),
        ("head.onnx", "embedding", "logits", [torch_model.embedding_dim], [len(state["classes"])]),
    ):
        graph = onnx.load(str(out / name)).graph
        for value, want_name, want_shape in (
            (graph.input[0], inp, in_shape),
            (graph.output[0], outp, out_shape),
        ):
            dims = value.type.tensor_type.shape.dim
            assert value.name == want_name and value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == want_shape

    # ONNX Runtime == PyTorch on photographs, at batch 1 and 7
    images = _real_images(card)
    with torch.no_grad():
        ref_emb, ref_logits = (t.numpy() for t in torch_model(torch.from_numpy(images)))
    encoder, head = ort_session(out / "encoder.onnx"), ort_session(out / "head.onnx")
    limit = TOLERANCES["fp32"].logits_rel * max(1.0, np.abs(ref_logits).max())
    for batch in (1, 7):
        emb = np.concatenate(
            [encoder.run(None, {"pixel_values": images[i : i + batch]})[0] for i in range(0, 7, batch)]
        )
        logits = head.run(None, {"embedding": emb})[0]
        assert emb.shape == ref_emb.shape and logits.shape == ref_logits.shape
        assert np.abs(logits - ref_logits).max() <= limit
        cos = (emb * ref_emb).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref_emb, axis=1)
        assert cos.min() >= TOLERANCES["fp32"].embedding_cos
    assert card["parity"]["batch_sizes"] == [1, 7] and card["parity"]["top1_mismatches"] == 0
    assert card["parity"]["logits_max_abs_diff"] <= card["parity"]["logits_limit"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["test_efficientnet", "test_vit"])
def test_open_set_prototypes_and_calibration(
    model: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    """prototypes.npy is PyTorch's class means on the training split; the threshold keeps 95% of val."""
    out = tmp_path / "open-set"
    assert export.main(["--checkpoint", str(checkpoints[model]), "--output", str(out)]) == 0
    card = json.loads((out / "model.json").read_text())
    torch_model, state = model_from_checkpoint(checkpoints[model])
    tf = eval_transform(card)

    def unit_embeddings(split: str, name: str) -> torch.Tensor:
        paths = sorted((checkpoints["data"] / split / name).glob("*.png"))
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
        with torch.no_grad():
            return torch.nn.functional.normalize(torch_model(x)[0].double(), dim=1)

    expected = torch.stack(
        [torch.nn.functional.normalize(unit_embeddings("train", c).mean(0), dim=0) for c in state["classes"]]
    )
    protos = np.load(out / "prototypes.npy")
    assert protos.shape == (len(state["classes"]), torch_model.embedding_dim) and protos.dtype == np.float32
    assert (torch.from_numpy(protos).double() * expected).sum(1).min() >= 0.9999  # cosine, row by row

    val = torch.cat([unit_embeddings("val", c) for c in state["classes"]])  # 8 images
    similarity = (val @ expected.T).max(1).values.numpy()
    open_set = card["open_set"]
    assert open_set["prototype_images"] == 16 and open_set["calibration_images"] == 8
    assert open_set["keep"] == 0.95 and open_set["val_rejected"] == 0  # ceil(0.95 * 8) = 8: keep all
    assert open_set["threshold"] == pytest.approx(similarity.min(), abs=1e-4)
    assert open_set["check_images"] == 7 and 0 <= open_set["check_images_rejected"] <= 7

    if model != "test_efficientnet":
        return
    half = tmp_path / "half"
    args = ["--checkpoint", str(checkpoints[model]), "--output", str(half), "--open-set-keep", "0.5"]
    assert export.main(args) == 0
    open_set = json.loads((half / "model.json").read_text())["open_set"]
    assert open_set["val_rejected"] == 4 and open_set["threshold"] == pytest.approx(
        np.sort(similarity)[4], abs=1e-4
    )


@pytest.mark.slow
def test_open_set_can_be_left_out_and_needs_the_data(
    checkpoints: dict[str, Path], tmp_path: Path, capsys
) -> None:
    ckpt = ["--checkpoint", str(checkpoints["test_efficientnet"])]
    assert export.main([*ckpt, "--output", str(tmp_path / "plain"), "--no-open-set"]) == 0
    assert "open set: no prototypes" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == [
        "encoder.onnx",
        "head.onnx",
        "model.json",
    ]
    assert json.loads((tmp_path / "plain" / "model.json").read_text())["open_set"] is None

    assert export.main([*ckpt, "--output", str(tmp_path / "a"), "--data-dir", str(tmp_path / "gone")]) == 2
    assert "does not exist" in _one_error_line(capsys)
    assert export.main([*ckpt, "--output", str(tmp_path / "b"), "--open-set-keep", "0"]) == 2
    assert "--open-set-keep is a fraction in (0, 1]" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["test_efficientnet", "test_vit"])
def test_fp16_keeps_float32_io_and_top1(model: str, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "fp16"
    assert export.main(["--checkpoint", str(checkpoints[model]), "--output", str(out), "--fp16"]) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["precision"] == "fp16"
    graph = onnx.load(str(out / "encoder.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in graph.initializer if t.dims and np.prod(t.dims) > 16]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    torch_model, _ = model_from_checkpoint(checkpoints[model])
    images = _real_images(card)
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(images))[1].numpy()
    emb = ort_session(out / "encoder.onnx").run(None, {"pixel_values": images})[0]
    logits = ort_session(out / "head.onnx").run(None, {"embedding": emb})[0]
    assert (logits.argmax(1) == ref.argmax(1)).all()
    assert np.abs(logits - ref).max() <= TOLERANCES["fp16"].logits_rel * max(1.0, np.abs(ref).max())
    # the server's runtime (its uint8 pixel graph composed in front of the fp16 encoder) runs it too
    from clce_core.export_folder import read_card
    from serving.sessions import ModelRuntime

    served = read_card(out)
    crops = np.stack([served.preprocess.to_uint8(photo) for photo in _photos()])  # (7, H, W, 3) uint8
    plain = ort_session(out / "encoder.onnx").run(None, {"pixel_values": served.preprocess.normalize(crops)})[0]
    np.testing.assert_array_equal(ModelRuntime(served).run(crops)[0], plain)


@pytest.mark.slow
def test_accuracy_check_runs_the_test_split(checkpoints: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "acc"
    assert (
        export.main(
            ["--checkpoint", str(checkpoints["test_efficientnet"]), "--output", str(out), "--check-accuracy"]
        )
        == 0
    )
    accuracy = json.loads((out / "model.json").read_text())["accuracy"]
    assert accuracy["images"] == 8 and accuracy["onnx_top1"] == accuracy["torch_top1"]
    assert "ONNX top-1" in capsys.readouterr().out


@pytest.mark.slow
def test_parity_failure_exits_1_and_writes_nothing(
    checkpoints: dict[str, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(TOLERANCES, "fp32", Tolerance(logits_rel=-1.0, embedding_cos=1.1, top1_points=0))
    out = tmp_path / "models" / "bad"
    assert export.main(["--checkpoint", str(checkpoints["test_efficientnet"]), "--output", str(out)]) == 1
    err = _one_error_line(capsys)
    assert "logits max |diff|" in err and "embedding cosine" in err and "nothing was written" in err
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_bad_checkpoints_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip file")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    for path, words in (
        (corrupt, "corrupt"),
        (foreign, "not a CLCE"),
        (tmp_path / "missing.pt", "does not exist"),
    ):
        assert export.main(["--checkpoint", str(path), "--output", str(tmp_path / "out")]) == 2
        assert words in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_output_folder_rules(checkpoints: dict[str, Path], tmp_path: Path, capsys) -> None:
    ckpt = ["--checkpoint", str(checkpoints["test_efficientnet"])]
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    for output, extra, words in (
        (a_file, [], "is a file"),
        (a_file / "model", [], "is a file"),
        (notes, ["--force"], "not a model export"),
    ):
        assert export.main([*ckpt, "--output", str(output), *extra]) == 2
        assert words in _one_error_line(capsys)
    assert (notes / "keep.txt").read_text() == "mine" and a_file.read_text() == "x"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert export.main([*ckpt, "--output", str(empty)]) == 0
    first = json.loads((empty / "model.json").read_text())["created"]
    assert export.main([*ckpt, "--output", str(empty)]) == 2
    assert "--force" in _one_error_line(capsys)
    assert export.main([*ckpt, "--output", str(empty), "--force"]) == 0
    assert json.loads((empty / "model.json").read_text())["created"] >= first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "empty", "notes"]


@pytest.mark.slow
def test_unwritable_output_exits_2(
    checkpoints: dict[str, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = ["--checkpoint", str(checkpoints["test_efficientnet"])]
    if os.geteuid() != 0:  # a read-only folder (root writes anyway)
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert export.main([*ckpt, "--output", str(locked / "model")]) == 2
        assert "Permission denied" in _one_error_line(capsys)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(exporter.tempfile, "mkdtemp", denied)
    assert export.main([*ckpt, "--output", str(tmp_path / "model")]) == 2
    assert "cannot write to" in (err := _one_error_line(capsys)) and "Permission denied" in err


@pytest.mark.slow
def test_unsupported_opsets_exit_2(checkpoints: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert (
        export.main(
            [
                "--checkpoint",
                str(checkpoints["test_efficientnet"]),
                "--output",
                str(tmp_path / "a"),
                "--opset",
                "99",
            ]
        )
        == 2
    )
    assert "--opset 99 is not supported" in _one_error_line(capsys)
    # attention has no ONNX form before opset 14: the exporter's reason, in one line
    assert (
        export.main(
            ["--checkpoint", str(checkpoints["test_vit"]), "--output", str(tmp_path / "b"), "--opset", "13"]
        )
        == 2
    )
    assert "opset 13" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_model_without_checkpoint(tmp_path: Path, capsys) -> None:
    """The benchmark's path: any ClassifierModel plus CardInfo.from_model, through export_model."""
    from benchmarks import inference_speed  # the repository root is on sys.path (tests/ is a package)

    out = tmp_path / "speed.json"
    small = ["--model", "test_efficientnet", "--pretrained", "none", "--img-size", "32", "--batch", "4"]
    inference_speed.main([*small, "--int8", "--repeats", "2", "--repeats-32", "1", "--warmup", "1", "--pause-ms", "0", "--output", str(out)])  # fmt: skip
    results = json.loads(out.read_text())
    assert results["parity"]["top1_mismatches"] == 0 and results["input_size"] == [3, 32, 32]
    assert {"PyTorch eager", "ORT CPU, defaults", "ORT CPU, tuned"} <= set(results["configs"])
    assert {"ORT CPU int8, tuned", "ORT CPU fp32, pads frozen"} <= set(results["configs"])
    assert all(r["latency_ms"] > 0 and r["images_per_s"] > 0 for r in results["configs"].values())
    assert results["quantization"]["calibration"]["images"] == 7  # the check images: no labels, no check
    assert results["quantization"]["validation"]["images"] == 0
    out_text = capsys.readouterr().out
    assert "| ORT CPU, tuned |" in out_text and "| ORT CPU int8, tuned |" in out_text
    assert "int8 vs fp32 (both tuned)" in out_text and "accuracy not checked" in out_text
