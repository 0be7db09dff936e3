"""Fixtures for the serving tests: a tiny REAL export folder (no torch) and clients of the real app.

The encoder averages each channel over the image and multiplies by a fixed (3, D) matrix with
orthonormal rows, so an image's embedding is a rotation of its mean normalised colour; the head maps
it back (times 4) to logits over ``red, green, blue``. A pure red image is therefore classified
``red``, and colours are well separated for the few-shot tests.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from clce_core.export_folder import (
    EMBEDDING,
    ENCODER_FILE,
    ENCODER_INPUT,
    HEAD_FILE,
    LOGITS,
    ModelCard,
    write_card,
)
from serving.app import create_app
from serving.settings import Settings
from tests.serving.postgres import db_url, postgres  # noqa: F401  (fixtures: both store backends)
from tests.serving.processes import REPO, Server, free_port  # noqa: F401  (free_port, REPO: for the tests)

LABELS = ("red", "green", "blue")
DIM = 8
INPUT_SIZE = (3, 32, 32)
COLORS = {"red": (230, 20, 20), "green": (20, 200, 30), "blue": (25, 30, 220), "grey": (128, 128, 128)}


def _save(model: onnx.ModelProto, path: Path) -> None:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def make_export(
    folder: Path,
    seed: int = 0,
    labels: tuple[str, ...] = LABELS,
    dim: int = DIM,
    input_size: tuple[int, int, int] = INPUT_SIZE,
    **card: Any,
) -> Path:
    """Write encoder.onnx, head.onnx and model.json (``write_card``: with their sha256) into ``folder``.

    ``card`` overrides :class:`~clce_core.export_folder.ModelCard` fields.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, 3)))  # (D, 3) orthonormal columns
    w_enc = q.T.astype(np.float32)  # (3, D)
    w_head = np.zeros((dim, len(labels)), dtype=np.float32)
    w_head[:, :3] = 4.0 * q  # (D, C): logits = 4 * mean colour for the first three classes
    b_head = np.zeros(len(labels), dtype=np.float32)

    _, h, w = input_size
    encoder = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("ReduceMean", [ENCODER_INPUT], ["pooled"], axes=[2, 3], keepdims=0),
                helper.make_node("MatMul", ["pooled", "w_enc"], [EMBEDDING]),
            ],
            "tiny_encoder",
            [helper.make_tensor_value_info(ENCODER_INPUT, TensorProto.FLOAT, ["N", 3, h, w])],
            [helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["N", dim])],
            [numpy_helper.from_array(w_enc, "w_enc")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    head = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("MatMul", [EMBEDDING, "w_head"], ["scores"]),
                helper.make_node("Add", ["scores", "b_head"], [LOGITS]),
            ],
            "tiny_head",
            [helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, ["N", dim])],
            [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["N", len(labels)])],
            [numpy_helper.from_array(w_head, "w_head"), numpy_helper.from_array(b_head, "b_head")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    _save(encoder, folder / ENCODER_FILE)
    _save(head, folder / HEAD_FILE)
    fields: dict[str, Any] = {
        "model_name": "tiny_test_encoder",
        "labels": list(labels),
        "embedding_dim": dim,
        "input_size": input_size,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "loss": {"name": "clce", "lam": 0.9, "tau": 0.5},
        "metrics": {"test_top1": 99.0},
        "opset": 17,
        "versions": {"onnx": onnx.__version__},
        "created": "2025-01-01T00:00:00+00:00",
    }
    write_card(folder, ModelCard(**{**fields, **card}))
    return folder


def image_bytes(
    color: str | tuple[int, ...] = "red",
    size: tuple[int, int] = (40, 30),
    fmt: str = "PNG",
    mode: str = "RGB",
) -> bytes:
    """A solid-colour image file (``size`` is width, height)."""
    rgb = COLORS[color] if isinstance(color, str) else color
    image = Image.new("RGB", size, rgb).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def files(field: str, *items: bytes | tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``files=`` entries: ``files("images", png1, ("b.png", png2))``."""
    out = []
    for i, item in enumerate(items):
        name, data = item if isinstance(item, tuple) else (f"{field}{i}.png", item)
        out.append((field, (name, data, "application/octet-stream")))
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_export(tmp_path_factory.mktemp("export") / "tiny")


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shapes, different weights: another sha256."""
    return make_export(tmp_path_factory.mktemp("export") / "tiny-other", seed=1)


@pytest.fixture
def make_settings(tmp_path: Path, model_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_dir": model_dir,
            "db_path": tmp_path / "support.sqlite3",
            "max_batch": 8,
            "max_wait_ms": 2.0,
            "intra_op_threads": 1,
            "preprocess_threads": 2,
        }
        values.update(overrides)
        if "db_url" in overrides:
            del values["db_path"]
        return Settings(**values)

    return make


def wait_ready(client: TestClient, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError(f"not ready after {timeout} s: {client.get('/health/ready').json()}")


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings())) as c:
        wait_ready(c)
        yield c


def assert_error(response: Any, status: int, code: str, *words: str) -> dict[str, Any]:
    """The response is the JSON error body with this status and code, its message naming ``words``."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}, body
    assert body["error"]["request_id"] == response.headers["x-request-id"], (body, response.headers)
    assert body["error"]["code"] == code, body
    for word in words:
        assert word in body["error"]["message"], (word, body)
    return body["error"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def running(
    app: Any, timeout: float = 10.0, raise_errors: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield an async client talking to it in-process, once ready.

    ``raise_errors=False`` lets a 500 reach the client as the server would send it (Starlette
    re-raises unhandled exceptions after answering, for the server's log).
    """
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_errors)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            deadline = time.monotonic() + timeout
            while (await client.get("/health/ready")).status_code != 200:
                assert time.monotonic() < deadline, "not ready"
                await asyncio.sleep(0.01)
            yield client


def histogram(metrics_text: str, name: str) -> dict[str, float]:
    """``{le: cumulative count}`` of an unlabelled Prometheus histogram, plus ``count``."""
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith(f"{name}_bucket{{le="):
            le = line.split('"')[1]
            out[le] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count "):
            out["count"] = float(line.rsplit(" ", 1)[1])
    return out


@contextmanager
def server_process(cmd: list[str], env: dict[str, str], port: int, timeout: float = 60.0) -> Iterator[str]:
    """Run the server as a real process on loopback; yield its base URL once ``/health/ready`` is 200."""
    with Server(cmd, port, env) as server:
        yield server.wait_ready(timeout).url
