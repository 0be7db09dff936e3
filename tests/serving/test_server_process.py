"""The two documented ways to run the server, as real processes on loopback."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import files, image_bytes
from tests.serving.processes import start_server


@pytest.mark.slow
@pytest.mark.parametrize("how", ["python -m serving", "uvicorn --factory"])
def test_server_runs(how: str, model_dir: Path, tmp_path: Path) -> None:
    with start_server(how, model_dir, db_path=tmp_path / "s.db", log_level="warning") as server:
        server.wait_ready(30)
        with httpx.Client(base_url=server.url, timeout=5) as client:
            r = client.post("/classify", files=files("images", image_bytes("blue")))
            assert r.status_code == 200 and r.json()["results"][0]["top_k"][0]["label"] == "blue"
            assert client.get("/info").json()["model_name"] == "tiny_test_encoder"
