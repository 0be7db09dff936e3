"""Request-size limit, enforced before and while the body is read (ASGI middleware).

A declared ``Content-Length`` above the limit is answered with 413 at once, without reading the
body. A body without a length (chunked) is counted as it streams in; crossing the limit raises
:class:`~serving.errors.RequestTooLarge`, which the error handlers turn into the same 413.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import RequestTooLarge, error_response


class BodyLimitMiddleware:
    """Reject request bodies larger than ``max_bytes`` with 413 ``request_too_large``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                declared = value
                break
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await error_response(400, "bad_request", "the Content-Length header is not an integer")(
                    scope, receive, send
                )
                return
            if length > self.max_bytes:
                exc = RequestTooLarge(self.max_bytes)
                await error_response(413, "request_too_large", str(exc.detail))(scope, receive, send)
                return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)
