"""The web page (``GET /``), the offline API docs (``/docs``, ``/redoc``) and the protected ``/openapi.json``.

Everything here is files of the package: ``serving/static/`` (the page: plain HTML, CSS and
JavaScript modules, no build step) under ``/static``, and Swagger UI and ReDoc from the
``fastapi-offline`` distribution under ``/vendor/swagger``, so nothing is fetched from another
host and the docs work offline and in the Docker images.

Access with ``CLCE_API_KEY``: the page, the docs pages and their assets are static shells that hold
no data (they must load before anyone could type a key); all data, ``/openapi.json`` included,
needs ``X-API-Key``. The shells ask for the key once and keep it in the tab's ``sessionStorage``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request, params
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

#: The page's own rules: scripts, styles, images and requests from this origin only (thumbnails are
#: ``blob:`` and ``data:`` URLs made in the browser); no frames, no plugins, no base rewrite.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


def swagger_assets() -> Path:
    """The folder of ``swagger-ui-bundle.js``, ``swagger-ui.css`` and ``redoc.standalone.js``."""
    return Path(str(files("fastapi_offline") / "static"))


def _page(name: str, headers: dict[str, str] | None = None) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=headers)


@router.get("/")
async def page() -> FileResponse:
    """The teach-by-example page."""
    return _page("index.html", PAGE_HEADERS)


@router.get("/docs")
async def swagger_ui() -> FileResponse:
    """Swagger UI, loaded from this server; it fetches ``/openapi.json`` with the key."""
    return _page("docs.html")


@router.get("/redoc")
async def redoc() -> FileResponse:
    return _page("redoc.html")


def install(app: FastAPI, protected: list[params.Depends]) -> None:
    """Add the page, the docs and the static folders to ``app``; ``/openapi.json`` gets ``protected``.

    The app must be made with ``docs_url=None, redoc_url=None, openapi_url=None`` (FastAPI's own
    docs load their assets from a CDN and its ``/openapi.json`` takes no dependencies).
    """

    @app.get("/openapi.json", include_in_schema=False, dependencies=protected)
    async def openapi(request: Request) -> JSONResponse:
        schema: dict[str, Any] = request.app.openapi()
        return JSONResponse(schema)

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/vendor/swagger", StaticFiles(directory=swagger_assets()), name="swagger")
