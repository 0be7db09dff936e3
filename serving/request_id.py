"""Request identity: ``X-Request-ID`` and W3C ``traceparent``, for responses, error bodies and log lines.

- ``X-Request-ID``: the client's value is kept when it is 1–128 characters of ``A-Z a-z 0-9 - _ . :
  / + = @``; otherwise (absent, or anything else, so a header can never inject text into a log line)
  the server makes one (32 hex digits). It is echoed in the response's ``X-Request-ID``.
- ``traceparent`` (W3C Trace Context, ``00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>``):
  a valid one is passed through unchanged, echoed in the response with its ``tracestate``; an
  invalid one is dropped, as the standard says. The server starts no trace of its own.

:class:`RequestIdMiddleware` is the OUTERMOST layer of the app (outside Starlette's own error
middleware), so that every response carries the headers, 500s included. The values live in context
variables for the whole request: :func:`current` reads them for the error bodies
(:func:`serving.errors.error_body`) and the log records (:mod:`serving.logging_config`).
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"[A-Za-z0-9\-_.:/+=@]{1,128}")
_TRACEPARENT = re.compile(r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE_MAX = 512  # W3C: at most 32 members; longer values are not passed on
_READ = frozenset((b"x-request-id", b"traceparent", b"tracestate"))


@dataclass(frozen=True)
class RequestIdentity:
    """The identity of the request being served (``traceparent`` and ``tracestate`` may be ``None``)."""

    request_id: str
    traceparent: str | None = None
    tracestate: str | None = None


_current: ContextVar[RequestIdentity | None] = ContextVar("clce_request", default=None)


def current() -> RequestIdentity | None:
    """The identity of the request this code runs for, or ``None`` outside a request."""
    return _current.get()


def identify(request_id: str | None, traceparent: str | None, tracestate: str | None) -> RequestIdentity:
    """The identity from a request's header values (each ``None`` when absent); see the module doc."""
    rid = request_id.strip() if request_id else ""
    parent = traceparent.strip().lower() if traceparent else ""
    valid_parent = _TRACEPARENT.fullmatch(parent) is not None
    state = tracestate.strip() if tracestate and valid_parent else ""
    return RequestIdentity(
        request_id=rid if _REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex,
        traceparent=parent if valid_parent else None,
        tracestate=state if state and len(state) <= _TRACESTATE_MAX and state.isprintable() else None,
    )


class RequestIdMiddleware:
    """Give each HTTP request its identity and echo it in the response headers (see the module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k: v.decode("latin-1") for k, v in scope.get("headers", ()) if k in _READ}
        identity = identify(
            headers.get(b"x-request-id"), headers.get(b"traceparent"), headers.get(b"tracestate")
        )
        # not reset afterwards: the server's own log lines after the app returns (the access line,
        # an unhandled error) belong to this request too; each request runs in a task of its own
        _current.set(identity)
        scope.setdefault("state", {})["identity"] = identity

        async def send_with_identity(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out[REQUEST_ID_HEADER] = identity.request_id
                if identity.traceparent:
                    out["traceparent"] = identity.traceparent
                    if identity.tracestate:
                        out["tracestate"] = identity.tracestate
            await send(message)

        await self.app(scope, receive, send_with_identity)
