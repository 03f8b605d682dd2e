"""Issue 11, items 7, 8, 9 and 14: undecodable payloads, per-principal rate limits and file
quotas, a kiosk's access to the files of a finished session, and log injection."""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest

from rooms.errors import RateLimitedError
from rooms.logsafe import safe_log
from server import keys
from signaling.ratelimit import Rate, RateLimiter, RateLimits
from tests.signalkit import Client, LiveHall, clients, hall_backend, live_hall

# Every test runs on an embedded hall and on a Redis-mode one.
pytestmark = pytest.mark.usefixtures(hall_backend.__name__)

MATTER = "flexible_employment_registration"  # served by clerk01 and clerk02 (hrss)


# -- a raw Engine.IO websocket ------------------------------------------------------------------


class RawSocket:
    """Socket.IO spoken by hand over Engine.IO v4's websocket transport, to send frames that
    no well-behaved client library would."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.http = http
        self.ws = ws
        self.frames: list[str] = []

    async def send(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)

    async def frame(self, prefix: str, within: float = 5.0) -> str:
        """The next text frame starting with ``prefix`` (answering pings meanwhile)."""
        return await self.frame_matching(lambda text: text.startswith(prefix), within)

    async def frame_matching(self, match: Callable[[str], bool], within: float = 5.0) -> str:
        for i, kept in enumerate(self.frames):
            if match(kept):
                return self.frames.pop(i)
        async with asyncio.timeout(within):
            while True:
                msg = await self.ws.receive()
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                text = str(msg.data)
                if text == "2":
                    await self.ws.send_str("3")
                    continue
                if match(text):
                    return text
                self.frames.append(text)

    async def welcome(self) -> Any:
        """The ``welcome`` event (the server may ask for its ack: ``42<id>["welcome",…]``)."""
        def is_welcome(text: str) -> bool:
            return text.startswith("42") and text[2:].lstrip("0123456789").startswith(
                '["welcome"')

        frame = await self.frame_matching(is_welcome)
        return orjson.loads(frame[2:].lstrip("0123456789"))[1]

    async def ack(self, ack_id: int) -> Any:
        frame = await self.frame(f"43{ack_id}[")
        return orjson.loads(frame[len(f"43{ack_id}"):])[0]

    async def call(self, ack_id: int, event: str, payload: Any) -> Any:
        await self.send(f"42{ack_id}" + orjson.dumps([event, payload]).decode())
        return await self.ack(ack_id)


@asynccontextmanager
async def raw_socket(hall: LiveHall, auth: dict[str, Any] | None) -> AsyncIterator[RawSocket]:
    url = hall.url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        raw = RawSocket(http, ws)
        opened = await ws.receive_str()
        assert opened.startswith("0{"), opened
        await raw.send("40" + (orjson.dumps(auth).decode() if auth else ""))
        connected = await raw.frame("40")
        assert '"sid"' in connected, connected
        yield raw


@asynccontextmanager
async def resident_raw_socket(hall: LiveHall, resident_id: str) -> AsyncIterator[RawSocket]:
    """A raw socket authenticated as the resident, its ``welcome`` already received."""
    token = await hall.resident_id_token(resident_id)
    async with raw_socket(hall, {"id_token": token}) as raw:
        await raw.welcome()
        yield raw


# Each: (description, frame with ack id {n}). Hand-written JSON the server cannot decode.
BAD_FRAMES = [
    ("NaN", '42{n}["ticket.position",{{"ticket_id":NaN}}]'),
    ("Infinity", '42{n}["ticket.position",{{"ticket_id":Infinity}}]'),
    ("1e400", '42{n}["ticket.position",{{"ticket_id":1e400}}]'),
    # orjson reads an integer beyond 64 bits as a float: decoded, then refused by the schema.
    ("2**70", '42{n}["ticket.position",{{"ticket_id":' + str(2**70) + "}}]"),
    ("lone surrogate", '42{n}["ticket.position",{{"ticket_id":"\\ud800"}}]'),
    ("300 deep", '42{n}["ticket.position",' + "[" * 300 + "]" * 300 + "]"),
    ("not a list", '42{n}{{"ticket.position":1}}'),
]


async def _assert_refused_one_by_one(hall: LiveHall, raw: RawSocket,
                                     caplog: pytest.LogCaptureFixture) -> None:
    stats = hall.app[keys.HUB].stats
    for n, (what, template) in enumerate(BAD_FRAMES, start=1):
        before = stats["undecodable"]
        caplog.clear()
        await raw.send(template.format(n=n))
        reply = await raw.ack(n)
        counted = what != "2**70"
        # Decoded, the float then meets the schema, or first the missing hello.
        codes = ("invalid_payload",) if counted else ("invalid_payload", "unauthenticated")
        assert reply["ok"] is False and reply["error"]["code"] in codes, (what, reply)
        assert stats["undecodable"] == before + counted, what
        records = [r for r in caplog.records if r.name.startswith(("hall", "socketio",
                                                                    "engineio"))]
        assert len(records) == counted, (what, [r.getMessage() for r in records])
        for record in records:
            assert record.exc_info is None and "\n" not in record.getMessage(), what
            assert len(record.getMessage()) < 300, what
    # A binary event: refused once, its attachment swallowed, no ack id lost.
    before = stats["undecodable"]
    caplog.clear()
    await raw.send('451-99["ticket.position",{"ticket_id":{"_placeholder":true,"num":0}}]')
    await raw.send(b"\x01\x02\x03")
    reply = await raw.ack(99)
    assert reply["error"]["code"] == "invalid_payload", reply
    # The connection stays usable, and the attachment was not taken for a packet.
    fine = await raw.call(100, "ticket.position", {"ticket_id": "nope"})
    assert fine["ok"] is False and fine["error"]["code"] != "invalid_payload", fine
    assert stats["undecodable"] == before + 1
    assert not [r for r in caplog.records if r.exc_info is not None]


async def test_undecodable_payloads_get_invalid_payload_from_an_authenticated_socket(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with live_hall() as hall, resident_raw_socket(hall, "r-raw") as raw:
        await _assert_refused_one_by_one(hall, raw, caplog)


async def test_undecodable_payloads_get_invalid_payload_before_authentication(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with live_hall() as hall, raw_socket(hall, None) as raw:
        await _assert_refused_one_by_one(hall, raw, caplog)
        # Still able to authenticate afterwards.
        token = await hall.resident_id_token("r-late")
        welcome = await raw.call(7, "hello", {"id_token": token})
        assert welcome["ok"] is True, welcome


async def test_undecodable_connect_is_refused_with_a_code() -> None:
    async with live_hall() as hall:
        url = hall.url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.receive_str()
            await ws.send_str('40{"token":NaN}')
            raw = RawSocket(http, ws)
            refused = await raw.frame("44")
            assert orjson.loads(refused[2:])["data"]["code"] == "invalid_payload"
        assert hall.app[keys.HUB].stats["undecodable"] == 1


# -- item 14: log injection -------------------------------------------------------------------


def test_safe_log_escapes_control_characters_and_truncates() -> None:
    assert safe_log("x\nFAKE LOG LINE") == "x\\nFAKE LOG LINE"
    assert "\r" not in safe_log("a\r\nb") and "\u202e" not in safe_log("id\u202egnp.exe")
    assert safe_log("plain 居民") == "plain 居民"
    long = safe_log("y" * 1000)
    assert len(long) <= 201 and long.endswith("…")


async def test_a_newline_in_an_event_name_writes_one_escaped_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with live_hall() as hall, resident_raw_socket(hall, "r-log") as raw:
        caplog.clear()
        # Deep nesting used to reach the catch-all's traceback with the name in it.
        await raw.send('421["x\\nFAKE LOG LINE",' + "[" * 300 + "]" * 300 + "]")
        reply = await raw.ack(1)
        assert reply["ok"] is False
        # A second, decodable event under the same name: refused as unknown.
        await raw.send('422["x\\nFAKE LOG LINE",{}]')
        assert (await raw.ack(2))["error"]["code"] == "unknown_event"
    mentions = [r for r in caplog.records if "FAKE LOG LINE" in r.getMessage()]
    assert len(mentions) == 1, [r.getMessage() for r in mentions]
    assert "\n" not in mentions[0].getMessage() and mentions[0].exc_info is None
    for record in caplog.records:
        assert "\nFAKE" not in record.getMessage()


async def test_a_newline_in_a_request_path_is_escaped_in_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with live_hall() as hall, aiohttp.ClientSession() as http:
        async with http.post(hall.url + "/api/auth/login%0AFAKE",
                             json={"username": "clerk01", "password": "wrong"}) as r:
            await r.read()
        async with http.post(hall.url + "/api/auth/login",
                             json={"username": "x\nFAKE", "password": "wrong"}) as r:
            await r.read()
    for record in caplog.records:
        assert "\nFAKE" not in record.getMessage(), record.getMessage()


# -- item 8: rate limits ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_refills_and_says_when() -> None:
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(general=Rate(per_s=2.0, burst=10),
                                     take=Rate(per_s=5 / 60, burst=5),
                                     position=Rate(per_s=1.0, burst=2)), clock=clock)
    for _ in range(10):
        limiter.check("resident:a", "chat.send")
    with pytest.raises(RateLimitedError) as refused:
        limiter.check("resident:a", "chat.send")
    assert refused.value.code == "too_many_requests" and refused.value.retry_after_s == 0.5
    limiter.check("resident:b", "chat.send")  # per principal
    clock.t += 0.5
    limiter.check("resident:a", "chat.send")
    # ticket.take has its own, tighter bucket; a refused take is given back.
    clock.t += 100
    for _ in range(5):
        limiter.check("resident:a", "ticket.take")
    with pytest.raises(RateLimitedError) as refused:
        limiter.check("resident:a", "ticket.take")
    assert refused.value.retry_after_s == 12.0
    limiter.refund("resident:a", "ticket.take")
    limiter.check("resident:a", "ticket.take")
    # ticket.leave is never refused for rate: a resident must always be able to leave.
    for _ in range(3):
        limiter.check("resident:a", "ticket.leave")


async def test_take_and_leave_loop_and_position_flood_are_refused() -> None:
    async with live_hall() as hall, clients(2) as (clerk, resident):
        await clerk.connect(hall.url, {"token": await hall.clerk_token()})
        await resident.connect(hall.url, {"id_token": await hall.resident_id_token("r-loop")})
        await resident.next("welcome")
        refused: dict[str, Any] | None = None
        for _ in range(8):
            took = await resident.call("ticket.take", {"matter_id": MATTER,
                                                       "when_unstaffed": "wait"})
            if not took["ok"]:
                refused = took
                break
            left = await resident.call("ticket.leave", {"ticket_id": took["ticket"]["id"]})
            assert left["ok"], left
        assert refused is not None and refused["error"]["code"] == "too_many_requests"
        assert refused["error"]["retry_after_s"] > 0
        took = await resident.call("ticket.take", {"matter_id": MATTER, "when_unstaffed": "wait"})
        assert took["error"]["code"] == "too_many_requests"
        # Reconnecting does not reset the principal's budget.
        await resident.close()
        again = Client()
        try:
            await again.connect(hall.url,
                                {"id_token": await hall.resident_id_token("r-loop")})
            await again.next("welcome")
            took = await again.call("ticket.take", {"matter_id": MATTER,
                                                    "when_unstaffed": "wait"})
            assert took["error"]["code"] == "too_many_requests"
        finally:
            await again.close()
        # Position queries: a burst, then refusals, not 1,400 answers a second.
        other = Client()
        try:
            await other.connect(hall.url, {"id_token": await hall.resident_id_token("r-pos")})
            await other.next("welcome")
            took = await other.call("ticket.take", {"matter_id": MATTER,
                                                    "when_unstaffed": "wait"})
            codes = [(await other.call("ticket.position",
                                       {"ticket_id": took["ticket"]["id"]})).get("ok")
                     for _ in range(30)]
            assert codes[:5] == [True] * 5 and False in codes
            assert hall.app[keys.HUB].stats["rate_limited"] > 0
        finally:
            await other.close()


async def test_general_budget_refuses_a_flood_of_events() -> None:
    async with live_hall() as hall, clients(1) as (resident,):
        await resident.connect(hall.url, {"id_token": await hall.resident_id_token("r-f")})
        await resident.next("welcome")
        replies = await asyncio.gather(*(resident.call("case.mine", {}) for _ in range(80)))
        codes = [r["error"]["code"] for r in replies if not r["ok"]]
        assert "too_many_requests" in codes
        assert sum(1 for r in replies if r["ok"]) >= 40


# -- item 8: uploads and daily quotas ----------------------------------------------------------


def _png(salt: bytes = b"") -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"") + salt)


async def _upload(hall: LiveHall, token: str, ticket_id: str,
                  content: bytes) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("file", content, filename="a.png", content_type="image/png")
    async with aiohttp.ClientSession() as http, http.post(
        f"{hall.url}/api/tickets/{ticket_id}/files", data=form,
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, await response.json()


async def _get(hall: LiveHall, token: str, path: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(
            hall.url + path, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status


async def test_leaving_closes_the_tickets_uploads() -> None:
    async with live_hall() as hall, clients(1) as (resident,):
        token = await hall.resident_id_token("r-up")
        await resident.connect(hall.url, {"id_token": token})
        await resident.next("welcome")
        took = await resident.call("ticket.take", {"matter_id": MATTER, "when_unstaffed": "wait"})
        ticket_id = took["ticket"]["id"]
        status, body = await _upload(hall, token, ticket_id, _png())
        assert status == 201, body
        assert (await resident.call("ticket.leave", {"ticket_id": ticket_id}))["ok"]
        status, body = await _upload(hall, token, ticket_id, _png(b"\x00"))
        assert status == 409 and body["error"]["code"] == "uploads_closed", body
        # The owner keeps reading their own files.
        assert await _get(hall, token, f"/api/tickets/{ticket_id}/files") == 200
        assert len(await hall.app[keys.FILES].list(ticket_id)) == 1


async def test_daily_quota_per_resident_spans_tickets() -> None:
    async with live_hall() as hall, clients(1) as (resident,):
        files = hall.app[keys.FILES]
        files.limits = replace(files.limits, resident_daily_files=3)
        token = await hall.resident_id_token("r-quota")
        await resident.connect(hall.url, {"id_token": token})
        await resident.next("welcome")
        statuses = []
        for i in range(2):
            took = await resident.call("ticket.take", {"matter_id": MATTER,
                                                       "when_unstaffed": "wait"})
            ticket_id = took["ticket"]["id"]
            for j in range(2):
                status, body = await _upload(hall, token, ticket_id, _png(bytes([i, j])))
                statuses.append((status, body.get("error", {}).get("code")))
            await resident.call("ticket.leave", {"ticket_id": ticket_id})
        assert statuses[:3] == [(201, None)] * 3
        assert statuses[3] == (413, "daily_quota_exceeded"), statuses


# -- item 9: a kiosk and the files of the session it just finished --------------------------


async def test_kiosk_loses_the_previous_residents_files_when_the_session_ends() -> None:
    async with live_hall() as hall, clients(2) as (clerk, kiosk):
        await clerk.connect(hall.url, {"token": await hall.clerk_token()})
        await clerk.next("welcome")
        ktoken = await hall.kiosk_token()
        await kiosk.connect(hall.url, {"token": ktoken})
        await kiosk.next("welcome")
        took = await kiosk.call("ticket.take", {"matter_id": MATTER})
        ticket_id = took["ticket"]["id"]
        offer = await clerk.next("offer.new")
        accepted = await clerk.call("offer.accept", {"ticket_id": offer["ticket_id"]})
        await kiosk.next("session.started")
        status, body = await _upload(hall, ktoken, ticket_id, _png())
        assert status == 201, body
        file_id = body["file"]["id"]
        path = f"/api/tickets/{ticket_id}/files"
        assert await _get(hall, ktoken, path) == 200
        await clerk.call("session.end", {"session_id": accepted["session"]["id"]})
        await kiosk.next("session.ended")
        # Session over: the next resident at the kiosk must not see the last one's files.
        assert await _get(hall, ktoken, path) == 404  # not_found: no longer its ticket
        assert await _get(hall, ktoken, f"{path}/{file_id}") == 404
        status, body = await _upload(hall, ktoken, ticket_id, _png(b"\x01"))
        assert (status, body["error"]["code"]) == (404, "not_found"), body
        # The clerk still attaches during wrap-up.
        clerk_token = await hall.clerk_token()
        status, body = await _upload(hall, clerk_token, ticket_id, _png(b"\x02"))
        assert status == 201, body
        await clerk.call("wrapup.finish", {"outcome": "resolved"})
        # The after-screen still rates the session just finished.
        rated = await kiosk.call("session.rate", {"ticket_id": ticket_id, "score": 5})
        assert rated["ok"], rated
        # The rating's ack came after anything sent before it: no file.added for the kiosk.
        assert "file.added" not in kiosk.names()
        assert await _get(hall, ktoken, path) == 404


async def test_kiosk_rating_window_closes() -> None:
    async with live_hall() as hall, clients(2) as (clerk, kiosk):
        await clerk.connect(hall.url, {"token": await hall.clerk_token()})
        await clerk.next("welcome")
        await kiosk.connect(hall.url, {"token": await hall.kiosk_token()})
        await kiosk.next("welcome")
        took = await kiosk.call("ticket.take", {"matter_id": MATTER})
        ticket_id = took["ticket"]["id"]
        await clerk.next("offer.new")
        accepted = await clerk.call("offer.accept", {"ticket_id": ticket_id})
        await clerk.call("session.end", {"session_id": accepted["session"]["id"]})
        await kiosk.next("session.ended")
        hub = hall.app[keys.HUB]
        hub.config = replace(hub.config, kiosk_rating_window_s=0.0)
        rated = await kiosk.call("session.rate", {"ticket_id": ticket_id, "score": 5})
        assert rated["error"]["code"] == "forbidden", rated


async def test_app_resident_keeps_their_own_files_after_the_session() -> None:
    async with live_hall() as hall, clients(2) as (clerk, resident):
        await clerk.connect(hall.url, {"token": await hall.clerk_token()})
        await clerk.next("welcome")
        token = await hall.resident_id_token("r-own")
        await resident.connect(hall.url, {"id_token": token})
        await resident.next("welcome")
        took = await resident.call("ticket.take", {"matter_id": MATTER})
        ticket_id = took["ticket"]["id"]
        status, body = await _upload(hall, token, ticket_id, _png())
        assert status == 201
        await clerk.next("offer.new")
        accepted = await clerk.call("offer.accept", {"ticket_id": ticket_id})
        await clerk.call("session.end", {"session_id": accepted["session"]["id"]})
        await clerk.call("wrapup.finish", {"outcome": "resolved"})
        await resident.next("ticket.update", lambda d: d["ticket"]["state"] == "done")
        assert await _get(hall, token, f"/api/tickets/{ticket_id}/files") == 200
        assert await _get(hall, token,
                          f"/api/tickets/{ticket_id}/files/{body['file']['id']}") == 200


async def test_rate_limits_can_be_turned_off_for_benchmarks() -> None:
    async with live_hall({"HALL_RATE_LIMITS": "off"}) as hall, clients(1) as (resident,):
        assert hall.app[keys.HUB].limiter is None
        await resident.connect(hall.url, {"id_token": await hall.resident_id_token("r-b")})
        await resident.next("welcome")
        took = await resident.call("ticket.take", {"matter_id": MATTER, "when_unstaffed": "wait"})
        replies = [await resident.call("ticket.position", {"ticket_id": took["ticket"]["id"]})
                   for _ in range(12)]
        assert all(r["ok"] for r in replies)


def test_rtc_signal_has_a_budget_of_its_own() -> None:
    """A burst of ICE candidates does not eat the general budget, nor is it cut at 40."""
    limiter = RateLimiter(clock=FakeClock())
    for _ in range(200):
        limiter.check("resident:a", "rtc.signal")
    with pytest.raises(RateLimitedError):
        limiter.check("resident:a", "rtc.signal")
    for _ in range(40):
        limiter.check("resident:a", "chat.send")
