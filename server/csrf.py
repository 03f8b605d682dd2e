"""Cross-site request forgery: what a page of another site may not make a browser do here.

Every state-changing request (POST, PUT, PATCH, DELETE) of the hall's HTTP API passes two
checks before its handler runs (docs/protocol.md, "State-changing HTTP requests"):

* **Origin.** An ``Origin`` header must be the hall's own origin (``X-Forwarded-Proto`` /
  ``X-Forwarded-Host`` believed only from ``HALL_TRUSTED_PROXIES``, :mod:`server.forwarded`)
  or one of ``HALL_ALLOWED_ORIGINS`` (``*``: any), else 403 ``origin_forbidden``. A request
  without ``Origin`` is a program's (the kiosk agent, curl), allowed only if it carries no
  ``Sec-Fetch-Site`` either, or ``Sec-Fetch-Site: same-origin``: browsers send ``Origin`` on
  every cross-origin POST, and a browser request that names a foreign site in
  ``Sec-Fetch-Site`` but hides its origin is refused. ``Origin: null`` (sandboxed frames,
  ``file:`` pages) is never allowed.
* **Content-Type.** A request with a body must say ``application/json``, else 415
  ``unsupported_media_type`` -- except the upload routes, which take
  ``multipart/form-data`` (their handlers check it). A cross-origin ``text/plain`` or form
  post, which browsers send without asking the server first, is thus never read as JSON.

The real-time transport (``/socket.io/``) is left alone: python-socketio checks the
handshake's origin itself (with :func:`server.forwarded.socketio_origin_check`), and its
long-polling posts are ``text/plain`` by design.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from server.auth_routes import json_error
from server.forwarded import Network, allowed_origins, origin_allowed

__all__ = ["MULTIPART_ROUTES", "csrf_middleware"]

_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# (method, route pattern) of the routes whose body is multipart/form-data.
MULTIPART_ROUTES = frozenset({("POST", "/api/tickets/{ticket_id}/files")})
_EXEMPT_PREFIXES = ("/socket.io/",)


def _has_body(request: web.Request) -> bool:
    return bool(request.content_length) or "chunked" in request.headers.get(
        "Transfer-Encoding", "").lower()


def refusal(request: web.Request, allowed: Sequence[str],
            networks: Sequence[Network]) -> web.Response | None:
    """The answer refusing ``request``, or None if it may go on (``allowed`` as
    :func:`server.forwarded.allowed_origins` gives it)."""
    if request.method not in _STATE_CHANGING or request.path.startswith(_EXEMPT_PREFIXES):
        return None
    origin = request.headers.get("Origin")
    if origin is None:
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site.strip().lower() != "same-origin":
            return json_error(403, "origin_forbidden",
                              "a browser request without Origin from another site")
    elif origin.strip().lower() == "null" or not origin_allowed(origin, request, allowed,
                                                                networks):
        return json_error(403, "origin_forbidden", "requests from this origin are not allowed")
    route = request.match_info.route.resource
    pattern = route.canonical if route is not None else request.path
    if (request.method, pattern) in MULTIPART_ROUTES:
        return None  # the handler checks its multipart body
    if _has_body(request) and request.content_type != "application/json":
        return json_error(415, "unsupported_media_type",
                          "send the body as Content-Type: application/json")
    return None


def csrf_middleware(allowed: Sequence[str], networks: Sequence[Network]) -> Middleware:
    """The two checks above, for ``HALL_ALLOWED_ORIGINS`` and ``HALL_TRUSTED_PROXIES``."""
    allowed = allowed_origins(allowed)
    networks = tuple(networks)

    @web.middleware
    async def csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = refusal(request, allowed, networks)
        if refused is not None:
            return refused
        return await handler(request)

    return csrf
