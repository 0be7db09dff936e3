"""Prometheus metrics (one registry per app) and the ASGI middleware that times every request.

Exposed at ``GET /metrics``:

- ``clce_http_requests_total{method, route, status}`` and
  ``clce_http_request_duration_seconds{method, route, status}``: ``route`` is the route template
  (``/support-sets/{set_id}``), ``unmatched`` when no route matched, and ``method`` one of
  :data:`METHODS` or ``other``: a client cannot grow the label set (random paths or method names
  all land on one value), so a scrape stays small;
- ``clce_batch_size``: images per ONNX Runtime call (histogram);
- ``clce_queue_depth``: images waiting for the model (gauge);
- ``clce_inference_seconds``: duration of one batched call, encoder + head (histogram);
- ``clce_queue_wait_seconds``: time an image waits before its batch starts (histogram);
- ``clce_images_total``, ``clce_queue_rejections_total``.

``GET /metrics`` renders in a worker thread, never on the event loop.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: The HTTP methods counted by name; any other method is counted as :data:`OTHER_METHOD`.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
UNMATCHED_ROUTE = "unmatched"


class Metrics:
    """The server's metrics, in a registry of their own (several apps can live in one process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("method", "route", "status")
        self.requests = Counter(
            "clce_http_requests", "HTTP requests by route and status", labels, registry=self.registry
        )
        self.latency = Histogram(
            "clce_http_request_duration_seconds",
            "HTTP request latency by route and status",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "clce_batch_size", "Images per ONNX Runtime call", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge("clce_queue_depth", "Images waiting for the model", registry=self.registry)
        self.inference_seconds = Histogram(
            "clce_inference_seconds",
            "Duration of one batched ONNX Runtime call (encoder + head)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "clce_queue_wait_seconds",
            "Time an image waits in the queue before its batch starts",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("clce_images", "Images run through the model", registry=self.registry)
        self.rejections = Counter(
            "clce_queue_rejections",
            "Requests turned away with 429 because the queue was full",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status code."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            method = scope.get("method", "")
            labels = (method if method in METHODS else OTHER_METHOD, route, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
