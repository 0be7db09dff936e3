"""Auth and HTTP headers (issue 12, item 6), through httpx against the real app.

With ``CLCE_API_KEY`` the schema is not open; redirects never point at the request's ``Host``;
``/docs`` and ``/redoc`` load nothing from another host; a 405 lists every method of the path;
``HEAD`` works on the health probes. And the page itself: served from the package, with its assets.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.routes.ui import STATIC_DIR, swagger_assets
from serving.settings import Settings
from tests.serving.conftest import assert_error, wait_ready

KEY = {"X-API-Key": "s3cret"}


@pytest.fixture
def keyed(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(api_key="s3cret"))) as c:
        wait_ready(c)
        yield c


class _Assets(HTMLParser):
    """Every URL a page loads by itself: scripts, stylesheets, icons, images."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "img") and a.get("src"):
            self.urls.append(a["src"] or "")
        if tag == "link" and a.get("href"):
            self.urls.append(a["href"] or "")


def _assets(html: str) -> list[str]:
    parser = _Assets()
    parser.feed(html)
    return parser.urls


def test_schema_needs_the_key(keyed: TestClient) -> None:
    assert_error(keyed.get("/openapi.json"), 401, "unauthorized", "X-API-Key")
    assert_error(keyed.get("/openapi.json", headers={"X-API-Key": "nope"}), 401, "unauthorized")
    schema = keyed.get("/openapi.json", headers=KEY).json()
    assert "/fewshot" in schema["paths"] and "/" not in schema["paths"]


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/"])
def test_pages_are_shells_that_hold_no_api_description(keyed: TestClient, path: str) -> None:
    """The pages load without a key (they must, to ask for it) but carry nothing of the API."""
    r = keyed.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for word in ("/fewshot", "/support-sets", "max_upload_bytes", "model_name"):
        assert word not in r.text, word


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/"])
def test_pages_load_every_asset_from_this_server(client: TestClient, path: str) -> None:
    html = client.get(path).text
    assert "cdn" not in html.lower() and "https://" not in html and "http://" not in html
    urls = _assets(html)
    assert urls, html
    for url in urls:
        if url.startswith("data:"):
            continue
        target = urljoin(f"http://testserver{path}", url)
        assert urlsplit(target).netloc == "testserver", url
        r = client.get(target)
        assert r.status_code == 200 and r.content, (url, r.status_code)
    if path != "/":
        assert any("swagger-ui-bundle.js" in u or "redoc.standalone.js" in u for u in urls), urls


def test_swagger_assets_come_from_the_package() -> None:
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        assert (swagger_assets() / name).stat().st_size > 50_000, name


def test_the_page_modules_resolve(client: TestClient) -> None:
    """Every ES module the page imports is served (a missing file would leave the page blank)."""
    for path in sorted(STATIC_DIR.glob("*.js")):
        for name in re.findall(r'from "\./([\w.]+)"', path.read_text()):
            assert (STATIC_DIR / name).is_file(), (path.name, name)
        r = client.get(f"/static/{path.name}")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"], path.name


def test_page_headers(client: TestClient) -> None:
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("method", "path", "location"),
    [
        ("GET", "/info/", "/info"),
        ("GET", "/support-sets/", "/support-sets"),
        ("POST", "/classify/?top_k=2", "/classify?top_k=2"),
        ("GET", "/docs/", "/docs"),
    ],
)
def test_slash_redirects_are_relative(client: TestClient, method: str, path: str, location: str) -> None:
    r = client.request(method, path, headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == location, (r.status_code, r.headers)


@pytest.mark.parametrize("path", ["//evil.example/", "//evil.example", "/nowhere/", "///info/"])
def test_no_redirect_off_the_site(client: TestClient, path: str) -> None:
    r = client.get(f"http://testserver{path}", headers={"Host": "evil.example"}, follow_redirects=False)
    assert "location" not in r.headers and r.status_code == 404, (r.status_code, r.headers)
    assert_error(r, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/support-sets", "GET, POST"),
        ("PATCH", "/support-sets/abc", "DELETE, GET"),
        ("GET", "/support-sets/abc/images", "POST"),
        ("DELETE", "/info", "GET"),
        ("POST", "/health/live", "GET, HEAD"),
        ("GET", "/classify", "POST"),
        ("POST", "/static/style.css", "GET, HEAD"),
    ],
)
def test_405_lists_every_method_of_the_path(client: TestClient, method: str, path: str, allow: str) -> None:
    r = client.request(method, path)
    assert_error(r, 405, "method_not_allowed", method, allow)
    assert r.headers["allow"] == allow


@pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
def test_head_on_health_probes(keyed: TestClient, path: str) -> None:
    r = keyed.head(path)
    assert r.status_code == 200 and r.content == b"" and r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(keyed.get(path).content)


def test_head_routes_stay_out_of_the_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/health/live"]) == {"get"} and set(paths["/health/ready"]) == {"get"}
