"""/metrics: clients cannot grow the label set, and a scrape never blocks the event loop."""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
from collections.abc import Callable

import pytest

from serving.app import create_app
from serving.metrics import Metrics
from serving.settings import Settings
from tests.serving.conftest import running

pytestmark = pytest.mark.anyio

#: The method label's values (docs/serving.md): the standard methods, everything else "other".
METHOD_LABELS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}


def _label_values(text: str, label: str) -> set[str]:
    return set(re.findall(rf'^clce_http_requests_total\{{.*?{label}="([^"]*)"', text, flags=re.M))


async def test_random_methods_and_paths_share_one_label_value(make_settings: Callable[..., Settings]) -> None:
    async with running(create_app(make_settings())) as client:
        await client.get("/health/live")
        baseline = len((await client.get("/metrics")).content)
        for _ in range(200):
            method = secrets.token_hex(6).upper()
            assert (await client.request(method, "/classify")).status_code == 405
            assert (await client.request(method, f"/{secrets.token_hex(8)}")).status_code in (404, 405)
            assert (await client.get(f"/no/such/{secrets.token_hex(8)}")).status_code == 404
        text = (await client.get("/metrics")).text
    assert _label_values(text, "method") <= METHOD_LABELS
    assert 'method="other",route="/classify",status="405"} 200.0' in text
    routes = {"/health/ready", "/health/live", "/metrics", "/classify", "unmatched"}
    assert _label_values(text, "route") == routes
    assert len(text) < baseline + 20_000  # a few new series, not 600 of them (~1 kB each)


async def test_a_slow_scrape_does_not_block_the_loop(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a render is stuck, /health/live still answers: the render is not on the event loop."""
    started, release = threading.Event(), threading.Event()
    released_in_time: list[bool] = []
    original = Metrics.render

    def stuck_render(self: Metrics) -> bytes:
        started.set()
        released_in_time.append(release.wait(10))  # on the loop, nothing could set it: False after 10 s
        return original(self)

    monkeypatch.setattr(Metrics, "render", stuck_render)
    async with running(create_app(make_settings())) as client:
        scrape = asyncio.create_task(client.get("/metrics"))
        while not started.is_set():
            await asyncio.sleep(0.01)
        assert (await asyncio.wait_for(client.get("/health/live"), 30)).status_code == 200
        release.set()
        assert (await scrape).status_code == 200
    assert released_in_time == [True]
