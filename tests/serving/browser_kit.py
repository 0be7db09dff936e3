"""Driving the web page in a real browser (tests/serving/test_browser.py): the photographs, a tab
that refuses every other host and records its requests, and readers of what the page shows."""

from __future__ import annotations

import shutil
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def photographs() -> dict[str, np.ndarray]:
    from skimage import data

    return {
        "cat": data.chelsea(),
        "coffee": data.coffee(),
        "rocket": data.rocket(),
        "astronaut": data.astronaut(),
    }


def crops(image: np.ndarray, n: int, seed: int) -> list[Image.Image]:
    """``n`` crops of 60–90 % of each side, every second one mirrored."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    out = []
    for i in range(n):
        ch, cw = int(h * rng.uniform(0.6, 0.9)), int(w * rng.uniform(0.6, 0.9))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = image[y : y + ch, x : x + cw]
        out.append(Image.fromarray(np.ascontiguousarray(crop[:, ::-1] if i % 2 else crop)))
    return out


class Tab:
    """One browser tab on the server, with what it requested and what went wrong in it."""

    def __init__(
        self,
        browser: Any,
        base: str,
        viewport: dict[str, int],
        shots: Path,
        prefix: str,
        fake: dict[str, str] | None = None,
    ) -> None:
        self.context = browser.new_context(viewport=viewport)
        self.base, self.shots, self.prefix = base, shots, prefix
        self.fake = fake or {}  # {path: JSON body}: answers the page gets instead of the server's
        self.outside: list[str] = []  # requests to any other host: there must be none
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.errors: list[str] = []
        self.context.route("**/*", self._only_this_server)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append((r.method, urlsplit(r.url).path)))

    def _only_this_server(self, route: Any) -> None:
        url = route.request.url
        path = urlsplit(url).path
        if url.startswith(self.base) and path in self.fake:
            route.fulfill(status=200, content_type="application/json", body=self.fake[path])
        elif url.startswith(self.base) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def count(self, method: str, path: str) -> int:
        return self.requests.count((method, path))

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{self.prefix}-{name}.png"), full_page=True)

    def open(self, path: str = "/", key: str | None = None) -> None:
        """Load a page; with ``key``, the key dialog must come up, and the key is typed into it."""
        self.page.goto(self.base + path)
        if key is not None:
            dialog = self.page.locator("dialog.key-dialog")
            dialog.wait_for(state="visible")
            assert "needs an API key" in dialog.inner_text()
            self.shot("api-key")
            self.page.fill("#key-input", key)
            self.page.keyboard.press("Enter")
        if path == "/":
            self.page.wait_for_selector("body[data-ready=true]")

    def close(self) -> None:
        assert not self.errors, self.errors
        assert not self.outside, f"the page fetched from another host: {self.outside}"
        self.context.close()


def labels(page: Any) -> dict[str, tuple[str, bool]]:
    """{file name: (label shown, rejected?)} of every result card in the visible panel."""
    out = {}
    for card in page.locator("[role=tabpanel]:not([hidden]) li.result").all():
        label = card.locator(".verdict .label")
        if label.count():
            out[card.get_attribute("data-file")] = (
                label.inner_text().removeprefix("?").strip(),
                label.get_attribute("data-rejected") == "true",
            )
    return out


def wait_labelled(page: Any, names: list[str]) -> None:
    """Until every named file has its label in the visible panel."""
    page.wait_for_function(
        """names => names.every(n => document.querySelector(
            `[role=tabpanel]:not([hidden]) li.result[data-file="${n}"] .verdict .label`))""",
        arg=names,
    )


def wait_settled(page: Any) -> None:
    """Until no class is still preparing its images and no query labels are due to change."""
    page.wait_for_function(
        """() => !document.querySelector('li.class[aria-busy="true"]')
            && document.querySelector('#query-results')?.getAttribute('aria-busy') === 'false'"""
    )


def sent_images(request: Any) -> list[bytes]:
    """The image files of a multipart request the page made, as the server received them."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=policy.default).parsebytes(head + request.post_data_buffer)
    return [part.get_payload(decode=True) for part in message.iter_parts() if part.get_filename()]
