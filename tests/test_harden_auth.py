"""Issue 11, items 4, 5 and parts of 16: sessions that end on the server (logout, refresh,
expiry), a throttle per account and per address shared by every process, the CSRF checks of
state-changing HTTP requests, tokens from the future, throttled claim-code look-ups, and the
same-origin check behind (and not behind) a trusted proxy."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
import socketio

from rooms.errors import AuthError, ThrottledError
from server import keys
from signaling.auth_state import AuthState, MemoryAuthState, RedisAuthState
from signaling.identity import AppIdentityVerifier, Principal, Role, TokenService
from signaling.throttle import AuthThrottle
from tests.redisproc import RedisServer, drop_prefix, new_prefix
from tests.signalkit import PASSWORD, Client, LiveHall, clients, hall_backend, live_hall

SECRET = "s" * 32
IDP_KEY = "i" * 32
CLERK = Principal(Role.CLERK, "clerk01", "王芳")
PROXY = {"HALL_TRUSTED_PROXIES": "127.0.0.1"}  # lets a test speak from many addresses


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _login(hall: LiveHall, username: str, password: str, *, address: str | None = None,
                 path: str = "/api/auth/login", body: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any],
                                                                   dict[str, str]]:
    sent = {**({"X-Forwarded-For": address} if address else {}), **(headers or {})}
    payload = body if body is not None else {"username": username, "password": password}
    async with aiohttp.ClientSession() as http, http.post(
            hall.url + path, json=payload, headers=sent) as r:
        return r.status, await r.json(), dict(r.headers)


async def _refused(hall: LiveHall, auth: dict[str, Any],
                   headers: dict[str, str] | None = None) -> Any:
    """The connect_error data of a refused handshake."""
    c = Client()
    seen: list[Any] = []
    c.sio.on("connect_error", seen.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await c.connect(hall.url, auth, headers=headers)
    await c.close()
    assert seen, "refused without connect_error"
    # python-socketio's client hands over {message, data}; socket.io-client's err.data is
    # the inner object.
    return seen[0]["data"]


async def _closed(c: Client) -> None:
    """Wait (at most 5 s) until the server has closed the client's connection."""
    for _ in range(100):
        if not c.sio.connected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the server did not close the connection")


# -- item 4: the end of a session --------------------------------------------------------------


@pytest.mark.usefixtures(hall_backend.__name__)
async def test_a_logged_out_token_stops_working_and_its_socket_closes() -> None:
    """clerk.logout revokes the socket's token (a new handshake with it is refused) and the
    socket is told session.expired {code: logged_out}, then closed (embedded and Redis)."""
    async with live_hall() as hall, clients(1) as (clerk,):
        token = await hall.clerk_token()
        await clerk.connect(hall.url, {"token": token})
        await clerk.next("welcome")
        assert (await clerk.call("clerk.logout"))["ok"] is True
        ended = await clerk.next("session.expired")
        assert ended["code"] == "logged_out"
        await _closed(clerk)
        refused = await _refused(hall, {"token": token})
        assert refused["code"] == "unauthenticated"
        # A fresh login works.
        async with clients(1) as (again,):
            await again.connect(hall.url, {"token": await hall.clerk_token()})
            await again.next("welcome")


async def test_refresh_retires_the_old_token() -> None:
    """auth.refresh gives a new token; the one it replaces no longer connects."""
    async with live_hall() as hall, clients(1) as (kiosk,):
        old = await hall.kiosk_token()
        await kiosk.connect(hall.url, {"token": old})
        await kiosk.next("welcome")
        fresh = await kiosk.call("auth.refresh")
        assert fresh["ok"] and fresh["token"] != old
        await kiosk.close()
        assert (await _refused(hall, {"token": old}))["code"] == "unauthenticated"
        async with clients(1) as (again,):
            await again.connect(hall.url, {"token": fresh["token"]})
            assert (await again.next("welcome"))["participant"] == "kiosk:XH-001"


