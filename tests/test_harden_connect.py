"""Issue 11, the connection path: lifecycle handlers unreachable by client events (item 1),
unauthenticated transports closed and capped (item 3), resume across a drop in the handshake
(item 17), a wrong ``last_seq`` (16a) and resume tokens bound to their credential (16b)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import aiohttp
import pytest

from server import keys
from tests.signalkit import PASSWORD, Client, LiveHall, hall_backend, live_hall

TRUSTED = {"HALL_TRUSTED_PROXIES": "127.0.0.1"}
_EVENT = re.compile(r"2(\d*)\[")  # a Socket.IO EVENT packet, with its ack id if any


class RawSocket:
    """Engine.IO v4 / Socket.IO v5 spoken by hand over one websocket: whatever a hostile
    client may send, e.g. an EVENT packet named ``connect``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.packets: list[str] = []  # Socket.IO packets received, in order
        self.closed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._ack_id = 0
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = str(msg.data)
                if data == "2":  # Engine.IO ping: answer, or the server gives up on us
                    await self.ws.send_str("3")
                elif data.startswith("4"):
                    self.packets.append(data[1:])
                    self._arrived.set()
        finally:
            self.closed.set()
            self._arrived.set()

    async def wait_for(self, prefix: str, within: float = 5.0) -> str:
        """The first received Socket.IO packet starting with ``prefix`` (consumed)."""
        async with asyncio.timeout(within):
            while True:
                for i, packet in enumerate(self.packets):
                    if packet.startswith(prefix):
                        return self.packets.pop(i)
                if self.closed.is_set():
                    raise AssertionError(f"closed before a {prefix!r} packet: {self.packets}")
                self._arrived.clear()
                await self._arrived.wait()

    async def next_event(self, name: str, within: float = 5.0) -> tuple[int | None, Any]:
        """The next EVENT packet called ``name`` (consumed): its ack id (the server asked for
        an answer) and its payload."""
        async with asyncio.timeout(within):
            while True:
                for i, packet in enumerate(self.packets):
                    found = _EVENT.match(packet)
                    if found and json.loads(packet[found.end() - 1:])[0] == name:
                        self.packets.pop(i)
                        body = json.loads(packet[found.end() - 1:])
                        return (int(found[1]) if found[1] else None,
                                body[1] if len(body) > 1 else None)
                if self.closed.is_set():
                    raise AssertionError(f"closed before {name}: {self.packets}")
                self._arrived.clear()
                await self._arrived.wait()

    async def answer(self, ack_id: int, *data: Any) -> None:
        await self.ws.send_str(f"43{ack_id}" + json.dumps(list(data)))

    async def join(self, auth: dict[str, Any] | None = None) -> str:
        """Namespace CONNECT; the server's answer (``0{sid}`` or ``4{error}``)."""
        await self.ws.send_str("40" + (json.dumps(auth) if auth else ""))
        async with asyncio.timeout(5):
            while True:
                for i, packet in enumerate(self.packets):
                    if packet[:1] in ("0", "4"):
                        return self.packets.pop(i)
                self._arrived.clear()
                await self._arrived.wait()

    async def call(self, *data: Any) -> Any:
        """An EVENT packet with an ack id; the ack's arguments."""
        self._ack_id += 1
        ack = self._ack_id
        await self.ws.send_str(f"42{ack}" + json.dumps(list(data)))
        packet = await self.wait_for(f"3{ack}[")
        return json.loads(packet[len(f"3{ack}"):])

    def events(self, name: str) -> list[Any]:
        out = []
        for packet in self.packets:
            found = _EVENT.match(packet)
            if found:
                body = json.loads(packet[found.end() - 1:])
                if body[0] == name:
                    out.append(body[1:])
        return out

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with suppress(asyncio.CancelledError):
            await self._reader


