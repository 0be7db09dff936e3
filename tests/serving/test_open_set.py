"""Open-set /classify (and serving.predict): similarity to the training-class prototypes, ``rejected``.

The tiny export of conftest, plus ``prototypes.npy``: the embeddings of pure red, green and blue
images (through the real encoder), and a calibrated threshold of 0.9 in the card. A red image is
then red with similarity ~1; a grey one is far from every prototype (best cosine ~0.3).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clce_core.export_folder import PROTOTYPES_FILE, read_card, write_card, write_prototypes
from clce_core.open_set import class_prototypes
from serving.app import create_app
from serving.sessions import ModelRuntime
from serving.settings import Settings
from tests.serving.conftest import COLORS, LABELS, assert_error, files, image_bytes, make_export, wait_ready

REPO = Path(__file__).resolve().parents[2]
CALIBRATED = 0.9


def add_prototypes(folder: Path, threshold: float | None = CALIBRATED) -> Path:
    """Prototypes of the pure colours of LABELS (the export's own encoder), and an ``open_set`` card key."""
    card = read_card(folder)
    pixels = np.stack(
        [card.preprocess.to_uint8(Image.open(io.BytesIO(image_bytes(c))).convert("RGB")) for c in LABELS]
    )
    embedding, _ = ModelRuntime(card).run(pixels)  # (3, D)
    write_prototypes(folder, class_prototypes(embedding, np.arange(len(LABELS)), len(LABELS)))
    open_set = None if threshold is None else {"threshold": threshold, "keep": 0.95}
    write_card(folder, dataclasses.replace(card, open_set=open_set), extra_files=[PROTOTYPES_FILE])
    return folder


@pytest.fixture(scope="module")
def open_set_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return add_prototypes(make_export(tmp_path_factory.mktemp("open-set") / "tiny"))


@pytest.fixture
def open_client(make_settings: Callable[..., Settings], open_set_dir: Path) -> TestClient:
    with TestClient(create_app(make_settings(model_dir=open_set_dir))) as c:
        wait_ready(c)
        yield c


def _classify(client: TestClient, *colours: str, **params: object) -> dict:
    images = files("images", *[(f"{c}.png", image_bytes(c)) for c in colours])
    r = client.post("/classify", files=images, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_similarity_and_rejection(open_client: TestClient, open_set_dir: Path) -> None:
    body = _classify(open_client, "red", "grey", "blue")
    assert body["threshold"] is None
    red, grey, blue = body["results"]
    assert list(red) == ["filename", "label", "rejected", "similarity", "top_k"]  # the decided order
    assert (red["label"], red["rejected"], blue["label"], blue["rejected"]) == ("red", False, "blue", False)
    assert red["similarity"] > 0.999 and grey["similarity"] < 0.5 and not grey["rejected"]
    assert grey["label"] == grey["top_k"][0]["label"]  # no threshold: always the top-1

    # the similarity is the best cosine of the served embedding to prototypes.npy
    emb = np.array(
        open_client.post("/embed", files=files("images", image_bytes("grey"))).json()["embeddings"]
    )
    protos = np.load(open_set_dir / PROTOTYPES_FILE)
    assert grey["similarity"] == pytest.approx(float((emb @ protos.T).max()), abs=1e-5)

    body = _classify(open_client, "red", "grey", threshold=0.5)
    red, grey = body["results"]
    assert body["threshold"] == 0.5
    assert (red["label"], red["rejected"]) == ("red", False)
    assert (grey["label"], grey["rejected"]) == ("unknown", True)
    assert grey["top_k"][0]["label"] in LABELS  # the head's ranking is still there when rejected


def test_calibrated_threshold_comes_from_the_card(open_client: TestClient) -> None:
    body = _classify(open_client, "red", "grey", threshold="calibrated")
    assert body["threshold"] == CALIBRATED
    assert [(r["label"], r["rejected"]) for r in body["results"]] == [("red", False), ("unknown", True)]
    info = open_client.get("/info").json()["open_set"]
    assert info == {"prototypes": True, "calibrated_threshold": CALIBRATED, "keep": 0.95}


@pytest.mark.parametrize("value", ["1.5", "-1.01", "abc", "nan", "inf", "Calibrated"])
def test_bad_thresholds_are_422(open_client: TestClient, value: str) -> None:
    r = open_client.post("/classify", files=files("images", image_bytes()), params={"threshold": value})
    assert_error(r, 422, "validation_error", "threshold", "[-1, 1]", "calibrated")


def test_an_export_without_prototypes_still_serves_and_says_why_it_cannot_reject(client: TestClient) -> None:
    body = _classify(client, "red", "grey")
    assert [(r["label"], r["rejected"], r["similarity"]) for r in body["results"]] == [
        ("red", False, None),
        (body["results"][1]["top_k"][0]["label"], False, None),
    ]
    for value in ("0.5", "calibrated"):
        r = client.post("/classify", files=files("images", image_bytes()), params={"threshold": value})
        assert_error(r, 422, "invalid_field", "threshold", PROTOTYPES_FILE, "re-export")
    assert client.get("/info").json()["open_set"] == {
        "prototypes": False,
        "calibrated_threshold": None,
        "keep": None,
    }


def test_prototypes_without_a_calibrated_threshold(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    folder = add_prototypes(make_export(tmp_path / "uncalibrated"), threshold=None)
    with TestClient(create_app(make_settings(model_dir=folder))) as c:
        wait_ready(c)
        assert _classify(c, "grey", threshold=0.5)["results"][0]["rejected"] is True
        r = c.post("/classify", files=files("images", image_bytes()), params={"threshold": "calibrated"})
        assert_error(r, 422, "invalid_field", "no calibrated threshold", "[-1, 1]")


def test_a_class_named_unknown_is_not_a_rejection(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    folder = add_prototypes(make_export(tmp_path / "named-unknown", labels=("unknown", "green", "blue")))
    with TestClient(create_app(make_settings(model_dir=folder))) as c:
        wait_ready(c)
        red, grey = _classify(c, "red", "grey", threshold="calibrated")["results"]
    assert (red["label"], red["rejected"]) == ("unknown", False)  # the class called "unknown"
    assert (grey["label"], grey["rejected"]) == ("unknown", True)  # a rejection


def test_fewshot_reports_rejection_beside_a_support_class_named_unknown(client: TestClient) -> None:
    support = files("support", image_bytes("red"), image_bytes("blue"))
    queries = files("queries", ("red.png", image_bytes((210, 30, 30))), ("grey.png", image_bytes("grey")))
    labels = {"support_labels": ["unknown", "sea"]}
    r = client.post("/fewshot", files=support + queries, data={**labels, "threshold": "0.9"})
    assert r.status_code == 200, r.text
    red, grey = r.json()["results"]
    assert (red["label"], red["rejected"]) == ("unknown", False)
    assert (grey["label"], grey["rejected"]) == ("unknown", True)
    r = client.post("/fewshot", files=support + queries, data=labels)
    assert [q["rejected"] for q in r.json()["results"]] == [False, False]


# ------------------------------------------------------------------------------- serving.predict


def _predict(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "serving.predict", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # the predict CLI in subprocesses (~5 s)
def test_predict_cli_threshold(open_set_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    for colour in ("red", "grey"):
        Image.new("RGB", (40, 30), COLORS[colour]).save(tmp_path / f"{colour}.png")
    red, grey = str(tmp_path / "red.png"), str(tmp_path / "grey.png")
    done = _predict("--model-dir", str(open_set_dir), red, grey, "--threshold", "calibrated", "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [list(r) for r in rows] == [["file", "label", "rejected", "similarity", "top_k"]] * 2
    assert [(r["label"], r["rejected"]) for r in rows] == [("red", False), ("unknown", True)]
    assert rows[0]["similarity"] > 0.999

    done = _predict("--model-dir", str(open_set_dir), red, grey, "--threshold", "0.9", "--top-k", "1")
    lines = done.stdout.splitlines()
    assert lines[0] == f"{red}: red 1.000 (similarity 1.000)"
    assert lines[1].startswith(f"{grey}: unknown (similarity 0.") and "< 0.900); " in lines[1]

    done = _predict("--model-dir", str(model_dir), red, "--threshold", "0.5")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and PROTOTYPES_FILE in done.stderr
    assert done.stderr.startswith("error: --threshold:")
    done = _predict("--model-dir", str(model_dir), red, "--threshold", "2")
    assert done.returncode == 2 and "[-1, 1]" in done.stderr and "Traceback" not in done.stderr
    done = _predict("--model-dir", str(model_dir), red, "--json")  # no prototypes: similarity null
    assert json.loads(done.stdout)["similarity"] is None and json.loads(done.stdout)["rejected"] is False


# ------------------------------------------------------------------------------- the benchmark


@pytest.mark.slow  # 18 photographs up to 1411 x 1411 px: about 10 s on the loaded 2-core machine
def test_open_set_benchmark_smoke(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    from benchmarks import open_set  # the repository root is on sys.path (tests/ is a package)

    labels = ("a-red", "b-green", "c-blue")  # sorted like the image folder's classes
    folder = add_prototypes(make_export(tmp_path / "model", labels=labels))
    for split, n in (("train", 3), ("test", 2)):
        for label, colour in zip(labels, LABELS, strict=True):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(n):
                rgb = tuple(min(255, v + 10 * i) for v in COLORS[colour])
                Image.new("RGB", (36, 30), rgb).save(tmp_path / "data" / split / label / f"{i}.png")
    out = tmp_path / "open_set.json"
    args = ["--model-dir", str(folder), "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data")]
    args += [
        "--test-per-class",
        "2",
        "--noise",
        "4",
        "--glyphs-dir",
        str(tmp_path / "none"),
        "--output",
        str(out),
    ]
    assert open_set.main(args) == 0
    results = json.loads(out.read_text())
    assert results["threshold"] == CALIBRATED and set(results["sets"]) == {"test", "photos", "noise"}
    test, noise = results["sets"]["test"], results["sets"]["noise"]
    assert test["images"] == 6 and test["rejected_pct"] == 0 and test["top1_all"] == 100.0
    assert noise["images"] == 4 and noise["rejected_pct"] == 100.0 and noise["auroc_vs_test"] == 1.0
    assert results["sets"]["photos"]["images"] == len(open_set.PHOTOS)
    assert results["coffee"]["without_threshold"]["label"] in labels  # a brown photo: near "a-red" here