async def test_a_socket_is_closed_when_its_token_expires_unless_refreshed() -> None:
    """A clerk socket whose token expires is told session.expired {code: token_expired} and
    closed; a supervisor socket that refreshed in time stays past its first token's end."""
    async with live_hall({"HALL_TOKEN_TTL_S": "3"}) as hall, clients(2) as (sup, clerk):
        started = time.time()
        await sup.connect(hall.url, {"token": await hall.clerk_token("supervisor")})
        await sup.next("welcome")
        # Logged in after the supervisor's first token: expires after it.
        await clerk.connect(hall.url, {"token": await hall.clerk_token()})
        await clerk.next("welcome")
        # Half-way through its first token's life: the new one outlives the clerk's by ~1 s.
        await asyncio.sleep(max(0.0, started + 1.5 - time.time()))
        refreshed = await sup.call("auth.refresh")
        assert refreshed["ok"] and refreshed["expires_at"] > started + 4
        ended = await clerk.next("session.expired", within=6)
        assert ended["code"] == "token_expired"
        await _closed(clerk)
        # The fence: the clerk's token outlived the supervisor's first one.
        assert sup.sio.connected and "session.expired" not in sup.names()
        assert (await sup.call("wall.snapshot"))["ok"] is True


async def test_logout_ends_every_earlier_token_of_the_account() -> None:
    """revoke_all (clerk.logout) refuses every token of that principal issued before it,
    those of others not, and a log-in right after it works."""
    clock = FakeClock()
    tokens = TokenService(SECRET, clock=clock)
    earlier, _ = tokens.issue(CLERK)
    other, _ = tokens.issue(Principal(Role.CLERK, "clerk02", "李"))
    clock.now += 5
    await tokens.revoke_all(CLERK)
    with pytest.raises(AuthError, match="revoked"):
        await tokens.verify_live(earlier)
    assert (await tokens.verify_live(other)).principal.subject == "clerk02"
    fresh, _ = tokens.issue(CLERK)
    assert (await tokens.verify_live(fresh)).principal == CLERK


async def test_revocations_are_shared_by_processes(redis_server: RedisServer) -> None:
    """A token revoked through one process's store is refused by another's (Redis mode)."""
    prefix = new_prefix()
    a, b = (RedisAuthState(redis_server.url, prefix=prefix) for _ in range(2))
    try:
        one = TokenService(SECRET, revocations=a)
        two = TokenService(SECRET, revocations=b)
        token, credential = one.issue_credential(CLERK)
        assert (await two.verify_live(token)).principal == CLERK
        await one.revoke(credential)
        with pytest.raises(AuthError, match="revoked"):
            await two.verify_live(token)
        assert two.verify(token) == CLERK  # the signature is still good: only verify_live knows
    finally:
        await a.close()
        await b.close()
        drop_prefix(redis_server.url, prefix)


async def test_two_processes_share_the_throttle_and_the_revocations(
        redis_server: RedisServer) -> None:
    """Two hall processes on one Redis: failures counted by one throttle the account on the
    other, and a token logged out on one is refused by the other."""
    prefix = new_prefix()
    env = {"HALL_REDIS_URL": redis_server.url, "HALL_REDIS_PREFIX": prefix,
           "HALL_SECRET_KEY": "two-process-test-secret-" + "x" * 16,
           "HALL_LOGIN_FAILURE_LIMIT": "3"}
    try:
        async with live_hall(env) as a, live_hall(env) as b, clients(1) as (clerk,):
            for _ in range(3):
                assert (await _login(a, "clerk01", "typo"))[0] == 401
            assert (await _login(b, "clerk01", PASSWORD))[0] == 429
            token = await a.clerk_token("clerk02")
            await clerk.connect(a.url, {"token": token})
            await clerk.next("welcome")
            assert (await clerk.call("clerk.logout"))["ok"] is True
            await clerk.next("session.expired")
            assert (await _refused(b, {"token": token}))["code"] == "unauthenticated"
    finally:
        drop_prefix(redis_server.url, prefix)


# -- the state port: one contract, both backends -----------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def auth_state(request: pytest.FixtureRequest) -> AsyncIterator[AuthState]:
    if request.param == "memory":
        yield MemoryAuthState()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = new_prefix()
    state = RedisAuthState(server.url, prefix=prefix)
    yield state
    await state.close()
    drop_prefix(server.url, prefix)


