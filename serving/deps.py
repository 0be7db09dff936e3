"""FastAPI dependencies: the running service and the optional API key."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from serving.errors import NotReady, Unauthorized
from serving.service import Service

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Required when the server runs with CLCE_API_KEY."
)


def running_service(request: Request) -> Service:
    """The service the lifespan started. Raises ``NotReady`` before that."""
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise NotReady("the model is not loaded yet")
    return service


async def get_service(request: Request) -> AsyncIterator[Service]:
    """The service, with this request pinned to the model in service now (``async``: FastAPI would
    run a plain ``def`` in a thread); a reload meanwhile does not change the request's model."""
    service = running_service(request)
    with service.models.pin():
        yield service


ServiceDep = Annotated[Service, Depends(get_service)]


async def require_api_key(
    request: Request, key: Annotated[str | None, Security(api_key_header)] = None
) -> None:
    """Check ``X-API-Key`` against ``CLCE_API_KEY`` when one is set (constant-time comparison)."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    if key is None:
        raise Unauthorized("this server needs an API key: send it in the X-API-Key header")
    if not secrets.compare_digest(key.encode(), expected.get_secret_value().encode()):
        raise Unauthorized("the X-API-Key header does not match the server's API key")
