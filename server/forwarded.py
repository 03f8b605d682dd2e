"""The client's address behind a reverse proxy (nginx in deploy/compose.yaml).

Behind a proxy every request comes from the proxy's address, so the log-in failure throttle
(keyed by address) would lock everybody out together after ten bad passwords anywhere. When the
direct peer is one of ``HALL_TRUSTED_PROXIES``, the client is the right-most address of
``X-Forwarded-For`` that is not itself a trusted proxy (addresses further left are whatever the
client sent and prove nothing). Without trusted proxies the header is ignored: anyone could
send it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Sequence[str]) -> tuple[Network, ...]:
    """Addresses or CIDR blocks; ValueError names the one that is neither."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items)


def _trusted(address: str | None, networks: Sequence[Network]) -> bool:
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
    if not networks or not forwarded_for or not _trusted(peer, networks):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
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
