"""``POST /admin/reload``: load ``CLCE_MODEL_DIR`` again and switch to it without downtime.

Needs the API key: with no ``CLCE_API_KEY`` configured the route answers 403, since anyone who can
reach the port could otherwise make the server reload; reload such a server with ``SIGHUP``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from serving.deps import running_service
from serving.errors import Forbidden
from serving.schemas import ERROR_RESPONSES, ReloadResponse

router = APIRouter(
    prefix="/admin",
    tags=["operations"],
    responses={
        401: ERROR_RESPONSES[401],
        403: {"model": ERROR_RESPONSES[401]["model"], "description": "The server runs without CLCE_API_KEY"},
        409: {"model": ERROR_RESPONSES[401]["model"], "description": "The new export cannot be loaded"},
    },
)


@router.post("/reload", response_model=ReloadResponse, summary="Reload the model from CLCE_MODEL_DIR")
async def reload(request: Request) -> ReloadResponse:
    """Read and verify ``CLCE_MODEL_DIR`` again (a swapped symlink is followed), load it beside the
    model in service, warm it up, switch, and close the old model once its requests are done.

    Requests in flight finish on the model they started with. A folder that fails to load changes
    nothing (409 ``reload_failed``). Support sets whose images are kept (``CLCE_KEEP_SUPPORT_IMAGES``)
    are re-embedded by the new model on first use; others answer 409 ``model_mismatch``.
    """
    if request.app.state.settings.api_key is None:
        raise Forbidden(
            "POST /admin/reload is off because the server runs without an API key: set CLCE_API_KEY "
            "(then send it in X-API-Key), or reload by sending SIGHUP to the server process"
        )
    result = await running_service(request).models.reload()
    return ReloadResponse(
        model=result.model, previous=result.previous, changed=result.changed, seconds=round(result.seconds, 3)
    )