@asynccontextmanager
async def raw(hall: LiveHall, address: str | None = None) -> AsyncIterator[RawSocket]:
    """A raw websocket to the hall, from ``address`` (a trusted-proxy X-Forwarded-For)."""
    headers = {"X-Forwarded-For": address} if address else {}
    async with aiohttp.ClientSession() as http:
        url = hall.url + "/socket.io/?EIO=4&transport=websocket"
        ws = await http.ws_connect(url, headers=headers, heartbeat=None)
        sock = RawSocket(ws)
        try:
            # Engine.IO OPEN comes first, before any Socket.IO packet.
            yield sock
        finally:
            await sock.close()


async def connect_from(hall: LiveHall, address: str, auth: dict[str, Any]) -> Client:
    client = Client()
    await client.connect(hall.url, auth, headers={"X-Forwarded-For": address})
    return client


async def refused_code(hall: LiveHall, address: str | None, auth: dict[str, Any]) -> str:
    """The code of the handshake's CONNECT_ERROR (``data.code``), or ``"accepted"``."""
    async with raw(hall, address) as sock:
        answer = await sock.join(auth)
    if answer.startswith("0"):
        return "accepted"
    assert answer.startswith("4"), answer
    return str(json.loads(answer[1:])["data"]["code"])


# ------------------------------------------------------------------ item 1
async def test_a_client_event_named_connect_reaches_no_lifecycle_handler() -> None:
    """An EVENT called ``connect`` with a forged environ neither escapes the throttle of its
    real address (guesses evaluated as from elsewhere, a welcome) nor forges failures for
    another address; ``disconnect``, ``connect_error`` and ``*`` as event names change nothing
    either. Each gets ``unknown_event``."""
    async with live_hall({**TRUSTED, "HALL_LOGIN_FAILURE_LIMIT": "3"}) as hall:
        token = await hall.clerk_token("clerk01")
        locked, victim = "198.51.100.7", "203.0.113.9"
        for _ in range(3):
            assert await refused_code(hall, locked, {"token": "not-a-token"}) == (
                "unauthenticated")
        assert await refused_code(hall, locked, {"token": "not-a-token"}) == (
            "too_many_attempts")
        forged_environ = {"REMOTE_ADDR": victim, "aiohttp.request": None,
                          "HTTP_X_FORWARDED_FOR": victim}

        async with raw(hall, locked) as sock:
            assert (await sock.join()).startswith("0")
            for auth in ({"token": "a-guess"}, {"token": token}):
                ack = await sock.call("connect", forged_environ, auth)
                assert ack == [{"ok": False, "error": {
                    "code": "unknown_event", "message": 'unknown event "connect"'}}], ack
            # Fence: a real hello from this transport, after the forged connects, is judged
            # by the transport's address; and no welcome was ever sent.
            ack = await sock.call("hello", {"token": "a-guess"})
            assert ack[0]["error"]["code"] == "too_many_attempts", ack
            assert sock.events("welcome") == []

        # Forged failures for the victim's address count for nobody.
        async with raw(hall, "192.0.2.50") as sock:
            assert (await sock.join()).startswith("0")
            for _ in range(5):
                ack = await sock.call("connect", forged_environ, {"token": "forged"})
                assert ack[0]["error"]["code"] == "unknown_event", ack
        assert await refused_code(hall, victim, {"token": "a-typo"}) == "unauthenticated"
        assert await refused_code(hall, victim, {"token": token}) == "accepted"

        # disconnect / connect_error / * as event names, on an authenticated socket.
        supervisor = await hall.post("/api/auth/login", {"username": "supervisor",
                                                         "password": PASSWORD})
        async with raw(hall, "192.0.2.51") as sock:
            assert (await sock.join({"token": supervisor["token"]})).startswith("0")
            await sock.next_event("welcome")
            for name in ("disconnect", "*", "connect_error"):
                ack = await sock.call(name, "forged reason")
                assert ack[0]["error"]["code"] == "unknown_event", (name, ack)
            # Still bound to its participant: hello says so, the hub still knows the socket.
            ack = await sock.call("hello", {"token": supervisor["token"]})
            assert ack[0]["error"]["code"] == "invalid_state", ack
            hub = hall.app[keys.HUB]
            assert hub.connections.get("supervisor:supervisor") is not None


