"""``GET /info`` (model card summary), ``/health/live``, ``/health/ready`` and ``/metrics``.

The health routes answer ``HEAD`` as well as ``GET`` (load balancers and probes use either); the
``HEAD`` routes are left out of the OpenAPI schema, where they would repeat the ``GET`` operations.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving.deps import ServiceDep
from serving.schemas import (
    ERROR_RESPONSES,
    BatchingInfo,
    InfoResponse,
    LimitsInfo,
    LiveResponse,
    OpenSetInfo,
    ReadyResponse,
)
from serving.settings import Settings

info_router = APIRouter(tags=["model"], responses={401: ERROR_RESPONSES[401]})
health_router = APIRouter(tags=["operations"])


def limits_info(settings: Settings) -> LimitsInfo:
    """The per-request limits clients must respect (``/info`` and the OpenAPI schema show them)."""
    return LimitsInfo(
        max_files=settings.max_files,
        max_upload_bytes=settings.max_upload_bytes,
        max_image_pixels=settings.max_image_pixels,
        max_request_pixels=settings.max_request_pixels,
    )


@info_router.get("/info", response_model=InfoResponse, summary="The model card and server settings")
async def info(service: ServiceDep) -> InfoResponse:
    card, settings, pre = service.card, service.settings, service.card.preprocess
    raw = card.raw
    return InfoResponse(
        model=card.sha256,
        model_name=card.model_name,
        precision=raw.get("precision") if isinstance(raw.get("precision"), str) else None,
        num_classes=len(card.labels),
        labels=card.labels,
        embedding_dim=card.embedding_dim,
        input_size=list(pre.input_size),
        interpolation=pre.interpolation,
        crop_pct=pre.crop_pct,
        crop_mode=pre.crop_mode,
        mean=list(pre.mean),
        std=list(pre.std),
        loss=raw.get("loss") if isinstance(raw.get("loss"), dict) else None,
        metrics=raw.get("metrics") if isinstance(raw.get("metrics"), dict) else None,
        opset=raw.get("opset") if isinstance(raw.get("opset"), int) else None,
        versions=raw.get("versions") if isinstance(raw.get("versions"), dict) else None,
        created=str(raw["created"]) if raw.get("created") is not None else None,
        device=settings.device,
        providers=service.runtime.providers,
        batching=BatchingInfo(
            max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue
        ),
        limits=limits_info(settings),
        open_set=OpenSetInfo(
            prototypes=card.prototypes is not None,
            calibrated_threshold=card.calibrated_threshold,
            keep=(card.open_set or {}).get("keep"),
        ),
    )


@health_router.get("/health/live", response_model=LiveResponse, summary="The process is up")
@health_router.head("/health/live", include_in_schema=False)
async def live() -> LiveResponse:
    return LiveResponse()


@health_router.get(
    "/health/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Not ready; `reasons` says why"}},
    summary="Model loaded, warmed up, on the requested device",
)
@health_router.head("/health/ready", include_in_schema=False)
async def ready(request: Request) -> Response:
    service = getattr(request.app.state, "service", None)
    settings = request.app.state.settings
    if service is None:
        body = ReadyResponse(ready=False, reasons=["model not loaded"], device=settings.device, providers=[])
    else:
        reasons = service.not_ready_reasons()
        if request.app.state.drain.draining:
            reasons.insert(0, "draining: the server is shutting down")
        body = ReadyResponse(
            ready=not reasons, reasons=reasons, device=settings.device, providers=service.runtime.providers
        )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@health_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics
    body = await run_in_threadpool(registry.render)  # off the event loop: /health/* never waits on a scrape
    return Response(body, media_type=registry.content_type)