async def test_state_counts_and_forgets(auth_state: AuthState) -> None:
    """strike counts, strikes reads, clear forgets; flags keep their value until their TTL."""
    now = time.time()
    assert await auth_state.strikes("k", now) is None
    first = await auth_state.strike("k", now, 60, slide=False)
    second = await auth_state.strike("k", now + 1, 60, slide=False)
    assert (first.count, second.count) == (1, 2)
    assert second.expires_at == pytest.approx(now + 60, abs=1.5)  # fixed from the first
    slid = await auth_state.strike("s", now, 60, slide=True)
    assert slid.count == 1
    found = await auth_state.strikes("k", now + 1)
    assert found is not None and found.count == 2 and found.last == pytest.approx(now + 1)
    await auth_state.clear("k")
    assert await auth_state.strikes("k", now) is None
    assert not await auth_state.flagged("f", now)
    await auth_state.flag("f", now, 60)
    assert await auth_state.flagged("f", now)
    await auth_state.flag("v", now, 60, value=now - 0.5)
    assert await auth_state.flag_value("v", now) == now - 0.5
    await auth_state.flag("gone", now, 0.05)
    await asyncio.sleep(0.1)
    assert not await auth_state.flagged("gone", time.time())


async def test_throttle_counters_are_shared_by_processes(redis_server: RedisServer) -> None:
    """Failures counted by one process throttle the same account in another (Redis mode)."""
    prefix = new_prefix()
    a, b = (RedisAuthState(redis_server.url, prefix=prefix) for _ in range(2))
    try:
        one, two = AuthThrottle(a, limit=3), AuthThrottle(b, limit=3)
        for _ in range(3):
            await one.login_check("user:clerk01", "1.2.3.4")
            await one.login_failed("user:clerk01", "1.2.3.4")
        with pytest.raises(ThrottledError):
            await two.login_check("user:clerk01", "1.2.3.4")
        assert await two.failures("1.2.3.4") == 3
    finally:
        await a.close()
        await b.close()
        drop_prefix(redis_server.url, prefix)


# -- item 5: a throttle per account and per address ---------------------------------------------


async def test_account_backoff_grows_and_ends() -> None:
    """An account's back-off after the limit doubles with each failure, up to the window; it
    applies to the addresses that failed on it, and the owner gets in once it has passed."""
    clock = FakeClock(1000.0)
    throttle = AuthThrottle(MemoryAuthState(), limit=3, window_s=1800, backoff_base_s=60,
                            clock=clock)
    for _ in range(3):
        await throttle.login_check("user:a", "6.6.6.6")
        await throttle.login_failed("user:a", "6.6.6.6")
    with pytest.raises(ThrottledError) as caught:
        await throttle.login_check("user:a", "6.6.6.6")
    assert caught.value.retry_after_s == 60
    await throttle.login_check("user:a", "7.7.7.7")  # a clean address may try
    clock.now += 61
    await throttle.login_check("user:a", "6.6.6.6")  # the back-off is over
    await throttle.login_failed("user:a", "6.6.6.6")
    with pytest.raises(ThrottledError) as caught:
        await throttle.login_check("user:a", "6.6.6.6")
    assert caught.value.retry_after_s == 120  # doubled
    assert [throttle.backoff_s(n) for n in (2, 3, 4, 5, 9, 20)] == [
        0, 60, 120, 240, 1800, 1800]


@pytest.mark.usefixtures(hall_backend.__name__)
async def test_a_mistyped_password_behind_a_nat_locks_out_nobody_else() -> None:
    """Ten bad passwords for clerk01 from a service centre's address: clerk01 backs off there,
    but clerk02's right password and the kiosk's right secret from the same address pass, and
    clerk01's right password passes from a clean address."""
    async with live_hall(PROXY) as hall:
        nat = "203.0.113.10"
        for _ in range(10):
            status, _, _ = await _login(hall, "clerk01", "typo", address=nat)
            assert status == 401
        status, body, headers = await _login(hall, "clerk01", PASSWORD, address=nat)
        assert status == 429 and body["error"]["code"] == "too_many_attempts"
        assert body["error"]["retry_after_s"] == int(headers["Retry-After"]) >= 1
        assert (await _login(hall, "clerk02", PASSWORD, address=nat))[0] == 200
        secret = hall.app[keys.KIOSK_KEYS].demo_secret("XH-001")
        kiosk = await _login(hall, "", "", address=nat, path="/api/auth/kiosk",
                             body={"service_point_id": "XH-001", "secret": secret})
        assert kiosk[0] == 200
        assert (await _login(hall, "clerk01", PASSWORD, address="198.51.100.1"))[0] == 200


