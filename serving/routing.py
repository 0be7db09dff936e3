"""What a request that no route fully matches is answered: a relative slash redirect, or ``Allow``.

Starlette's own slash redirect builds an absolute URL from the request's ``Host`` header, so
``GET /info/`` with ``Host: evil.example`` was sent to ``http://evil.example/info``. The app turns
that off (``redirect_slashes=False``) and installs :class:`SlashRedirect` as the router's default
instead: it redirects to the *path* only (``Location: /info``), and only when that path is a route
of this app. A 405 names every method the path has (:func:`allowed_methods`), not only those of the
first route that matched it (``PUT /support-sets`` said ``Allow: POST``, missing ``GET``).
"""

from __future__ import annotations

from starlette.datastructures import URL
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Match, Mount, Router
from starlette.types import Receive, Scope, Send

METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _alternate_path(path: str) -> str | None:
    """``/info/`` -> ``/info`` and ``/info`` -> ``/info/``; None where no redirect may be made."""
    if path.rstrip("/") == "" or path.startswith("//"):
        return None  # "//host" in a Location would be an absolute URL to another host
    return path.rstrip("/") if path.endswith("/") else path + "/"


def _matches(routes: list[BaseRoute], scope: Scope) -> list[BaseRoute]:
    return [route for route in routes if route.matches(scope)[0] is not Match.NONE]


class SlashRedirect:
    """The router's default app: a same-origin 307 to the path with the slash added or removed.

    Only a path that some route of the app matches is a target, and the ``Location`` is the path
    (with the query string), never a URL built from ``Host``. Anything else goes
    on to the router's ``not_found`` (the JSON 404).
    """

    def __init__(self, router: Router) -> None:
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            alternate = _alternate_path(scope["path"])
            if alternate is not None and _matches(self.router.routes, {**scope, "path": alternate}):
                query = scope.get("query_string", b"").decode("latin-1")
                target = str(URL(path=alternate, query=query))  # ASGI: "path" includes root_path
                await RedirectResponse(target, status_code=307)(scope, receive, send)
                return
        await self.router.not_found(scope, receive, send)


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route accepts at this request's path, sorted (for the ``Allow`` header).

    Each method is tried against the routes rather than read from them: FastAPI may keep an
    included router as one nested route, whose own routes are not in ``routes``. The app's mounts
    are its static folders, which answer ``GET`` and ``HEAD``.
    """
    # a mount that matched has set root_path to its own prefix; match from the app's root again
    scope = {**scope, "root_path": scope.get("app_root_path", scope.get("root_path", ""))}
    allowed: set[str] = set()
    for route in routes:
        if isinstance(route, Mount):
            if route.matches(scope)[0] is not Match.NONE:
                allowed |= {"GET", "HEAD"}
            continue
        allowed |= {m for m in METHODS if route.matches({**scope, "method": m})[0] is Match.FULL}
    return sorted(allowed)
