"""The two documented ways to run the server, as real processes on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import files, image_bytes

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cmd: list[str], env: dict[str, str], port: int) -> None:
    proc = subprocess.Popen(
        cmd, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while True:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                try:
                    if client.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server not ready in 30 s"
                time.sleep(0.1)
            r = client.post("/classify", files=files("images", image_bytes("blue")))
            assert r.status_code == 200 and r.json()["results"][0]["top_k"][0]["label"] == "blue"
            assert client.get("/info").json()["model_name"] == "tiny_test_encoder"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("how", ["python -m serving", "uvicorn --factory"])
def test_server_runs(how: str, model_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
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
