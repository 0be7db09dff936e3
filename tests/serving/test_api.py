"""Every endpoint of the real app over HTTP (TestClient runs the lifespan), on a tiny real ONNX export."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import DIM, LABELS, assert_error, files, image_bytes, wait_ready


def test_classify_returns_top_k_in_order(client: TestClient) -> None:
    r = client.post(
        "/classify",
        files=files("images", ("r.png", image_bytes("red")), ("b.jpg", image_bytes("blue", fmt="JPEG"))),
        params={"top_k": 2},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == client.get("/info").json()["model"] and len(body["model"]) == 64
    assert [res["filename"] for res in body["results"]] == ["r.png", "b.jpg"]
    assert [res["top_k"][0]["label"] for res in body["results"]] == ["red", "blue"]
    for res in body["results"]:
        probs = [t["probability"] for t in res["top_k"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1


def test_classify_default_top_k_is_capped_at_the_number_of_classes(client: TestClient) -> None:
    r = client.post("/classify", files=files("images", image_bytes("green")))
    top = r.json()["results"][0]["top_k"]
    assert [t["label"] for t in top][0] == "green" and len(top) == len(LABELS)
    assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-6)


def test_embed_is_l2_normalised_and_ordered(client: TestClient) -> None:
    r = client.post(
        "/embed", files=files("images", image_bytes("red"), image_bytes("blue"), image_bytes("red"))
    )
    assert r.status_code == 200, r.text
    body = r.json()
    emb = np.array(body["embeddings"])
    assert body["dim"] == DIM and emb.shape == (3, DIM)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.allclose(emb[0], emb[2], atol=1e-6) and emb[0] @ emb[1] < 0.5


def test_fewshot_with_uploaded_support_and_threshold(client: TestClient) -> None:
    support = files("support", image_bytes("red"), image_bytes((200, 40, 40)), image_bytes("blue"))
    queries = files("queries", ("q1.png", image_bytes((210, 30, 30))), ("q2.png", image_bytes("blue")))
    r = client.post("/fewshot", files=support + queries, data={"support_labels": ["apple", "apple", "sea"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["classes"] == ["apple", "sea"] and body["threshold"] is None
    assert [q["label"] for q in body["results"]] == ["apple", "sea"]
    assert set(body["results"][0]["scores"]) == {"apple", "sea"}
    assert -1 <= body["results"][0]["scores"]["sea"] <= body["results"][0]["scores"]["apple"] <= 1

    grey = files("queries", ("grey.png", image_bytes("grey")))
    r = client.post(
        "/fewshot",
        files=support + grey,
        data={"support_labels": ["apple", "apple", "sea"], "threshold": "0.99"},
    )
    assert r.status_code == 200 and r.json()["results"][0]["label"] == "unknown"
    r = client.post(
        "/fewshot",
        files=support + grey,
        data={"support_labels": ["apple", "apple", "sea"], "threshold": "-1"},
    )
    assert r.json()["results"][0]["label"] in {"apple", "sea"}


def test_support_set_lifecycle(client: TestClient) -> None:
    r = client.post(
        "/support-sets",
        files=files("support", image_bytes("red"), image_bytes("green")),
        data={"name": "colours", "support_labels": ["r", "g"]},
    )
    assert r.status_code == 201, r.text
    created = r.json()
    set_id = created["id"]
    assert (
        created["name"] == "colours" and created["num_images"] == 2 and created["classes"] == {"r": 1, "g": 1}
    )
    assert created["compatible"] and created["model"] == client.get("/info").json()["model"]

    r = client.post(
        f"/support-sets/{set_id}/images",
        files=files("support", image_bytes("blue"), image_bytes((20, 190, 40))),
        data={"support_labels": ["b", "g"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["classes"] == {"r": 1, "g": 2, "b": 1} and r.json()["num_images"] == 4

    assert client.get(f"/support-sets/{set_id}").json()["num_images"] == 4
    assert [s["id"] for s in client.get("/support-sets").json()["support_sets"]] == [set_id]

    r = client.post(
        "/fewshot",
        files=files("queries", image_bytes("blue"), image_bytes("green"), image_bytes("red")),
        data={"support_set_id": set_id},
    )
    assert r.status_code == 200, r.text
    assert [q["label"] for q in r.json()["results"]] == ["b", "g", "r"]
    assert r.json()["support_set_id"] == set_id

    assert client.delete(f"/support-sets/{set_id}").json() == {"id": set_id, "deleted": True}
    assert_error(client.get(f"/support-sets/{set_id}"), 404, "support_set_not_found", set_id)
    assert client.get("/support-sets").json() == {"support_sets": []}


def test_info_is_the_model_card_summary(client: TestClient, model_dir: Any) -> None:
    info = client.get("/info").json()
    import hashlib

    assert info["model"] == hashlib.sha256((model_dir / "encoder.onnx").read_bytes()).hexdigest()
    assert info["labels"] == list(LABELS) and info["num_classes"] == 3 and info["embedding_dim"] == DIM
    assert (
        info["input_size"] == [3, 32, 32] and info["interpolation"] == "bicubic" and info["crop_pct"] == 0.875
    )
    assert info["loss"] == {"name": "clce", "lam": 0.9, "tau": 0.5}
    assert info["providers"] == ["CPUExecutionProvider"] and info["device"] == "cpu"
    assert info["batching"]["max_batch"] == 8


def test_health_and_openapi(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["reasons"] == []
    schema = client.get("/openapi.json").json()
    for path in ("/classify", "/embed", "/fewshot", "/support-sets", "/support-sets/{set_id}", "/info"):
        assert path in schema["paths"], path
    assert client.get("/docs").status_code == 200


def test_metrics_text(client: TestClient) -> None:
    client.post("/classify", files=files("images", image_bytes("red"), image_bytes("blue")))
    client.post("/classify", files=files("images", b""))
    text = client.get("/metrics").text
    assert 'clce_http_requests_total{method="POST",route="/classify",status="200"} 1.0' in text
    assert 'clce_http_requests_total{method="POST",route="/classify",status="400"} 1.0' in text
    assert (
        'clce_http_request_duration_seconds_count{method="POST",route="/classify",status="200"} 1.0' in text
    )
    for name in (
        "clce_batch_size_bucket",
        "clce_queue_depth",
        "clce_inference_seconds_count",
        "clce_images_total",
    ):
        assert name in text, name


def test_not_ready_until_warmed_up(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from serving.sessions import ModelRuntime

    gate = threading.Event()
    original = ModelRuntime.warmup

    def slow_warmup(self: ModelRuntime, sizes: tuple[int, ...] = (1,)) -> None:
        gate.wait(5)
        original(self, sizes)

    monkeypatch.setattr(ModelRuntime, "warmup", slow_warmup)
    with TestClient(create_app(make_settings())) as c:
        r = c.get("/health/ready")
        assert r.status_code == 503 and r.json()["reasons"] == ["warming up"]
        assert c.get("/health/live").status_code == 200
        gate.set()
        wait_ready(c)


def test_cuda_requested_but_not_active_is_not_ready(make_settings: Callable[..., Settings]) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA execution provider")
    with TestClient(create_app(make_settings(device="cuda", warmup=False))) as c:
        r = c.get("/health/ready")
        assert r.status_code == 503 and not r.json()["ready"]
        assert "CUDAExecutionProvider is not active" in r.json()["reasons"][0]
        assert c.post("/classify", files=files("images", image_bytes())).status_code == 200  # still serves


def test_api_key(make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings(api_key="s3cret"))) as c:
        wait_ready(c)
        assert_error(
            c.post("/classify", files=files("images", image_bytes())), 401, "unauthorized", "X-API-Key"
        )
        assert_error(c.get("/info", headers={"X-API-Key": "wrong"}), 401, "unauthorized", "does not match")
        assert_error(c.get("/support-sets"), 401, "unauthorized")
        assert c.get("/info", headers={"X-API-Key": "s3cret"}).status_code == 200
        ok = c.post("/classify", files=files("images", image_bytes()), headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        for open_path in ("/health/live", "/health/ready", "/metrics"):
            assert c.get(open_path).status_code == 200, open_path


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, model_dir: Any, tmp_path: Any) -> None:
    from serving.app import SettingsError, load_settings

    monkeypatch.delenv("CLCE_MODEL_DIR", raising=False)
    with pytest.raises(SettingsError, match="model_dir: field required"):
        load_settings()
    monkeypatch.setenv("CLCE_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("CLCE_MAX_BATCH", "3")
    monkeypatch.setenv("CLCE_DEVICE", "cuda")
    monkeypatch.setenv("CLCE_API_KEY", "k")
    monkeypatch.setenv("CLCE_DB_PATH", str(tmp_path / "x.db"))
    s = load_settings()
    assert (s.model_dir, s.max_batch, s.device, s.api_key.get_secret_value()) == (model_dir, 3, "cuda", "k")
    monkeypatch.setenv("CLCE_DEVICE", "tpu")
    with pytest.raises(SettingsError, match="device"):
        load_settings()
    monkeypatch.setenv("CLCE_DEVICE", "cpu")
    monkeypatch.setenv("CLCE_MAX_FILES", "500")
    with pytest.raises(SettingsError, match="max_queue"):
        load_settings()


def test_factory_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, model_dir: Any, tmp_path: Any
) -> None:
    monkeypatch.setenv("CLCE_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("CLCE_DB_PATH", str(tmp_path / "f.db"))
    with TestClient(create_app()) as c:
        wait_ready(c)
        assert c.post("/embed", files=files("images", image_bytes())).status_code == 200