# ------------------------------------------------------------------ item 3
async def test_an_unauthenticated_connection_loses_its_transport_at_the_deadline() -> None:
    """Joined without credentials and silent: the websocket itself is closed (not only the
    namespace, which could be joined again). Never joined at all: closed too. Authenticated,
    then the namespace left (the websocket kept): a deadline again."""
    async with live_hall({"HALL_AUTH_TIMEOUT_S": "0.5"}) as hall:
        token = await hall.clerk_token("clerk02")
        async with raw(hall) as joined, raw(hall) as silent, raw(hall) as left:
            assert (await joined.join()).startswith("0")
            assert (await left.join({"token": token})).startswith("0")
            await left.next_event("welcome")
            await left.ws.send_str("41")  # namespace DISCONNECT, the websocket stays
            async with asyncio.timeout(5):
                await joined.closed.wait()
                await silent.closed.wait()
                await left.closed.wait()


async def test_half_open_connections_from_one_address_are_capped() -> None:
    """300 Engine.IO connections that never authenticate, from one address: at most the cap
    (HALL_MAX_UNAUTHENTICATED_PER_ADDRESS, here 20) are kept, the rest refused at once;
    another address is still served."""
    unlimited = aiohttp.TCPConnector(limit=0)  # the default pool would queue beyond 100
    env = {**TRUSTED, "HALL_MAX_UNAUTHENTICATED_PER_ADDRESS": "20"}
    async with live_hall(env) as hall, aiohttp.ClientSession(connector=unlimited) as http:
        url = hall.url + "/socket.io/?EIO=4&transport=websocket"
        kept: list[aiohttp.ClientWebSocketResponse] = []
        refused = 0
        try:
            for _ in range(300):
                try:
                    ws = await http.ws_connect(url, headers={"X-Forwarded-For": "198.51.100.1"})
                except aiohttp.WSServerHandshakeError as err:
                    assert err.status == 401, err
                    refused += 1
                    continue
                kept.append(ws)
            assert len(kept) == 20 and refused == 280, (len(kept), refused)
            client = await connect_from(hall, "198.51.100.2",
                                        {"token": await hall.clerk_token("clerk02")})
            try:
                assert (await client.next("welcome"))["participant"] == "clerk:clerk02"
            finally:
                await client.close()
        finally:
            for ws in kept:
                await ws.close()


# ------------------------------------------------------------------ items 17, 16a, 16b
MATTER = "flexible_employment_registration"  # served by clerk01 (hrss)


async def in_session(hall: LiveHall, clerk: Client, resident: Client,
                     id_token: str) -> tuple[str, dict[str, Any]]:
    """clerk01 in session with the resident; the session id and the resident's welcome."""
    await clerk.connect(hall.url, {"token": await hall.clerk_token("clerk01")})
    await clerk.next("welcome")
    await resident.connect(hall.url, {"id_token": id_token})
    welcome = await resident.next("welcome")
    took = await resident.call("ticket.take", {"matter_id": MATTER})
    assert took["ok"], took
    offer = await clerk.next("offer.new")
    assert (await clerk.call("offer.accept", {"ticket_id": offer["ticket_id"]}))["ok"]
    await resident.next("session.started")
    return str(offer["ticket_id"]), welcome


def last_seq_of(client: Client) -> int:
    return max(int(d["seq"]) for _, d in client.events if isinstance(d, dict) and "seq" in d)


async def signal(clerk: Client, session_id: str, sdp: str) -> None:
    sent = await clerk.call("rtc.signal", {"session_id": session_id,
                                           "description": {"type": "offer", "sdp": sdp}})
    assert sent["ok"], sent


