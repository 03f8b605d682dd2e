"""End to end over loopback: real aiortc peers meet through the real hall (docs/protocol.md).

The hall runs in-process on a free port of 127.0.0.1; clients connect over Socket.IO
(websocket only) exactly as the contract describes, and the peers' media flows directly
between them over the machine's interface address (aioice offers no loopback candidates).
Timings are printed with the ``[timing]`` prefix (see them with ``pytest -s``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from server import keys
from server.app import create_app
from server.config import Settings
from tests.rtcpeer import HallClient, HallConnectError, MediaPeer, Payload

PASSWORD = "e2e-demo-password"
SECRET = "e" * 32
CLERK = "clerk01"
SUPERVISOR = "supervisor"
TIMEOUT = 10.0  # every single wait; generous, the whole file runs in a few seconds


@dataclass
class Hall:
    """A running hall and what the test opened against it (closed by the fixture)."""

    url: str
    app: web.Application
    http: aiohttp.ClientSession
    clients: list[HallClient] = field(default_factory=list)
    peers: list[MediaPeer] = field(default_factory=list)

    async def post(self, path: str, body: dict[str, Any]) -> Payload:
        async with self.http.post(self.url + path, json=body) as response:
            data = await response.json()
            assert response.status == 200, f"POST {path}: {response.status} {data!r}"
            assert isinstance(data, dict)
            return data

    async def get(self, path: str) -> Payload:
        async with self.http.get(self.url + path) as response:
            assert response.status == 200, f"GET {path}: {response.status}"
            data = await response.json()
            assert isinstance(data, dict)
            return data

    async def staff(self, username: str) -> HallClient:
        """Log a clerk or supervisor in over HTTP and connect with the hall token."""
        login = await self.post("/api/auth/login", {"username": username, "password": PASSWORD})
        assert isinstance(login.get("token"), str), login
        client = self.client(username)
        welcome = await client.connect(self.url, {"token": login["token"]}, timeout=TIMEOUT)
        assert welcome["role"] == login["role"], (welcome, login)
        return client

    async def resident(self, resident_id: str, name: str) -> HallClient:
        """Get a demo identity token and connect as a resident of the app."""
        signed = await self.post("/api/dev/resident-token",
                                 {"resident_id": resident_id, "name": name})
        assert isinstance(signed.get("id_token"), str), signed
        client = self.client(resident_id)
        welcome = await client.connect(self.url, {"id_token": signed["id_token"]},
                                       timeout=TIMEOUT)
        assert welcome["role"] == "resident", welcome
        return client

    def client(self, name: str) -> HallClient:
        client = HallClient(name)
        self.clients.append(client)
        return client

    def peer(self, name: str, session: Payload, *, tag: int, remote: str = "peer",
             send_media: bool = True) -> MediaPeer:
        peer = MediaPeer.for_session(name, session, tag=tag, remote=remote,
                                     send_media=send_media)
        self.peers.append(peer)
        return peer

    async def matter_of(self, clerk_id: str) -> str:
        """A consultation matter of the clerk's primary department, as the public catalog
        lists it (the public catalog has no clerks, so the profile comes from the app)."""
        profile = self.app[keys.CATALOG].clerks[clerk_id]
        catalog = await self.get("/api/catalog")
        for matter in catalog["matters"]:
            served = (matter["id"] in profile.matters
                      or matter["department_id"] in profile.departments)
            if served and "consultation" in matter["kinds"]:
                return str(matter["id"])
        raise AssertionError(f"no matter served by {clerk_id} in /api/catalog")


@pytest.fixture
async def hall(tmp_path: Path) -> AsyncIterator[Hall]:
    settings = Settings.from_env({
        "HALL_DATA_DIR": str(tmp_path),
        "HALL_DEMO_PASSWORD": PASSWORD,
        "HALL_SECRET_KEY": SECRET,
    })
    app = create_app(settings, demo=True)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as http:
        running = Hall(f"http://{host}:{port}", app, http)
        try:
            yield running
        finally:
            for peer in running.peers:
                await peer.close()
            for client in running.clients:
                await client.close()
            await runner.cleanup()


@dataclass
class Session:
    clerk: HallClient
    resident: HallClient
    clerk_view: Payload  # the clerk's session.started session object
    resident_view: Payload

    @property
    def id(self) -> str:
        return str(self.clerk_view["id"])


async def start_session(hall: Hall, resident_id: str = "r-e2e-1") -> Session:
    """clerk01 comes on duty, a resident takes a ticket, clerk01 accepts the offer."""
    clerk = await hall.staff(CLERK)
    resident = await hall.resident(resident_id, "张三")
    matter_id = await hall.matter_of(CLERK)
    taken = await resident.ok("ticket.take", {"matter_id": matter_id, "when_unstaffed": "wait"})
    ticket_id = taken["ticket"]["id"]
    offer = await clerk.wait_for("offer.new", lambda p: p["ticket_id"] == ticket_id)
    assert offer["matter_id"] == matter_id
    accepted = await clerk.ok("offer.accept", {"ticket_id": ticket_id})
    clerk_view = (await clerk.wait_for("session.started"))["session"]
    resident_view = (await resident.wait_for("session.started"))["session"]
    # The contract's walk-through puts this update before session.started; either order will
    # do here, but it must come (a later "nothing else arrived" check relies on it).
    await resident.wait_for("ticket.update", lambda p: p["ticket"]["state"] == "in_session")
    assert accepted["session"]["id"] == clerk_view["id"] == resident_view["id"] == ticket_id
    assert (clerk_view["role"], resident_view["role"]) == ("clerk", "resident")
    assert clerk_view["initiator"] is True and resident_view["initiator"] is False
    assert clerk_view["polite"] is False and resident_view["polite"] is True
    assert clerk_view["ice_servers"] == [] and resident_view["ice_servers"] == []
    assert clerk_view["monitors"] == [] and "monitors" not in resident_view
    assert clerk_view["peer"] == {"role": "resident", "name": "张三"}
    assert resident_view["peer"] == {"role": "clerk", "name": clerk.welcomes[0]["name"]}
    assert clerk_view["matter_id"] == resident_view["matter_id"] == matter_id
    return Session(clerk, resident, clerk_view, resident_view)


async def media_both_ways(clerk: MediaPeer, resident: MediaPeer, label: str) -> None:
    """Wait for ICE, ≥ 10 distinct frames and a data-channel message in each direction."""
    ice = await asyncio.gather(clerk.wait_connected(TIMEOUT), resident.wait_connected(TIMEOUT))
    await asyncio.gather(clerk.wait_frames(10, TIMEOUT), resident.wait_frames(10, TIMEOUT))
    assert clerk.remote_tags() == {resident.tag} and resident.remote_tags() == {clerk.tag}
    await asyncio.gather(clerk.wait_channel_open(TIMEOUT), resident.wait_channel_open(TIMEOUT))
    clerk.send(f"{label}: 您好，我是帮办")
    resident.send(f"{label}: 您好")
    assert await clerk.wait_messages(1, TIMEOUT) == [f"{label}: 您好"]
    assert await resident.wait_messages(1, TIMEOUT) == [f"{label}: 您好，我是帮办"]
    print(f"[timing] {label}: ICE+DTLS connected clerk {ice[0]:.3f} s / resident {ice[1]:.3f} s; "
          f"first frame clerk {clerk.first_frame_after_s:.3f} s / "
          f"resident {resident.first_frame_after_s:.3f} s (from offer/answer)")


async def test_media_flows_both_ways_and_recovers_after_a_resume(hall: Hall) -> None:
    """Clerk and resident exchange video and data, survive a dropped socket, renegotiate."""
    s = await start_session(hall)
    clerk_peer = hall.peer("clerk-media", s.clerk_view, tag=1)
    resident_peer = hall.peer("resident-media", s.resident_view, tag=2)

    t0 = time.monotonic()
    await asyncio.gather(clerk_peer.negotiate(s.clerk, initiator=True, timeout=TIMEOUT),
                         resident_peer.negotiate(s.resident, initiator=False, timeout=TIMEOUT))
    print(f"[timing] offer/answer through the hall: {time.monotonic() - t0:.3f} s")
    offer = s.resident.received("rtc.signal")[0]
    assert offer["from"] == "peer" and offer["session_id"] == s.id
    assert "candidate" not in offer or offer["candidate"] is None
    await media_both_ways(clerk_peer, resident_peer, "first connection")

    # The resident's socket drops (no clean disconnect); the clerk is told, and what the clerk
    # sends meanwhile waits in the resident's outbox.
    seq_before_drop = s.resident.last_seq
    await s.resident.drop()
    away = await s.clerk.wait_for("session.peer", lambda p: p["state"] == "reconnecting")
    assert away["session_id"] == s.id
    await s.clerk.ok("media.screen", {"session_id": s.id, "active": True, "stream_id": "screen-1"})
    await s.clerk.ok("rtc.signal", {"session_id": s.id, "candidate": None})

    welcome = await s.resident.resume(hall.url, timeout=TIMEOUT)
    assert welcome["resumed"] is True
    assert welcome["session"] is not None and welcome["session"]["id"] == s.id
    assert welcome["ticket"] is not None and welcome["ticket"]["id"] == s.id
    screen = await s.resident.wait_for("media.screen")
    end_of_candidates = await s.resident.wait_for("rtc.signal", lambda p: "candidate" in p)
    assert (screen["session_id"], screen["from_role"], screen["active"], screen["stream_id"]) == (
        s.id, "clerk", True, "screen-1")
    assert end_of_candidates["candidate"] is None and end_of_candidates["from"] == "peer"
    assert seq_before_drop < screen["seq"] < end_of_candidates["seq"] <= welcome["last_seq"]
    replayed = [r for r in s.resident.events if r.connection == 2 and r.event != "welcome"]
    assert [r.payload["seq"] for r in replayed] == sorted(r.payload["seq"] for r in replayed)
    assert replayed[0].payload["seq"] == seq_before_drop + 1
    back = await s.clerk.wait_for("session.peer", lambda p: p["state"] == "back")
    assert back["session_id"] == s.id
    s.resident.check()
    s.clerk.check()

    # aiortc cannot restart ICE: the resident offers from a fresh RTCPeerConnection and the
    # clerk, seeing new ICE credentials, answers from a fresh one too.
    await resident_peer.renew()
    await asyncio.gather(resident_peer.send_offer(s.resident, timeout=TIMEOUT),
                         clerk_peer.answer_offer(s.clerk, timeout=TIMEOUT))
    await resident_peer.receive_answer(s.resident, timeout=TIMEOUT)
    assert (clerk_peer.generation, resident_peer.generation) == (1, 1)
    await media_both_ways(clerk_peer, resident_peer, "after resume")
    s.resident.check()
    s.clerk.check()


async def test_a_resume_token_works_once(hall: Hall) -> None:
    """A used resume token is refused at the handshake with connect_error resume_invalid."""
    resident = await hall.resident("r-e2e-once", "王五")
    used_token = resident.resume_token
    await resident.drop()
    welcome = await resident.resume(hall.url, timeout=TIMEOUT)
    assert welcome["resumed"] is True and welcome["resume_token"] != used_token
    with pytest.raises(HallConnectError) as refused:
        await hall.client("replayer").connect(
            hall.url, {**resident.credential, "resume": used_token, "last_seq": 0})
    assert refused.value.code == "resume_invalid", refused.value.data
    resident.check()


async def test_a_third_party_cannot_signal_into_a_session(hall: Hall) -> None:
    """Another resident's rtc.signal into someone else's session is refused with not_found
    (as if it did not exist: docs/protocol.md, "Conventions")."""
    s = await start_session(hall)
    intruder = await hall.resident("r-e2e-intruder", "李四")
    offer = {"type": "offer", "sdp": "v=0\r\n"}
    for signal in ({"session_id": s.id, "description": offer},
                   {"session_id": s.id, "to": "clerk:" + CLERK, "description": offer},
                   {"session_id": s.id, "candidate": None}):
        ack = await intruder.call("rtc.signal", signal)
        assert ack["ok"] is False and ack["error"]["code"] == "not_found", (signal, ack)
    ack = await intruder.call("media.screen", {"session_id": s.id, "active": True})
    assert ack["ok"] is False and ack["error"]["code"] == "not_found", ack

    # Nobody noticed: the next thing each side receives is what the other side sends now.
    await s.clerk.ok("media.screen", {"session_id": s.id, "active": False})
    await s.resident.ok("media.screen", {"session_id": s.id, "active": False})
    assert (await s.resident.wait_for("media.screen"))["from_role"] == "clerk"
    assert (await s.clerk.wait_for("media.screen"))["from_role"] == "resident"
    for client in (s.clerk, s.resident):
        assert client.pending("media.screen") == [], client.pending("media.screen")
        assert client.received("rtc.signal") == []
        client.check()


async def test_a_supervisor_monitors_silently(hall: Hall) -> None:
    """monitor.join tells the clerk only; the clerk can offer its media to the supervisor."""
    s = await start_session(hall)
    resident_seen = len(s.resident.events)
    supervisor = await hall.staff(SUPERVISOR)
    supervisor_id = supervisor.welcomes[0]["participant"]
    clerk_id = s.clerk.welcomes[0]["participant"]

    joined_ack = await supervisor.ok("monitor.join", {"session_id": s.id})
    assert joined_ack["session"]["id"] == s.id
    joined = await s.clerk.wait_for("monitor.joined")
    assert joined["session_id"] == s.id
    assert joined["supervisor"] == supervisor_id, (joined, supervisor_id)
    assert joined["name"] == supervisor.welcomes[0]["name"]

    # The silent leg: the clerk offers its camera to the supervisor, who only receives.
    to_supervisor = hall.peer("clerk-to-monitor", s.clerk_view, tag=1, remote=supervisor_id)
    monitor = hall.peer("monitor", joined_ack["session"], tag=3, remote=clerk_id,
                        send_media=False)
    await asyncio.gather(to_supervisor.negotiate(s.clerk, initiator=True, timeout=TIMEOUT),
                         monitor.negotiate(supervisor, initiator=False, timeout=TIMEOUT))
    await monitor.wait_frames(10, TIMEOUT)
    assert monitor.remote_tags() == {1}
    assert to_supervisor.remote_video == {}  # nothing comes back from the supervisor
    ack = await s.resident.call("rtc.signal", {"session_id": s.id, "to": supervisor_id,
                                               "candidate": None})
    assert ack["ok"] is False and ack["error"]["code"] == "forbidden", ack

    await supervisor.ok("monitor.leave", {"session_id": s.id})
    left = await s.clerk.wait_for("monitor.left")
    assert (left["session_id"], left["supervisor"]) == (s.id, supervisor_id)

    # The resident heard nothing of it: a message sent now is the next thing it receives.
    await s.clerk.ok("media.screen", {"session_id": s.id, "active": False})
    await s.resident.wait_for("media.screen")
    assert [r.event for r in s.resident.events[resident_seen:]] == ["media.screen"]
    for client in (s.clerk, s.resident, supervisor):
        client.check()
