"""Model updates without downtime: ``POST /admin/reload`` and ``SIGHUP`` load ``CLCE_MODEL_DIR`` again."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import assert_error, files, image_bytes, running
from tests.serving.processes import start_server

KEY = {"X-API-Key": "admin-secret"}


def _point(link: Path, target: Path) -> None:
    """Swap the symlink ``link`` to ``target`` atomically (rename over it), as a deployment would."""
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target)
    os.replace(tmp, link)


@pytest.fixture
def model_link(tmp_path: Path, model_dir: Path) -> Path:
    link = tmp_path / "current"
    link.symlink_to(model_dir)
    return link


async def _model(client: httpx.AsyncClient) -> str:
    return (await client.get("/info", headers=KEY)).json()["model"]


@pytest.mark.anyio
async def test_reload_needs_a_configured_api_key(make_settings: Callable[..., Settings]) -> None:
    async with running(create_app(make_settings())) as client:
        r = await client.post("/admin/reload")
        assert_error(r, 403, "forbidden", "CLCE_API_KEY", "SIGHUP")
    async with running(create_app(make_settings(api_key="admin-secret"))) as client:
        assert_error(await client.post("/admin/reload"), 401, "unauthorized")
        r = await client.post("/admin/reload", headers=KEY)
        assert r.status_code == 200 and r.json()["changed"] is False, r.text  # the same model: nothing to do


@pytest.mark.anyio
async def test_reload_follows_a_swapped_symlink_and_closes_the_old_model(
    make_settings: Callable[..., Settings], model_link: Path, model_dir: Path, other_model_dir: Path
) -> None:
    app = create_app(make_settings(model_dir=model_link, api_key="admin-secret"))
    async with running(app) as client:
        before = await _model(client)
        old = app.state.service.models.current
        _point(model_link, other_model_dir)
        r = await client.post("/admin/reload", headers=KEY)
        assert r.status_code == 200, r.text
        body = r.json()
        after = await _model(client)
        assert body["changed"] and body["previous"] == before and body["model"] == after != before
        assert old.batcher._task is None  # the old model's batcher is stopped ...
        c = await client.post("/classify", files=files("images", image_bytes("blue")), headers=KEY)
        assert c.json()["model"] == after and c.json()["results"][0]["top_k"][0]["label"] == "blue"

        broken = model_dir.parent / "broken"  # ... and a folder that cannot load changes nothing
        shutil.copytree(model_dir, broken, dirs_exist_ok=True)
        (broken / "head.onnx").unlink()
        _point(model_link, broken)
        error = assert_error(
            await client.post("/admin/reload", headers=KEY), 409, "reload_failed", "lacks head.onnx"
        )
        assert f"still serving model {after[:12]}" in error["message"]
        assert await _model(client) == after
        assert (await client.get("/health/ready")).status_code == 200


@pytest.mark.anyio
async def test_requests_in_flight_finish_on_the_old_model(
    make_settings: Callable[..., Settings],
    model_link: Path,
    other_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = create_app(make_settings(model_dir=model_link, api_key="admin-secret"))
    async with running(app) as client:
        before = await _model(client)
        old = app.state.service.models.current
        original = old.batcher._run
        started = asyncio.Event()

        def slow_run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            app.state.loop.call_soon_threadsafe(started.set)
            time.sleep(0.5)
            return original(x)

        app.state.loop = asyncio.get_running_loop()
        monkeypatch.setattr(old.batcher, "_run", slow_run)
        in_flight = asyncio.create_task(
            client.post("/classify", files=files("images", image_bytes("red")), headers=KEY)
        )
        await started.wait()  # the request is inside the old model's inference call
        _point(model_link, other_model_dir)
        reload = await client.post("/admin/reload", headers=KEY)
        first = await in_flight
        assert reload.status_code == 200 and first.status_code == 200, (reload.text, first.text)
        assert first.json()["model"] == before  # it finished on the model it started with
        assert old.users == 0 and old.batcher._task is None  # the old model closed after it
        assert (await _model(client)) == reload.json()["model"] != before


async def _load(client: httpx.AsyncClient, set_id: str, stop: asyncio.Event, seen: Counter[str]) -> list[str]:
    """Classify and few-shot in a loop until ``stop``; return every unexpected answer."""
    errors = []
    while not stop.is_set():
        c = await client.post("/classify", files=files("images", image_bytes("green")), headers=KEY)
        f = await client.post(
            "/fewshot",
            files=files("queries", image_bytes("blue"), image_bytes("red")),
            data={"support_set_id": set_id},
            headers=KEY,
        )
        for r in (c, f):
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:200]}")
                continue
            seen[r.json()["model"]] += 1
        if c.status_code == 200 and c.json()["results"][0]["top_k"][0]["label"] != "green":
            errors.append(f"classify: {c.text[:200]}")
        if f.status_code == 200 and [q["label"] for q in f.json()["results"]] != ["b", "r"]:
            errors.append(f"fewshot: {f.text[:200]}")
    return errors


@pytest.mark.slow  # 2 s of load
@pytest.mark.anyio
async def test_reload_under_load_has_no_errors_and_kept_sets_follow(
    make_settings: Callable[..., Settings], model_link: Path, model_dir: Path, other_model_dir: Path
) -> None:
    settings = make_settings(model_dir=model_link, api_key="admin-secret", keep_support_images=True)
    async with running(create_app(settings)) as client:
        r = await client.post(
            "/support-sets",
            files=files("support", image_bytes("red"), image_bytes("blue")),
            data={"name": "kept", "support_labels": ["r", "b"]},
            headers=KEY,
        )
        set_id = r.json()["id"]
        stop, seen = asyncio.Event(), Counter[str]()
        clients = [asyncio.create_task(_load(client, set_id, stop, seen)) for _ in range(8)]
        reloads = []
        for target in (other_model_dir, model_dir, other_model_dir, model_dir):
            await asyncio.sleep(0.3)
            _point(model_link, target)
            reloads.append(await client.post("/admin/reload", headers=KEY))
        stop.set()
        errors = [e for task in clients for e in await task]
    assert [r.status_code for r in reloads] == [200] * 4 and all(r.json()["changed"] for r in reloads)
    assert errors == [], errors[:5]
    assert len(seen) == 2 and min(seen.values()) > 0, seen  # both models answered, none failed


@pytest.mark.anyio
async def test_sets_without_kept_images_say_how_to_keep_them_after_a_reload(
    make_settings: Callable[..., Settings], model_link: Path, other_model_dir: Path
) -> None:
    async with running(create_app(make_settings(model_dir=model_link, api_key="admin-secret"))) as client:
        r = await client.post(
            "/support-sets",
            files=files("support", image_bytes("red")),
            data={"name": "not kept", "support_labels": ["r"]},
            headers=KEY,
        )
        _point(model_link, other_model_dir)
        assert (await client.post("/admin/reload", headers=KEY)).status_code == 200
        q = await client.post(
            "/fewshot",
            files=files("queries", image_bytes()),
            data={"support_set_id": r.json()["id"]},
            headers=KEY,
        )
        assert_error(q, 409, "model_mismatch", "CLCE_KEEP_SUPPORT_IMAGES=true")


@pytest.mark.slow
def test_sighup_reloads_a_real_server(model_link: Path, other_model_dir: Path, tmp_path: Path) -> None:
    server = start_server("python -m serving", model_link, db_path=tmp_path / "s.db")
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        server.wait_ready()
        before = http.get("/info").json()["model"]
        _point(model_link, other_model_dir)
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while (now := http.get("/info").json()["model"]) == before:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        assert server.proc.poll() is None and now != before
        assert http.post("/classify", files=files("images", image_bytes("red"))).json()["model"] == now
