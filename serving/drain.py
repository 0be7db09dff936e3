"""Graceful drain on SIGTERM: finish what was admitted, refuse what comes after, exit in time.

On SIGTERM (:func:`install_sigterm`, the same under ``python -m serving`` and ``uvicorn
serving.app:create_app --factory``):

1. ``/health/ready`` answers 503 (reason ``draining``) at once, so a load balancer stops sending;
2. every NEW request gets 503 ``draining`` (JSON, with ``Connection: close``): the client may retry
   on another instance, nothing was done. Its body is read first (up to ``CLCE_MAX_UPLOAD_BYTES``)
   and dropped: a server that answers and closes while the client is still uploading makes the
   client see a broken connection instead of the 503. ``/health/*`` and ``/metrics`` still answer;
3. the requests admitted before (queued for the model or running) finish normally;
4. when none is left, or after ``CLCE_DRAIN_SECONDS`` (default 30) at the latest, the server is
   told to exit the way it exits on SIGTERM without us (uvicorn's own handler: close connections,
   run the lifespan shutdown). At the deadline uvicorn is told not to wait for stragglers.

The listening socket stays open while draining, so late clients get an answer (503) instead of a
refused connection. Set Kubernetes' ``terminationGracePeriodSeconds`` above ``CLCE_DRAIN_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import error_response

logger = logging.getLogger(__name__)

#: Paths that are neither refused nor waited for while draining (probes and scrapes).
EXEMPT = ("/health/", "/metrics")

DRAINING_MESSAGE = "the server is shutting down (draining); retry the request on another instance"


class Drain:
    """Requests in flight, and the draining state.

    Args:
        seconds: The longest drain (``CLCE_DRAIN_SECONDS``).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.draining = False
        self.in_flight = 0
        self._task: asyncio.Task[None] | None = None

    def begin(self, exit_server: Callable[[bool], None]) -> None:
        """Start draining; ``exit_server(forced)`` is called once the admitted requests are done
        (``forced=False``) or at the deadline (``forced=True``). A second call does nothing."""
        if self.draining:
            return
        self.draining = True
        logger.info("draining: %d requests in flight, at most %.0f s", self.in_flight, self.seconds)
        self._task = asyncio.get_running_loop().create_task(self._finish(exit_server))

    async def _finish(self, exit_server: Callable[[bool], None]) -> None:
        start = time.monotonic()
        while self.in_flight > 0 and time.monotonic() - start < self.seconds:
            await asyncio.sleep(0.01)
        forced = self.in_flight > 0
        if forced:
            logger.warning(
                "drain: %d requests still running after CLCE_DRAIN_SECONDS=%.0f; exiting without them",
                self.in_flight,
                self.seconds,
            )
        else:
            logger.info("drain: done in %.2f s; exiting", time.monotonic() - start)
        exit_server(forced)


class DrainMiddleware:
    """Count the requests in flight; while draining, answer new ones with 503 ``draining``.

    Args:
        max_body_bytes: The most of a refused request's body that is read (and dropped) before the
            503, so that the client is not cut off mid-upload; a larger body gets the 503 after that.
    """

    def __init__(self, app: ASGIApp, drain: Drain, max_body_bytes: int) -> None:
        self.app = app
        self.drain = drain
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT):
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            await _discard_body(receive, self.max_body_bytes)
            refuse = error_response(503, "draining", DRAINING_MESSAGE, {"Connection": "close"})
            await refuse(scope, receive, send)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1


async def _discard_body(receive: Receive, max_bytes: int) -> None:
    """Read the request body to its end (or the client's disconnect, or ``max_bytes``) and drop it."""
    read = 0
    while read <= max_bytes:
        message = await receive()
        if message["type"] != "http.request":
            return  # http.disconnect
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _exit_like(loop: asyncio.AbstractEventLoop, previous: Any) -> Callable[[bool], None]:
    """How to exit: hand SIGTERM to the handler we replaced (uvicorn's), else die of the signal."""

    def exit_server(forced: bool) -> None:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            server = getattr(previous, "__self__", None)  # uvicorn.Server.handle_exit
            if forced and hasattr(server, "force_exit"):
                server.force_exit = True  # do not wait for the stragglers' connections
            previous(signal.SIGTERM, None)
        else:
            signal.raise_signal(signal.SIGTERM)

    return exit_server


def install_sigterm(drain: Drain) -> bool:
    """Drain on SIGTERM (only possible in the main thread of the process; returns whether it was).

    A second SIGTERM while draining changes nothing; SIGKILL (Kubernetes, after the grace period)
    still ends the process.
    """
    loop = asyncio.get_running_loop()
    exit_server = _exit_like(loop, signal.getsignal(signal.SIGTERM))
    try:
        loop.add_signal_handler(signal.SIGTERM, lambda: drain.begin(exit_server))
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals here
        return False
    return True
