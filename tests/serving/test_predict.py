"""python -m serving.predict: timm's eval transform via clce_core; a broken file spoils nothing else.

The transform's parity with timm's (every crop mode and interpolation) is pinned in
tests/core/test_preprocessing.py; here the CLI's probabilities are checked against PyTorch on timm's
transform of the loaded image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serving import predict
from training.onnx_export import eval_transform


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth structure plus noise, so every interpolation filter matters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 100 * np.sin(x / 7.0), 128 + 100 * np.cos(y / 5.0), (x + y) % 256], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def test_uses_the_shared_transform() -> None:
    from clce_core import preprocessing

    assert (
        predict.EvalTransform is preprocessing.EvalTransform
        and predict.load_image is preprocessing.load_image
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    from clce_core.models import create_model
    from training.card_info import CardInfo
    from training.exporter import export_model

    torch.manual_seed(0)
    model = create_model("test_efficientnet", 3, "none", img_size=32).eval()
    with torch.no_grad():  # a head with clear preferences, so the ranking is stable
        model.head.weight.mul_(50)
    out = tmp_path_factory.mktemp("predict") / "model"
    export_model(model, CardInfo.from_model(model, ["cat", "dog", "fish"]), out)
    return out, model


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Two good photos, an RGBA and a grey image in a subfolder, a broken .jpg, and a text file."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    _photo(50, 40, 1).save(root / "a.jpg", quality=95)
    _photo(64, 64, 2).save(root / "b.png")
    Image.new("RGBA", (30, 20), (255, 0, 0, 128)).save(root / "sub" / "c.png")
    Image.new("L", (33, 33), 80).save(root / "sub" / "d.bmp")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / "notes.txt").write_text("not an image; skipped when searching folders")
    return root


@pytest.mark.slow
def test_folder_with_one_broken_file(model_dir, folder: Path, capsys) -> None:
    out, model = model_dir
    assert predict.main(["--model-dir", str(out), str(folder), "--top-k", "2"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        str(folder / name) for name in ("a.jpg", "b.png", "sub/c.png", "sub/d.bmp")
    ]
    assert all(len(line.split(": ", 1)[1].split(", ")) == 2 for line in lines)
    err = captured.err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {folder / 'broken.jpg'}: cannot read the image")

    # the probabilities are the PyTorch model's on timm's eval transform of the loaded image
    assert predict.main(["--model-dir", str(out), str(folder / "a.jpg"), "--json", "--top-k", "3"]) == 0
    row = json.loads(capsys.readouterr().out)
    from clce_core.preprocessing import load_image

    x = eval_transform(json.loads((out / "model.json").read_text()))(load_image(folder / "a.jpg"))
    with torch.no_grad():
        probs = torch.softmax(model(x[None])[1], 1)[0].numpy()
    labels = ["cat", "dog", "fish"]
    assert [t["label"] for t in row["top_k"]] == [labels[i] for i in np.argsort(-probs)]
    np.testing.assert_allclose([t["probability"] for t in row["top_k"]], np.sort(probs)[::-1], atol=1e-4)


@pytest.mark.slow
def test_json_lines_include_errors(model_dir, folder: Path, capsys) -> None:
    out, _ = model_dir
    code = predict.main(
        ["--model-dir", str(out), str(folder / "b.png"), str(folder / "broken.jpg"), "--json"]
    )
    assert code == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["file"] for r in rows} == {str(folder / "b.png"), str(folder / "broken.jpg")}
    good = next(r for r in rows if "top_k" in r)
    assert len(good["top_k"]) == 3 and abs(sum(t["probability"] for t in good["top_k"]) - 1) < 1e-5
    assert "error" in next(r for r in rows if r["file"].endswith("broken.jpg"))


@pytest.mark.slow
def test_bad_model_dir_exits_2(model_dir, folder: Path, tmp_path: Path, capsys) -> None:
    out, _ = model_dir
    assert predict.main(["--model-dir", str(tmp_path / "nope"), str(folder)]) == 2
    assert "not a model export" in capsys.readouterr().err
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in ("encoder.onnx", "head.onnx", "model.json"):
        (tampered / name).write_bytes((out / name).read_bytes())
    with open(tampered / "head.onnx", "ab") as f:
        f.write(b"\0")
    assert predict.main(["--model-dir", str(tampered), str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "sha256" in err and "\n" not in err
    assert predict.main(["--model-dir", str(out), str(tmp_path / "empty-missing")]) == 1  # a missing file
    assert "cannot read the image" in capsys.readouterr().err