@pytest.mark.usefixtures(hall_backend.__name__)
async def test_a_drop_between_connect_and_welcome_loses_nothing() -> None:
    """Resumes whose socket dies right after CONNECT, before the welcome is read: the same
    token resumes again, and every message numbered meanwhile arrives, in order, no gap."""
    async with live_hall() as hall:
        clerk, resident, back = Client(), Client(), Client()
        try:
            id_token = await hall.resident_id_token("r-17")
            session_id, welcome = await in_session(hall, clerk, resident, id_token)
            token, last_seq = welcome["resume_token"], last_seq_of(resident)
            await resident.sio.eio.disconnect(abort=True)
            await clerk.next("session.peer", lambda d: d["state"] == "reconnecting")
            sent = []
            for attempt in range(3):
                sent.append(f"a{attempt}")
                await signal(clerk, session_id, sent[-1])
                async with raw(hall) as sock:
                    answer = await sock.join({"id_token": id_token, "resume": token,
                                              "last_seq": last_seq})
                    assert answer.startswith("0"), answer
                # ...gone before its welcome was read (nor acknowledged)
                sent.append(f"b{attempt}")
                await signal(clerk, session_id, sent[-1])
            await back.connect(hall.url, {"id_token": id_token, "resume": token,
                                          "last_seq": last_seq})
            again = await back.next("welcome")
            assert again["resumed"] is True and again["session"]["id"] == session_id
            replay = [await back.next("rtc.signal") for _ in sent]
            assert [r["description"]["sdp"] for r in replay] == sent
            numbered = [d["seq"] for _, d in back.events if isinstance(d, dict) and "seq" in d]
            seqs = sorted([r["seq"] for r in replay] + numbered)
            assert seqs == list(range(last_seq + 1, last_seq + 1 + len(seqs))), seqs
            # Acknowledged (python-socketio answers the welcome's ack): the token it resumed
            # with is dead now, for good.
            assert await refused_code(hall, None, {"id_token": id_token, "resume": token,
                                                   "last_seq": last_seq}) == "resume_invalid"
        finally:
            for c in (clerk, resident, back):
                await c.close()


@pytest.mark.usefixtures(hall_backend.__name__)
async def test_a_wrong_last_seq_or_credential_does_not_burn_the_token() -> None:
    """A resume from beyond the last numbered message is refused (last_seq_ahead), another
    participant's credential (resume_invalid) and a token alone (unauthenticated) too; the
    token then still resumes with the right credential and last_seq."""
    async with live_hall() as hall:
        clerk, resident, back = Client(), Client(), Client()
        try:
            id_token = await hall.resident_id_token("r-16")
            other = await hall.resident_id_token("r-16-other")
            session_id, welcome = await in_session(hall, clerk, resident, id_token)
            token, last_seq = welcome["resume_token"], last_seq_of(resident)
            await resident.sio.eio.disconnect(abort=True)
            await clerk.next("session.peer", lambda d: d["state"] == "reconnecting")
            await signal(clerk, session_id, "missed")
            attempts = [
                ({"id_token": id_token, "resume": token, "last_seq": last_seq + 50},
                 "last_seq_ahead"),
                ({"resume": token, "last_seq": last_seq}, "unauthenticated"),
                ({"id_token": other, "resume": token, "last_seq": last_seq}, "resume_invalid"),
                ({"token": await hall.clerk_token("clerk02"), "resume": token,
                  "last_seq": last_seq}, "resume_invalid"),
            ]
            for auth, code in attempts:
                assert await refused_code(hall, None, auth) == code, auth
            await back.connect(hall.url, {"id_token": id_token, "resume": token,
                                          "last_seq": last_seq})
            assert (await back.next("welcome"))["resumed"] is True
            assert (await back.next("rtc.signal"))["description"]["sdp"] == "missed"
        finally:
            for c in (clerk, resident, back):
                await c.close()