async def test_an_address_spraying_accounts_is_stopped_but_known_colleagues_pass() -> None:
    """An address with address_limit failures over many accounts is refused for accounts that
    never logged in from it; one that did (a colleague behind the same NAT) still gets in."""
    async with live_hall({**PROXY, "HALL_LOGIN_FAILURE_LIMIT": "2"}) as hall:
        nat = "203.0.113.20"
        assert (await _login(hall, "clerk02", PASSWORD, address=nat))[0] == 200
        sprayed = [f"clerk0{i}" for i in range(3, 8)] + ["supervisor"]
        statuses = [(await _login(hall, name, "guess", address=nat))[0]
                    for name in sprayed * 2]
        assert statuses[:10] == [401] * 10  # 5 x limit: the address limit
        assert set(statuses[10:]) == {429}
        assert (await _login(hall, "clerk01", PASSWORD, address=nat))[0] == 429
        assert (await _login(hall, "clerk02", PASSWORD, address=nat))[0] == 200
        assert (await _login(hall, "clerk01", PASSWORD, address="203.0.113.21"))[0] == 200


async def test_valid_tokens_pass_from_a_throttled_address() -> None:
    """After ten bad socket tokens from an address, a valid token from it still connects; a
    bad one is refused as throttled, with retry_after_s in connect_error.data."""
    async with live_hall() as hall:
        for _ in range(10):
            assert (await _refused(hall, {"token": "bad"}))["code"] == "unauthenticated"
        throttled = await _refused(hall, {"token": "bad"})
        assert throttled["code"] == "too_many_attempts"
        assert 1700 <= throttled["retry_after_s"] <= 1800
        async with clients(1) as (clerk,):
            await clerk.connect(hall.url, {"token": await hall.clerk_token()})
            assert (await clerk.next("welcome"))["participant"] == "clerk:clerk01"


# -- item 5: Content-Type and Origin on state-changing requests ---------------------------------


async def _raw_post(hall: LiveHall, path: str, data: bytes | str,
                    headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(hall.url + path, data=data,
                                                          headers=headers) as r:
        return r.status, await r.json()


async def test_text_plain_logins_are_refused_and_cannot_lock_the_login() -> None:
    """A cross-site text/plain post (what any page can send) is 415 and counts no failure:
    twenty of them leave the real login working."""
    async with live_hall() as hall:
        forged = json.dumps({"username": "clerk01", "password": "x"})
        for _ in range(20):
            status, body = await _raw_post(hall, "/api/auth/login", forged,
                                           {"Content-Type": "text/plain"})
            assert status == 415
            assert body["error"]["code"] == "unsupported_media_type"
        assert await hall.app[keys.THROTTLE].failures("127.0.0.1") == 0
        assert (await _login(hall, "clerk01", PASSWORD))[0] == 200


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Origin": "http://evil.test"}, 403),
    ({"Origin": "null"}, 403),
    ({"Sec-Fetch-Site": "cross-site"}, 403),          # a browser hiding its origin
    ({"Sec-Fetch-Site": "same-origin"}, 200),
    ({}, 200),                                        # a program (the kiosk agent, curl)
])
async def test_login_origin_rule(headers: dict[str, str], expected: int) -> None:
    """A foreign Origin is 403 origin_forbidden; no Origin passes unless Sec-Fetch-Site says
    another site; the hall's own origin passes."""
    async with live_hall() as hall:
        status, body, _ = await _login(hall, "clerk01", PASSWORD, headers=headers)
        assert status == expected, body
        if expected == 403:
            assert body["error"]["code"] == "origin_forbidden"
        own = await _login(hall, "clerk01", PASSWORD, headers={"Origin": hall.url})
        assert own[0] == 200


async def test_any_origin_setting_still_refuses_a_null_origin() -> None:
    """With HALL_ALLOWED_ORIGINS=* a foreign origin may log in, an opaque (null) one not."""
    async with live_hall({"HALL_ALLOWED_ORIGINS": "*"}) as hall:
        assert (await _login(hall, "clerk01", PASSWORD,
                             headers={"Origin": "https://other.test"}))[0] == 200
        assert (await _login(hall, "clerk01", PASSWORD, headers={"Origin": "null"}))[0] == 403


