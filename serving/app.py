"""The FastAPI application: ``create_app()`` wires settings, lifespan, middleware, routes and errors.

    uvicorn serving.app:create_app --factory          # settings from CLCE_* environment variables
    python -m serving --model-dir models/NAME          # the same, with flags

The lifespan loads and verifies the export folder once (a file whose sha256 differs from
``model.json`` stops the start-up with a message saying so), opens the support-set store, starts
the micro-batcher and warms the model up in the background; ``/health/ready`` turns 200 when the
warm-up is done (and, with ``CLCE_DEVICE=cuda``, only if CUDA really runs the model).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from pydantic import ValidationError
from starlette.types import ASGIApp

from clce_core import __version__
from clce_core.export_folder import ExportFolderError
from serving.deps import require_api_key
from serving.drain import Drain, DrainMiddleware, install_sigterm
from serving.errors import describe_validation_errors, install_error_handlers
from serving.limits import BodyLimitMiddleware
from serving.logging_config import configure_logging
from serving.metrics import Metrics, MetricsMiddleware
from serving.reload import install_sighup
from serving.request_id import RequestIdMiddleware
from serving.routes import admin, fewshot, inference, support_sets, system, ui
from serving.routing import SlashRedirect
from serving.schemas import document_limits
from serving.service import Service
from serving.settings import Settings
from serving.store import StoreError

logger = logging.getLogger("serving")

DESCRIPTION = """\
Classify, embed and few-shot classify images with an exported CLCE model (ONNX Runtime).

Every error is `{"error": {"code", "message", "request_id"}}` with a 4xx status; every response
carries `X-Request-ID` (yours, or one the server made) and passes a W3C `traceparent` through. When
the server runs with `CLCE_API_KEY`, send the key in `X-API-Key` (all routes except `/health/*` and
`/metrics`; the web page at `/` and these docs ask for it once and keep it in the browser tab).
"""


class SettingsError(RuntimeError):
    """The CLCE_* environment does not make valid settings; ``str(e)`` names the variables."""


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (``CLCE_*``) and ``overrides`` (which win), with a one-line error.

    Raises:
        SettingsError: naming each bad or missing setting.
    """
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = describe_validation_errors(e.errors())
        raise SettingsError(
            f"invalid server settings: {problems} (set them as CLCE_<NAME>, e.g. CLCE_MODEL_DIR=models/NAME)"
        ) from None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    try:
        service = await Service.start(settings, app.state.metrics)
    except (ExportFolderError, StoreError) as e:
        logger.error("cannot start: %s", e)
        raise
    app.state.service = service
    install_sigterm(app.state.drain)  # in the main thread (uvicorn); not under a test client
    install_sighup(service.models)
    try:
        yield
    finally:
        app.state.service = None
        await service.stop()


class ServingApp(FastAPI):
    """FastAPI with :class:`~serving.request_id.RequestIdMiddleware` outside Starlette's error
    middleware, so that every response and log line, a 500's included, carries the request's identity,
    and :class:`~serving.drain.DrainMiddleware` inside it (a 503 while draining has the identity too)."""

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()
        drain = DrainMiddleware(inner, self.state.drain, self.state.settings.max_upload_bytes)
        return RequestIdMiddleware(drain)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the model is loaded when it starts (lifespan), not here.

    Args:
        settings: Defaults to ``Settings()`` read from the ``CLCE_*`` environment.
    """
    settings = settings if settings is not None else load_settings()
    configure_logging(settings.log_format, settings.log_level)
    app = ServingApp(
        title="CLCE serving",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # serving/routes/ui.py serves the docs from the package, and /openapi.json
        redoc_url=None,  # behind the API key
        openapi_url=None,
        redirect_slashes=False,  # Starlette's redirect is absolute, built from Host: SlashRedirect instead
    )
    app.router.default = SlashRedirect(app.router)
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.service = None
    app.state.drain = Drain(settings.drain_seconds)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: counts the 413s too

    protected = [Depends(require_api_key)]
    for router in (inference.router, fewshot.router, support_sets.router, system.info_router, admin.router):
        app.include_router(router, dependencies=protected)
    app.include_router(system.health_router)
    ui.install(app, protected)
    generate = app.openapi
    app.openapi = lambda: document_limits(generate(), system.limits_info(settings))  # type: ignore[method-assign]
    return app
