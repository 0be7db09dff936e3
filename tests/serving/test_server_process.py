"""The two documented ways to run the server, as real processes on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import files, free_port, image_bytes, server_process


def _serve(cmd: list[str], env: dict[str, str], port: int) -> None:
    with server_process(cmd, env, port, timeout=30) as base, httpx.Client(base_url=base, timeout=5) as client:
        r = client.post("/classify", files=files("images", image_bytes("blue")))
        assert r.status_code == 200 and r.json()["results"][0]["top_k"][0]["label"] == "blue"
        assert client.get("/info").json()["model_name"] == "tiny_test_encoder"


@pytest.mark.parametrize("how", ["python -m serving", "uvicorn --factory"])
def test_server_runs(how: str, model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {"CLCE_DB_PATH": str(tmp_path / "s.db"), "CLCE_INTRA_OP_THREADS": "1"}
    if how == "python -m serving":
        cmd = [
            sys.executable,
            "-m",
            "serving",
            "--model-dir",
            str(model_dir),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    else:
        env["CLCE_MODEL_DIR"] = str(model_dir)
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "serving.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    _serve(cmd, env, port)