async def test_file_routes_check_the_origin_but_uploads_stay_multipart() -> None:
    """An upload or delete from a foreign origin is 403; an upload from the hall's own origin
    is not refused for being multipart."""
    async with live_hall() as hall:
        token = await hall.clerk_token()
        url = hall.url + "/api/tickets/t-none/files"
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            form = aiohttp.FormData()
            form.add_field("file", b"%PDF-1.4\n", filename="a.pdf",
                           content_type="application/pdf")
            async with http.post(url, data=form,
                                 headers={**auth, "Origin": "http://evil.test"}) as r:
                assert r.status == 403
                assert (await r.json())["error"]["code"] == "origin_forbidden"
            async with http.delete(url + "/f1",
                                   headers={**auth, "Origin": "http://evil.test"}) as r:
                assert r.status == 403
            form = aiohttp.FormData()
            form.add_field("file", b"%PDF-1.4\n", filename="a.pdf",
                           content_type="application/pdf")
            async with http.post(url, data=form, headers={**auth, "Origin": hall.url}) as r:
                assert r.status not in (403, 415)


# -- item 16: tokens from the future, claim codes, X-Forwarded-Host ----------------------------


def test_hall_tokens_issued_in_the_future_are_refused() -> None:
    """iat or nbf more than 30 s ahead makes a hall token invalid; within the leeway it is
    accepted."""
    clock = FakeClock()
    tokens = TokenService(SECRET, clock=clock)
    base = {"sub": "clerk01", "role": "clerk", "name": "x", "iss": "virtual-hall",
            "exp": clock.now + 600, "jti": "j1"}
    for claim in ("iat", "nbf"):
        future = jwt.encode({**base, claim: clock.now + 120}, SECRET, algorithm="HS256")
        with pytest.raises(AuthError, match=r"^invalid token$"):
            tokens.verify(future)
        close = jwt.encode({**base, claim: clock.now + 10}, SECRET, algorithm="HS256")
        assert tokens.verify(close).subject == "clerk01"


def test_identity_tokens_issued_in_the_future_are_refused() -> None:
    """The same for the app's identity tokens."""
    clock = FakeClock()
    verifier = AppIdentityVerifier(IDP_KEY, clock=clock)
    base = {"sub": "r1", "iss": "suishenban", "exp": clock.now + 600}
    for claim in ("iat", "nbf"):
        future = jwt.encode({**base, claim: clock.now + 120}, IDP_KEY, algorithm="HS256")
        with pytest.raises(AuthError, match="invalid identity token"):
            verifier.verify(future)
        close = jwt.encode({**base, claim: clock.now + 10}, IDP_KEY, algorithm="HS256")
        assert verifier.verify(close).subject == "r1"


async def test_failed_claim_code_lookups_are_throttled() -> None:
    """Ten failed case.lookup calls from one principal, then too_many_attempts with
    retry_after_s."""
    async with live_hall() as hall, clients(1) as (kiosk,):
        await kiosk.connect(hall.url, {"token": await hall.kiosk_token()})
        codes = [(await kiosk.call("case.lookup", {"claim_code": f"ZZZZZZ{i:02d}"}))
                 for i in range(11)]
        assert [c["error"]["code"] for c in codes[:10]] == ["not_found"] * 10
        assert codes[10]["error"]["code"] == "too_many_attempts"
        assert codes[10]["error"]["retry_after_s"] >= 1


async def test_x_forwarded_host_is_believed_only_from_a_trusted_proxy() -> None:
    """A foreign Origin dressed up with X-Forwarded-Host/Proto is refused from an untrusted
    peer, on the handshake and on a login; from a trusted proxy it is the hall's origin."""
    dressed = {"Origin": "https://evil.test", "X-Forwarded-Host": "evil.test",
               "X-Forwarded-Proto": "https"}
    async with live_hall() as hall:
        token = await hall.clerk_token()
        c = Client()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await c.connect(hall.url, {"token": token}, headers=dressed)
        await c.close()
        assert (await _login(hall, "clerk01", PASSWORD, headers=dressed))[0] == 403
    async with live_hall(PROXY) as hall, clients(1) as (c,):
        await c.connect(hall.url, {"token": await hall.clerk_token()}, headers=dressed)
        await c.next("welcome")
        assert (await _login(hall, "clerk01", PASSWORD, headers=dressed))[0] == 200
