"""End to end: fine-tune a tiny model on real image files -> ``python -m training.export`` -> the HTTP app.

The server's ``/classify``, ``/embed`` and ``/fewshot`` answers on the image files must be PyTorch's
on the same files (``model_from_checkpoint`` + timm's eval transform): the same top-1, probabilities
within 1e-4, embedding cosine >= 0.9999, few-shot cosine scores within 1e-4, and ``/classify``'s
open-set ``similarity`` PyTorch's best cosine to the training split's class prototypes within 1e-4. Nothing in between is
a stand-in: a real checkpoint, the exporter as a subprocess, the app with its lifespan running.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clce_core.export_folder import PREPROCESS_KEYS, read_card
from clce_core.preprocessing import load_image
from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import files, running
from training import finetune
from training.checkpoint import model_from_checkpoint

REPO = Path(__file__).resolve().parents[2]
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 50), "blue": (40, 50, 200), "yellow": (210, 200, 40)}
SIZES = [(40, 40), (52, 38), (36, 50)]  # width, height: the eval transform resizes and crops
TIE = 1e-4  # a top-1 flip between two classes closer than this in PyTorch is a tie, not a difference

pytestmark = pytest.mark.slow


def _write_images(root: Path) -> dict[str, list[Path]]:
    """``root/{train,val,test}/COLOUR/i.{png,jpg}``: noisy colour fields, PNG and JPEG, three shapes."""
    rng = np.random.default_rng(0)
    written: dict[str, list[Path]] = {}
    for split, n in {"train": 4, "val": 2, "test": 2}.items():
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = SIZES[(i + len(name)) % len(SIZES)]
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
                path = folder / (f"{i}.jpg" if i % 2 else f"{i}.png")
                Image.fromarray(pixels).save(path, quality=92)
                written.setdefault(split, []).append(path)
    return written


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A one-step fine-tuning run, its export (subprocess) and the image files."""
    root = tmp_path_factory.mktemp("e2e")
    images = _write_images(root / "colours")
    run = root / "run"
    args = [
        "--dataset", "imagefolder", "--data-dir", str(root / "colours"), "--model", "test_efficientnet",
        "--pretrained", "none", "--img-size", "32", "--batch-size", "8", "--per-class", "2", "--epochs", "1",
        "--max-steps-per-epoch", "2", "--workers", "0", "--output", str(run),
    ]  # fmt: skip
    assert finetune.main(args) == 0
    out = root / "models" / "tiny"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "training.export", "--checkpoint", str(run / "best.pt"), "--output", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return {"checkpoint": run / "best.pt", "model_dir": out, "images": images}


