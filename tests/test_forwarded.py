"""The client's address behind a trusted reverse proxy (HALL_TRUSTED_PROXIES)."""

from __future__ import annotations

import aiohttp
import pytest

from server.config import Settings
from server.forwarded import client_address, parse_networks
from tests.signalkit import PASSWORD, live_hall

PROXY = parse_networks(["127.0.0.1", "10.0.0.0/8"])


@pytest.mark.parametrize(("peer", "header", "expected"), [
    ("127.0.0.1", "203.0.113.7", "203.0.113.7"),              # through the proxy
    ("127.0.0.1", "6.6.6.6, 203.0.113.7", "203.0.113.7"),     # a forged left part is ignored
    ("127.0.0.1", "203.0.113.7, 10.1.2.3", "203.0.113.7"),    # two trusted hops
    ("198.51.100.9", "203.0.113.7", "198.51.100.9"),          # not from a proxy: ignored
    ("127.0.0.1", None, "127.0.0.1"),                          # no header
    ("127.0.0.1", "not-an-address", "127.0.0.1"),              # garbage: the proxy's address
    ("127.0.0.1", "2001:db8::1", "2001:db8::1"),
])
def test_client_address(peer: str, header: str | None, expected: str) -> None:
    """The right-most untrusted X-Forwarded-For hop, only when the peer is a trusted proxy."""
    assert client_address(peer, header, PROXY) == expected


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    """Nobody is trusted by default: the peer's address stands."""
    assert client_address("127.0.0.1", "203.0.113.7", ()) == "127.0.0.1"


def test_a_bad_trusted_proxy_setting_is_refused() -> None:
    """HALL_TRUSTED_PROXIES must be addresses or CIDR blocks."""
    with pytest.raises(Exception, match="HALL_TRUSTED_PROXIES"):
        Settings.from_env({"HALL_TRUSTED_PROXIES": "nginx"})


async def _fail_logins(url: str, forwarded: str, n: int) -> list[int]:
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(n):
            async with http.post(url + "/api/auth/login",
                                 json={"username": "clerk01", "password": "wrong"},
                                 headers={"X-Forwarded-For": forwarded}) as response:
                statuses.append(response.status)
        async with http.post(url + "/api/auth/login",
                             json={"username": "clerk01", "password": PASSWORD},
                             headers={"X-Forwarded-For": forwarded}) as response:
            statuses.append(response.status)
        return statuses


async def test_behind_a_trusted_proxy_one_client_is_throttled_not_all() -> None:
    """Ten bad passwords from one client behind the proxy do not lock out another client."""
    env = {"HALL_TRUSTED_PROXIES": "127.0.0.1", "HALL_LOGIN_FAILURE_LIMIT": "3"}
    async with live_hall(env) as hall:
        assert await _fail_logins(hall.url, "203.0.113.7", 3) == [401, 401, 401, 429]
        assert (await _fail_logins(hall.url, "203.0.113.8", 0)) == [200]


async def test_an_untrusted_peer_cannot_dodge_the_throttle_with_the_header() -> None:
    """Without trusted proxies, a changing X-Forwarded-For does not reset the budget."""
    async with live_hall({"HALL_LOGIN_FAILURE_LIMIT": "3"}) as hall:
        assert await _fail_logins(hall.url, "203.0.113.7", 3) == [401, 401, 401, 429]
        assert (await _fail_logins(hall.url, "203.0.113.8", 0)) == [429]
