"""The client's address behind a reverse proxy (nginx in deploy/compose.yaml).

Behind a proxy every request comes from the proxy's address, so the log-in failure throttle
(keyed by address) would lock everybody out together after ten bad passwords anywhere. When the
direct peer is one of ``HALL_TRUSTED_PROXIES``, the client is the right-most address of
``X-Forwarded-For`` that is not itself a trusted proxy (addresses further left are whatever the
client sent and prove nothing). Without trusted proxies the header is ignored: anyone could
send it.

The same holds for the hall's own origin (the same-origin check of the real-time handshake and
of state-changing HTTP requests, :mod:`server.csrf`): ``X-Forwarded-Proto`` and
``X-Forwarded-Host`` name the origin the browser saw only when the direct peer is a trusted
proxy; otherwise the origin is the request's own scheme and ``Host``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from server.config import Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Sequence[str]) -> tuple[Network, ...]:
    """Addresses or CIDR blocks; ValueError names the one that is neither."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items)


def proxy_networks(settings: Settings) -> tuple[Network, ...]:
    """``HALL_TRUSTED_PROXIES``, parsed."""
    return parse_networks(settings.trusted_proxies)


def in_networks(address: str | None, networks: Sequence[Network]) -> bool:
    """Whether ``address`` is in one of ``networks``; an address that is not an IP (a Unix
    socket, a closed transport) is in none."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(peer: str | None, forwarded_for: str | None,
                   networks: Sequence[Network]) -> str | None:
    """The client's address given the direct peer and its X-Forwarded-For header."""
    if not networks or not forwarded_for or not in_networks(peer, networks):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not in_networks(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage from an untrusted hop: keep the proxy's address
    return hops[0] if hops else peer


def forwarded_middleware(networks: Sequence[Network]) -> Middleware:
    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        remote = client_address(request.remote, request.headers.get("X-Forwarded-For"),
                                networks)
        if remote != request.remote and remote is not None:
            request = request.clone(remote=remote)
        return await handler(request)

    return forwarded


def peer_address(request: web.BaseRequest) -> str | None:
    """The direct peer of the connection (``request.remote`` may have been rewritten from
    X-Forwarded-For by :func:`forwarded_middleware`)."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, (tuple, list)) and peer:
        return str(peer[0])
    return None  # closed, or a Unix socket: no address to trust


def _first(value: str) -> str:
    return value.split(",")[0].strip()


def own_origin(request: web.BaseRequest, networks: Sequence[Network]) -> str:
    """The hall's origin as the client sees it, ``scheme://host[:port]``."""
    scheme, host = request.scheme, request.host
    if networks and in_networks(peer_address(request), networks):
        scheme = _first(request.headers.get("X-Forwarded-Proto", "")) or scheme
        host = _first(request.headers.get("X-Forwarded-Host", "")) or host
    return f"{scheme}://{host}".lower()


def allowed_origins(items: Sequence[str]) -> tuple[str, ...]:
    """``HALL_ALLOWED_ORIGINS`` as :func:`origin_allowed` takes it: lowercased, once at
    build."""
    return tuple(item.lower() for item in items)


def origin_allowed(origin: str, request: web.BaseRequest, allowed: Sequence[str],
                   networks: Sequence[Network]) -> bool:
    """Whether ``origin`` (an Origin header) may act on the hall: its own origin, one of
    ``allowed`` (HALL_ALLOWED_ORIGINS via :func:`allowed_origins`), or any if that is
    ``*``."""
    if tuple(allowed) == ("*",):
        return True
    origin = origin.strip().rstrip("/").lower()
    return origin in allowed or origin == own_origin(request, networks)


def socketio_origin_check(allowed: Sequence[str], networks: Sequence[Network]
                          ) -> Callable[[str | None, dict[str, Any]], bool]:
    """python-socketio's ``cors_allowed_origins`` callable with the rule above (its own
    same-origin check believes X-Forwarded-Host from anyone)."""
    allowed = allowed_origins(allowed)

    def check(origin: str | None, environ: dict[str, Any]) -> bool:
        if not origin:
            return True  # not a browser: nothing to protect (and Engine.IO does not ask)
        request = environ.get("aiohttp.request")
        if not isinstance(request, web.BaseRequest):
            return False
        return origin_allowed(origin, request, allowed, networks)

    return check