def _torch_reference(checkpoint: Path, paths: list[Path]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """PyTorch's un-normalised embeddings ``(N, D)`` and softmax ``(N, C)`` on timm's eval transform."""
    from timm.data import create_transform

    model, state = model_from_checkpoint(checkpoint)
    dc = state["data_config"]
    cfg = {k: dc[k] for k in PREPROCESS_KEYS if dc.get(k) is not None}
    transform = create_transform(**{**cfg, "input_size": tuple(cfg["input_size"])}, is_training=False)
    x = torch.stack([transform(load_image(p)) for p in paths])  # (N, 3, H, W)
    with torch.no_grad():
        embedding, logits = model(x)
    return embedding.double().numpy(), torch.softmax(logits.double(), 1).numpy(), list(state["classes"])


def _same_top1(served: list[str], reference: np.ndarray, classes: list[str]) -> None:
    """Served labels equal PyTorch's argmax, except where PyTorch's top two are a tie (closer than TIE)."""
    top2 = np.sort(reference, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > TIE
    assert clear.sum() >= len(clear) // 2, "too many near-ties for the comparison to mean anything"
    expected = [classes[i] for i in reference.argmax(1)]
    assert [s for s, c in zip(served, clear, strict=True) if c] == [
        e for e, c in zip(expected, clear, strict=True) if c
    ]


def test_served_answers_are_pytorchs(exported: dict[str, Any], tmp_path: Path) -> None:
    card = read_card(exported["model_dir"])
    support_paths = [p for p in exported["images"]["train"] if p.stem in ("0", "1")]  # 2 per class
    query_paths = exported["images"]["test"]
    support_labels = [p.parent.name for p in support_paths]
    emb, probs, classes = _torch_reference(exported["checkpoint"], [*query_paths, *support_paths])
    query_emb, query_probs, support_emb = (
        emb[: len(query_paths)],
        probs[: len(query_paths)],
        emb[len(query_paths) :],
    )
    assert card.labels == classes

    def upload(field: str, paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
        return files(field, *[(f"{p.parent.name}-{p.name}", p.read_bytes()) for p in paths])

    async def ask() -> tuple[dict, dict, dict]:
        settings = Settings(model_dir=exported["model_dir"], db_path=tmp_path / "s.db", intra_op_threads=1)
        async with running(create_app(settings)) as client:
            top_k = {"top_k": len(classes)}
            classify = await client.post("/classify", params=top_k, files=upload("images", query_paths))
            calibrated = await client.post(
                "/classify", params={"threshold": "calibrated"}, files=upload("images", query_paths)
            )
            embed = await client.post("/embed", files=upload("images", query_paths))
            fewshot = await client.post(
                "/fewshot",
                files=[*upload("support", support_paths), *upload("queries", query_paths)],
                data={"support_labels": support_labels},
            )
        for r in (classify, embed, fewshot, calibrated):
            assert r.status_code == 200, r.text
        return classify.json(), embed.json(), fewshot.json(), calibrated.json()

    classify, embed, fewshot, calibrated = asyncio.run(ask())
    assert classify["model"] == embed["model"] == fewshot["model"] == card.sha256

    # /classify: every class's probability within 1e-4, the same top-1
    served = np.array(
        [
            [dict((t["label"], t["probability"]) for t in r["top_k"])[c] for c in classes]
            for r in classify["results"]
        ]
    )
    np.testing.assert_allclose(served, query_probs, atol=1e-4)
    _same_top1([r["top_k"][0]["label"] for r in classify["results"]], query_probs, classes)

    # /embed: L2-normalised, cosine >= 0.9999 with PyTorch's embedding of the same file
    unit = np.array(embed["embeddings"])
    reference = F.normalize(torch.from_numpy(query_emb), dim=1).numpy()
    assert embed["dim"] == query_emb.shape[1] and (unit * reference).sum(1).min() >= 0.9999

    # /fewshot: prototypes = mean of normalised support embeddings; cosine scores and top-1 as PyTorch's
    s = F.normalize(torch.from_numpy(support_emb), dim=1)
    protos = F.normalize(
        torch.stack([s[[lab == c for lab in support_labels]].mean(0) for c in fewshot["classes"]]), dim=1
    )
    scores = (F.normalize(torch.from_numpy(query_emb), dim=1) @ protos.T).numpy()  # (Q, C)
    got = np.array([[r["scores"][c] for c in fewshot["classes"]] for r in fewshot["results"]])
    np.testing.assert_allclose(got, scores, atol=1e-4)
    _same_top1([r["label"] for r in fewshot["results"]], scores, fewshot["classes"])

    # /classify open set: similarity = best cosine to the training split's class prototypes (PyTorch)
    train_paths = exported["images"]["train"]
    train_emb = F.normalize(torch.from_numpy(_torch_reference(exported["checkpoint"], train_paths)[0]), dim=1)
    train_labels = [p.parent.name for p in train_paths]
    train_protos = F.normalize(
        torch.stack([train_emb[[lab == c for lab in train_labels]].mean(0) for c in classes]), dim=1
    )
    expected = (F.normalize(torch.from_numpy(query_emb), dim=1) @ train_protos.T).max(1).values.numpy()
    np.testing.assert_allclose([r["similarity"] for r in classify["results"]], expected, atol=1e-4)
    assert calibrated["threshold"] == card.calibrated_threshold is not None
    for r in calibrated["results"]:
        assert r["rejected"] == (r["similarity"] < calibrated["threshold"])
        assert r["label"] == ("unknown" if r["rejected"] else r["top_k"][0]["label"])
