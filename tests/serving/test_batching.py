"""Micro-batching through the real app: concurrent requests share ONNX Runtime calls; a full queue is 429."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import pytest

from serving.app import create_app
from serving.batching import MicroBatcher
from serving.errors import QueueFull
from serving.metrics import Metrics
from serving.settings import Settings
from tests.serving.conftest import COLORS, assert_error, files, histogram, image_bytes, running

pytestmark = pytest.mark.anyio

ORDER = ["red", "green", "blue"]


def _slow_down(batcher: MicroBatcher, monkeypatch: pytest.MonkeyPatch, seconds: float) -> Callable:
    """Make every model call take ``seconds`` longer; returns the original run function."""
    original = batcher._run

    def slow_run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(seconds)
        return original(x)

    monkeypatch.setattr(batcher, "_run", slow_run)
    return original


async def _classify(client, color: str):  # type: ignore[no-untyped-def]
    return await client.post("/classify", files=files("images", (f"{color}.png", image_bytes(color))))


async def test_concurrent_requests_are_merged_into_batches(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(max_batch=8, max_wait_ms=50))
    async with running(app) as client:
        colors = [ORDER[i % 3] for i in range(8)]
        responses = await asyncio.gather(*(_classify(client, c) for c in colors))
        assert [r.status_code for r in responses] == [200] * 8
        # every request got its own image's answer back, whatever batch it rode in
        assert [r.json()["results"][0]["top_k"][0]["label"] for r in responses] == colors
        batches = histogram((await client.get("/metrics")).text, "clce_batch_size")
    # warm-up does not go through the batcher, so every observation is a request batch
    assert batches["count"] < 8, batches  # fewer calls than requests
    assert batches["1.0"] < batches["count"], batches  # at least one batch held more than one image


async def test_batching_off_runs_one_image_per_call(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(max_batch=1, max_wait_ms=50))
    async with running(app) as client:
        responses = await asyncio.gather(*(_classify(client, ORDER[i % 3]) for i in range(6)))
        assert all(r.status_code == 200 for r in responses)
        batches = histogram((await client.get("/metrics")).text, "clce_batch_size")
    assert batches["count"] == 6 and batches["1.0"] == 6


async def test_a_large_request_is_split_and_reassembled_in_order(
    make_settings: Callable[..., Settings],
) -> None:
    # images join the queue as they are decoded: a batch waits up to 500 ms to fill, so a loaded
    # machine decoding slowly still gives 4 + 4 + 2
    app = create_app(make_settings(max_batch=4, max_wait_ms=500, max_files=16, max_queue=16))
    async with running(app) as client:
        colors = [ORDER[i % 3] for i in range(10)]
        r = await client.post("/classify", files=files("images", *(image_bytes(c) for c in colors)))
        assert [res["top_k"][0]["label"] for res in r.json()["results"]] == colors
        batches = histogram((await client.get("/metrics")).text, "clce_batch_size")
    assert batches["count"] == 3 and batches["4.0"] == 3  # 4 + 4 + 2


async def test_full_queue_answers_429_with_retry_after(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(make_settings(max_batch=1, max_wait_ms=0, max_queue=2, max_files=2, warmup=False))
    async with running(app) as client:
        batcher = app.state.service.batcher
        original = _slow_down(batcher, monkeypatch, 0.2)
        responses = await asyncio.gather(*(_classify(client, "red") for _ in range(8)))
        statuses = sorted(r.status_code for r in responses)
        assert 200 in statuses and 429 in statuses and set(statuses) == {200, 429}, statuses
        rejected = next(r for r in responses if r.status_code == 429)
        assert_error(rejected, 429, "queue_full", "CLCE_MAX_QUEUE", "retry in")
        assert int(rejected.headers["Retry-After"]) >= 1
        text = (await client.get("/metrics")).text
        assert f"clce_queue_rejections_total {float(statuses.count(429))}" in text
        monkeypatch.setattr(batcher, "_run", original)
        assert (await _classify(client, "blue")).status_code == 200  # drained: served again


async def test_inference_failure_is_a_json_500_and_the_batcher_survives(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(make_settings(warmup=False))
    async with running(app, raise_errors=False) as client:
        batcher = app.state.service.batcher

        def broken(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            raise RuntimeError("device lost")

        monkeypatch.setattr(batcher, "_run", broken)
        r = await _classify(client, "red")
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert "Traceback" not in r.text and "device lost" not in r.text
        monkeypatch.undo()
        assert (await _classify(client, "red")).status_code == 200


# ------------------------------------------------------------------------ the batcher on its own


def _fake_run(calls: list[int]) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(x))
        flat = x.reshape(len(x), -1)
        return flat[:, :2].copy(), flat[:, :1] * 2

    return run


async def test_batcher_groups_up_to_max_batch_and_routes_rows() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(_fake_run(calls), max_batch=4, max_wait_ms=30, max_queue=64, metrics=Metrics())
    await batcher.start()
    try:
        inputs = [np.full((n, 3, 2, 2), float(i), dtype=np.float32) for i, n in enumerate([1, 2, 3, 1, 2])]
        outputs = await asyncio.gather(*(batcher.submit(x) for x in inputs))
    finally:
        await batcher.stop()
    assert sum(calls) == 9 and max(calls) <= 4 and len(calls) < 9
    for i, (x, (emb, logits)) in enumerate(zip(inputs, outputs, strict=True)):
        assert emb.shape == (len(x), 2) and np.all(emb == i) and np.all(logits == 2 * i)


async def test_cancelled_request_frees_its_places() -> None:
    calls: list[int] = []

    def slow(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(0.05)
        return _fake_run(calls)(x)

    batcher = MicroBatcher(slow, max_batch=2, max_wait_ms=0, max_queue=4, metrics=Metrics())
    await batcher.start()
    try:
        first = asyncio.create_task(batcher.submit(np.zeros((2, 3, 2, 2), np.float32)))
        await asyncio.sleep(0.01)  # first is running now
        doomed = asyncio.create_task(batcher.submit(np.ones((4, 3, 2, 2), np.float32)))
        await asyncio.sleep(0)
        assert batcher.queue_depth == 4
        doomed.cancel()
        await first
        emb, _ = await batcher.submit(np.full((3, 3, 2, 2), 7, np.float32))
        assert np.all(emb == 7) and batcher.queue_depth == 0
        assert sum(calls) == 5  # the cancelled images never ran
    finally:
        await batcher.stop()


def test_colors_are_distinct() -> None:  # guards the fixtures the batching tests rely on
    assert len({COLORS[c] for c in ORDER}) == 3


async def test_a_lone_request_does_not_wait_for_company() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(_fake_run(calls), max_batch=8, max_wait_ms=2000, max_queue=8, metrics=Metrics())
    await batcher.start()
    try:
        start = time.perf_counter()
        await batcher.submit(np.zeros((1, 3, 2, 2), np.float32))
        assert time.perf_counter() - start < 1.0  # nobody is decoding: no reason to wait 2 s
    finally:
        await batcher.stop()


async def test_a_batch_waits_for_a_request_still_decoding() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(_fake_run(calls), max_batch=8, max_wait_ms=2000, max_queue=8, metrics=Metrics())
    await batcher.start()
    try:

        async def request(n: int, decoding_s: float) -> None:
            with batcher.reserve(n) as places:
                await asyncio.sleep(decoding_s)  # "decoding"
                await asyncio.gather(*(places.put(np.zeros((3, 2, 2), np.float32)) for _ in range(n)))

        start = time.perf_counter()
        await asyncio.gather(request(1, 0.0), request(2, 0.05))
        assert calls == [3] and time.perf_counter() - start < 1.0  # one batch, as soon as both were in
    finally:
        await batcher.stop()


async def test_a_large_request_runs_its_first_images_while_the_rest_decode() -> None:
    calls: list[int] = []
    batcher = MicroBatcher(_fake_run(calls), max_batch=8, max_wait_ms=20, max_queue=8, metrics=Metrics())
    await batcher.start()
    try:
        with batcher.reserve(4) as places:
            first = [places.put(np.full((3, 2, 2), i, np.float32)) for i in range(2)]
            done = await asyncio.wait_for(asyncio.gather(*first), 5)  # the other two are still "decoding"
            assert calls == [2] and [float(e[0]) for e, _ in done] == [0.0, 1.0]
            rest = await asyncio.gather(*(places.put(np.full((3, 2, 2), 7, np.float32)) for _ in range(2)))
        assert calls == [2, 2] and all(float(e[0]) == 7 for e, _ in rest)
        with pytest.raises(QueueFull), batcher.reserve(9):
            pass
        with batcher.reserve(5) as places:  # places left unused are released at the end of the block
            await places.put(np.zeros((3, 2, 2), np.float32))
        with batcher.reserve(8):
            pass
    finally:
        await batcher.stop()


async def test_a_burst_of_requests_rides_in_a_few_large_batches(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 14: at concurrency 64 the mean batch fell to 2.5 from 10-15 at 32. With a model call of
    # 30 ms, requests that arrive during a call must join the next batch, however many there are.
    # A burst of 32 may already fill every batch to the cap, so 64 is held to half the cap, not to 32's
    # mean (which two arrivals a few milliseconds apart can split into three calls instead of two).
    max_batch = 32
    app = create_app(make_settings(max_batch=max_batch, max_wait_ms=5, max_queue=256, warmup=False))
    async with running(app) as client:
        _slow_down(app.state.service.batcher, monkeypatch, 0.03)
        means = {}
        for concurrency in (32, 64):
            before = histogram((await client.get("/metrics")).text, "clce_batch_size")
            responses = await asyncio.gather(*(_classify(client, ORDER[i % 3]) for i in range(concurrency)))
            assert all(r.status_code == 200 for r in responses)
            after = histogram((await client.get("/metrics")).text, "clce_batch_size")
            calls = after["count"] - before.get("count", 0)
            means[concurrency] = concurrency / calls
    assert means[32] > 1 and means[64] >= max_batch / 2, means
