"""The kiosk device agent (kiosk/) against a real hall on a free port, with no mocks.

The agent talks to the hall over HTTP and Socket.IO only; the clerk on the other side is the
tests' own aiortc peer (tests/rtcpeer.py), so media really flows between two RTCPeerConnections
over the machine's interface address.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import av
import pytest
from aiohttp import web

from kiosk.agent import KioskAgent
from kiosk.config import KioskConfig, MediaConfig, Secret, SourceSpec, SyntheticMedia
from kiosk.errors import KioskAuthError
from kiosk.events import KioskEvent
from kiosk.health import SourceProbe
from server import keys
from server.app import create_app
from server.config import Settings
from signaling.hub_state import embedded
from tests.rtcpeer import HallClient, MediaPeer
from tests.signalkit import PASSWORD, LiveHall, free_port, live_hall

POINT = "XH-001"
CLERK = "clerk01"
TIMEOUT = 15.0
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)  # the hall decides the type from the magic number
SMALL_VIDEO = SyntheticMedia(width=160, height=120, fps=15, tone_hz=440)


@pytest.fixture
async def hall() -> AsyncIterator[LiveHall]:
    async with live_hall() as running:
        yield running


def kiosk_config(hall: LiveHall, *, secret: str | None = None, **options: Any) -> KioskConfig:
    media = options.pop("media", MediaConfig(synthetic=SMALL_VIDEO))
    return KioskConfig(url=hall.url, service_point_id=POINT,
                       secret=Secret(secret or hall.app[keys.KIOSK_KEYS].demo_secret(POINT)),
                       media=media, **options)


@asynccontextmanager
async def running(config: KioskConfig) -> AsyncIterator[KioskAgent]:
    agent = KioskAgent(config)
    await asyncio.wait_for(agent.start(), TIMEOUT)
    try:
        yield agent
    finally:
        await agent.close()


async def staff(hall: LiveHall, username: str) -> HallClient:
    """A clerk or supervisor connected with a hall token (HTTP login)."""
    client = HallClient(username)
    await client.connect(hall.url, {"token": await hall.clerk_token(username)},
                         timeout=TIMEOUT)
    return client


def served_matter(hall: LiveHall, clerk_id: str = CLERK) -> str:
    """A consultation matter that clerk01 serves."""
    catalog = hall.app[keys.CATALOG]
    for matter_id in sorted(catalog.clerk_matters(clerk_id)):
        if "consultation" in catalog.matter(matter_id).kinds:
            return matter_id
    raise AssertionError(f"{clerk_id} serves no consultation matter")


def clerk_frames(peer: MediaPeer) -> int:
    """Video frames the clerk's peer received (the kiosk's pattern carries no stamp)."""
    return sum(video.frames for video in peer.remote_video.values())


async def until(condition: Callable[[], bool], what: str,
                timeout: float = TIMEOUT) -> None:  # noqa: ASYNC109 (the deadline at the call)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.05)


async def start_session(hall: LiveHall, agent: KioskAgent) -> tuple[HallClient, MediaPeer]:
    """clerk01 on duty; the kiosk takes a ticket; clerk01 accepts and offers its media."""
    clerk = await staff(hall, CLERK)
    events = agent.subscribe()
    ticket = await agent.take_ticket(served_matter(hall))
    assert ticket["state"] in ("waiting", "offered") and ticket["channel"] == "kiosk"
    await clerk.wait_for("offer.new", lambda p: p["ticket_id"] == ticket["id"], timeout=TIMEOUT)
    await clerk.ok("offer.accept", {"ticket_id": ticket["id"]})
    clerk_view = (await clerk.wait_for("session.started", timeout=TIMEOUT))["session"]
    kiosk_view = (await events.wait_for("session.started", timeout=TIMEOUT))["session"]
    assert kiosk_view["id"] == ticket["id"] and kiosk_view["polite"] is True
    assert kiosk_view["initiator"] is False and kiosk_view["role"] == "kiosk"
    peer = MediaPeer.for_session("clerk-media", clerk_view, tag=1)
    await peer.send_offer(clerk, timeout=TIMEOUT)
    await peer.receive_answer(clerk, timeout=TIMEOUT)
    events.close()
    return clerk, peer


async def media_flows(agent: KioskAgent, peer: MediaPeer, frames: int = 10) -> None:
    await peer.wait_connected(TIMEOUT)
    start_received, start_sent, start_clerk = (agent.frames_received, agent.frames_sent,
                                               clerk_frames(peer))
    await until(lambda: agent.frames_received >= start_received + frames,
                "video frames at the kiosk")
    await until(lambda: clerk_frames(peer) >= start_clerk + frames, "video frames at the clerk")
    assert agent.frames_sent > start_sent
    assert agent.audio_frames_received > 0 and peer.audio_frames > 0


# -- 1. login ---------------------------------------------------------------------------------


async def test_a_wrong_secret_stops_with_a_clear_error_and_the_right_one_connects(
        hall: LiveHall) -> None:
    """A refused secret stops the agent at once (one attempt); the demo secret connects."""
    wrong = KioskAgent(kiosk_config(hall, secret="not-the-secret"))
    started = time.monotonic()
    with pytest.raises(KioskAuthError, match="refused service point 'XH-001'") as refused:
        await asyncio.wait_for(wrong.start(), TIMEOUT)
    assert "not-the-secret" not in str(refused.value)
    assert time.monotonic() - started < 2.0
    assert (wrong.state, wrong.stop_reason, wrong.logins, wrong.connections) == (
        "stopped", "auth_refused", 0, 0)
    assert await asyncio.wait_for(wrong.wait_stopped(), 1) == "auth_refused"
    await asyncio.sleep(1.0)  # a retry loop would have tried again by now
    assert await hall.app[keys.THROTTLE].failures("127.0.0.1") == 1

    async with running(kiosk_config(hall)) as agent:
        welcome = agent._link.welcome
        assert welcome is not None
        assert (welcome["role"], welcome["participant"], welcome["resumed"]) == (
            "kiosk", f"kiosk:{POINT}", False)
        assert agent.state == "online" and agent.logins == 1
        assert "Secret(***)" in repr(agent.config) and welcome["name"] not in ("", None)


# -- 2. a whole session -----------------------------------------------------------------------


async def test_a_session_with_media_chat_a_file_and_a_rating(hall: LiveHall) -> None:
    """Ticket, clerk's offer answered, media and chat both ways, a file, the end, a rating."""
    async with running(kiosk_config(hall)) as agent:
        events = agent.subscribe()
        clerk, peer = await start_session(hall, agent)
        try:
            await media_flows(agent, peer)
            assert agent.media is not None and agent.media.generation == 1

            # the hall data channel, both ways
            await peer.wait_channel_open(TIMEOUT)
            peer.send("数据通道")
            assert (await events.wait_for("agent.message", timeout=TIMEOUT))["text"] == "数据通道"
            agent.media.send_message("收到")
            assert await peer.wait_messages(1, TIMEOUT) == ["收到"]

            # chat, both ways
            sent = await agent.send_chat("您好，我想咨询一下")
            got = await clerk.wait_for("chat.message", timeout=TIMEOUT)
            assert got["message"]["text"] == sent["text"] == "您好，我想咨询一下"
            assert got["message"]["from_role"] == "kiosk"
            await clerk.ok("chat.send", {"session_id": peer.session_id, "text": "请出示身份证"})
            chat = await events.wait_for("chat.message", timeout=TIMEOUT)
            assert (chat["message"]["text"], chat["message"]["from_role"]) == (
                "请出示身份证", "clerk")

            # a document photo over HTTP
            file = await agent.upload_file(PNG, filename="身份证.png")
            assert (file["content_type"], file["size"]) == ("image/png", len(PNG))
            added = await clerk.wait_for("file.added", timeout=TIMEOUT)
            assert added["file"]["id"] == file["id"]

            # the clerk ends; the kiosk's media closes; the resident rates
            await clerk.ok("session.end", {"session_id": peer.session_id})
            ended = await events.wait_for("session.ended", timeout=TIMEOUT)
            assert ended["reason"] == "clerk"
            await until(lambda: agent.ticket is not None
                        and agent.ticket["state"] == "wrap_up", "wrap_up")
            assert agent.session is None and agent.media is None
            rated = await agent.rate(5, "很满意")
            assert rated["rating"] == 5
            assert agent.frames_received >= 10  # the totals outlive the session
        finally:
            await peer.close()
            await clerk.close()


# -- 3. reconnecting by itself ----------------------------------------------------------------


async def test_the_agent_resumes_after_the_hall_drops_it_and_gets_what_it_missed(
        hall: LiveHall) -> None:
    """Dropped server-side while waiting: resumes, keeps the ticket, gets the missed events."""
    matter = served_matter(hall)
    # Nobody serves the queue (no clerk on duty): both tickets wait, the resident's first.
    resident = HallClient("resident")
    await resident.connect(hall.url, {"id_token": await hall.resident_id_token("r-kiosk-1")},
                           timeout=TIMEOUT)
    first = (await resident.ok("ticket.take", {"matter_id": matter,
                                               "when_unstaffed": "wait"}))["ticket"]
    # A reconnect delay of 2-4 s: the missed event is surely numbered while the kiosk is away.
    config = kiosk_config(hall, backoff_initial_s=4.0)
    async with running(config) as agent:
        seen: list[KioskEvent] = []
        agent.events.on("*", seen.append)
        ticket = await agent.take_ticket(matter, when_unstaffed="wait")
        await until(lambda: agent.position is not None and agent.position["position"] == 2,
                    "position 2")
        seq_before = agent._link.last_seq

        hub = hall.app[keys.HUB]
        participant = hub.connections.get(f"kiosk:{POINT}")
        record = embedded(hub).peek(f"kiosk:{POINT}")
        assert participant is not None and record is not None
        await hub.sio.disconnect(participant.sid)
        await until(lambda: agent.state == "reconnecting", "the agent noticing the drop")

        # While the kiosk is away, the resident ahead leaves: the kiosk's position changes.
        await resident.ok("ticket.leave", {"ticket_id": first["id"]})
        await until(lambda: record.seq > seq_before, "a message numbered while away")
        assert record.sid is None, "the agent came back too early for this test"

        await until(lambda: agent.resumes == 1 and agent.state == "online", "the resume",
                    timeout=10)
        await until(lambda: agent.position is not None and agent.position["position"] == 1,
                    "the replayed position")
        assert agent.logins == 1 and agent.resume_refusals == 0  # no new login: a resume
        assert agent.ticket is not None and agent.ticket["id"] == ticket["id"]
        assert agent.ticket["state"] == "waiting"

        names = [e.name for e in seen]
        connected = names.index("agent.connected")
        assert names[connected - 1] == "welcome" and seen[connected].payload["resumed"] is True
        replayed = [e for e in seen[connected:] if "seq" in e.payload]
        assert replayed and all(e.connection == 2 for e in replayed)
        assert [e.payload["seq"] for e in replayed] == list(
            range(seq_before + 1, seq_before + 1 + len(replayed)))
        assert any(e.name == "ticket.position" and e.payload["position"] == 1
                   for e in replayed)
        assert agent._link.gaps == 0
    await resident.close()


@asynccontextmanager
async def hall_on(port: int, env: dict[str, str]) -> AsyncIterator[web.Application]:
    """A demo hall on a given port (so that it can be stopped and started again there)."""
    app = create_app(Settings.from_env({**env, "HALL_PORT": str(port)}), demo=True)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield app
    finally:
        # Stop taking connections, drop the live ones, let the hall settle, then shut down.
        # A plain runner.cleanup() with a client connected hangs: the disconnect wakes the
        # hall's timer task (rooms/runner.py) as it is cancelled, and asyncio.wait_for on
        # Python 3.11 can swallow that cancellation.
        await site.stop()
        hub = app[keys.HUB]
        for participant in hub.connections.all():
            await hub.sio.disconnect(participant.sid)
        await asyncio.sleep(0.5)
        await runner.cleanup()


async def test_the_agent_comes_back_by_itself_after_the_hall_restarts(tmp_path: Path) -> None:
    """The hall stops and starts again at the same address: the agent logs in again."""
    port = free_port()
    # A fixed secret key: the demo kiosk secret stays the same across the restart.
    env = {"HALL_SECRET_KEY": "k" * 32, "HALL_DATA_DIR": str(tmp_path),
           "HALL_DEMO_PASSWORD": PASSWORD,
           "HALL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'records.db'}"}
    async with hall_on(port, env) as app:
        config = KioskConfig(url=f"http://127.0.0.1:{port}", service_point_id=POINT,
                             secret=Secret(app[keys.KIOSK_KEYS].demo_secret(POINT)),
                             media=MediaConfig(answer_sessions=False),
                             backoff_initial_s=0.2, backoff_max_s=1.0)
        agent = KioskAgent(config)
        await asyncio.wait_for(agent.start(), TIMEOUT)
    try:
        await until(lambda: agent.state == "reconnecting", "the agent noticing the hall left")
        await asyncio.sleep(1.5)  # a few attempts against nothing, spaced by the backoff
        assert agent.state == "reconnecting"
        async with hall_on(port, env) as app:
            await until(lambda: agent.state == "online" and agent.connections == 2,
                        "the agent back online")
            # The new hall does not know the old resume token: a fresh login followed.
            assert (agent.resume_refusals, agent.logins) == (1, 1)
            assert app[keys.HUB].connections.get(f"kiosk:{POINT}") is not None
    finally:
        await agent.close()


async def test_a_refused_resume_falls_back_to_a_fresh_login() -> None:
    """After the hall forgot the kiosk (grace over), resume_invalid leads to a new login."""
    async with (live_hall({"HALL_RESUME_GRACE_S": "0.3"}) as hall,
                running(kiosk_config(hall, backoff_initial_s=2.0)) as agent):
        hub = hall.app[keys.HUB]
        participant = hub.connections.get(f"kiosk:{POINT}")
        assert participant is not None
        await hub.sio.disconnect(participant.sid)
        await until(lambda: embedded(hub).peek(f"kiosk:{POINT}") is None,
                    "the hall forgetting the kiosk")
        await until(lambda: agent.connections == 2 and agent.state == "online",
                    "the fresh connection")
        assert (agent.resume_refusals, agent.resumes) == (1, 0)
        assert agent._link.welcome is not None and agent._link.welcome["resumed"] is False


async def test_the_media_comes_back_from_a_fresh_connection_after_a_resume(
        hall: LiveHall) -> None:
    """In a session, a dropped socket: the agent resumes and offers from a fresh connection."""
    async with running(kiosk_config(hall)) as agent:
        clerk, peer = await start_session(hall, agent)
        try:
            await media_flows(agent, peer)
            hub = hall.app[keys.HUB]
            participant = hub.connections.get(f"kiosk:{POINT}")
            assert participant is not None
            await hub.sio.disconnect(participant.sid)
            await clerk.wait_for("session.peer", lambda p: p["state"] == "reconnecting",
                                 timeout=TIMEOUT)
            await clerk.wait_for("session.peer", lambda p: p["state"] == "back",
                                 timeout=TIMEOUT)
            # aiortc cannot restart ICE: the kiosk offers anew, the clerk sees new credentials
            # and answers from a fresh connection too.
            await peer.answer_offer(clerk, timeout=TIMEOUT)
            assert peer.generation == 1
            await until(lambda: agent.media is not None and agent.media.generation == 2,
                        "the kiosk's second connection")
            await media_flows(agent, peer)
            assert agent.resumes == 1
        finally:
            await peer.close()
            await clerk.close()


async def test_the_document_camera_is_shared_as_a_second_video_track(
        hall: LiveHall, tmp_path: Path) -> None:
    """share_document(): media.screen with a stream id, then an offer adding that stream."""
    document = _video_file(tmp_path / "document.webm")  # played by MediaPlayer, in a loop
    media = MediaConfig(document_camera=SourceSpec(str(document)), synthetic=SMALL_VIDEO)
    async with running(kiosk_config(hall, media=media)) as agent:
        clerk, peer = await start_session(hall, agent)
        try:
            await media_flows(agent, peer, frames=3)
            agent.share_document(True)
            screen = await clerk.wait_for("media.screen", timeout=TIMEOUT)
            assert (screen["active"], screen["from_role"]) == (True, "kiosk")
            stream_id = screen["stream_id"]
            offer = await peer.answer_offer(clerk, timeout=TIMEOUT)
            assert f"a=msid:{stream_id} " in offer["description"]["sdp"]
            assert peer.generation == 0  # same ICE and DTLS: renegotiated in place
            await until(lambda: len(peer.remote_video) == 2
                        and all(v.frames > 5 for v in peer.remote_video.values()),
                        "frames on both video tracks")
            assert agent.media is not None and agent.media.generation == 1

            agent.share_document(False)
            stopped = await clerk.wait_for("media.screen", timeout=TIMEOUT)
            assert stopped["active"] is False
            offer = await peer.answer_offer(clerk, timeout=TIMEOUT)
            section = next(m for m in offer["description"]["sdp"].split("m=")
                           if f"a=msid:{stream_id} " in m)
            assert "a=recvonly" in section or "a=inactive" in section  # no longer sent
            await media_flows(agent, peer, frames=3)  # the camera carries on
        finally:
            await peer.close()
            await clerk.close()


# -- 4. health --------------------------------------------------------------------------------


def _video_file(path: Path, frames: int = 30) -> Path:
    """A small real video file (VP8 in WebM) to stand in for a camera."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libvpx", rate=15)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame(160, 120, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([(i * 8) % 256]) * plane.buffer_size)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


async def test_the_default_probe_reports_what_is_configured(tmp_path: Path) -> None:
    """A playable camera file is ok, a missing microphone failed, the unset speaker absent."""
    camera = _video_file(tmp_path / "camera.webm")
    probe = SourceProbe(MediaConfig(camera=SourceSpec(str(camera)),
                                    microphone=SourceSpec(str(tmp_path / "missing.wav"))))
    health = await probe.probe()
    assert (health.camera, health.microphone, health.speaker, health.document_camera) == (
        "ok", "failed", "absent", "absent")
    assert health.detail is not None and "microphone" in health.detail
    assert (await SourceProbe(MediaConfig()).probe()).payload() == {
        "camera": "absent", "microphone": "absent", "speaker": "absent",
        "document_camera": "absent"}


async def test_health_is_reported_on_connect_and_shown_on_the_wall(
        hall: LiveHall, tmp_path: Path) -> None:
    """kiosk.health goes out on connect; a supervisor's wall shows it, with an alert."""
    camera = _video_file(tmp_path / "camera.webm")
    media = MediaConfig(camera=SourceSpec(str(camera)),
                        microphone=SourceSpec(str(tmp_path / "no-microphone.wav")),
                        synthetic=SMALL_VIDEO)
    async with running(kiosk_config(hall, media=media)) as agent:
        await until(lambda: agent.health_accepted is not None, "the first health report")
        assert agent.health_accepted is True, "the hall refused kiosk.health"
        assert agent.health is not None and agent.health.detail is not None
        report = agent.health.payload(agent.agent)
        assert report == {"camera": "ok", "microphone": "failed", "speaker": "absent",
                          "document_camera": "absent", "detail": agent.health.detail,
                          "agent": agent.agent}
        assert agent.agent.startswith("hall-kiosk/")

        supervisor = await staff(hall, "supervisor")
        try:
            wall = (await supervisor.ok("wall.snapshot", {}))["snapshot"]
            mine = [k for k in wall["kiosks"] if k["id"] == POINT]
            assert len(mine) == 1 and mine[0]["online"] is True, mine
            assert mine[0]["health"] == {k: v for k, v in report.items() if k != "agent"}
            assert mine[0]["health_at"] is not None
            assert {"kind": "kiosk_health", "kiosk_id": POINT,
                    "failed": ["microphone"]} in wall["alerts"]
        finally:
            await supervisor.close()


# -- 5. the CLI -------------------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("hall-kiosk")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "kiosk.cli", *args]


async def _read_until(stream: asyncio.StreamReader, needle: str, lines: list[str]) -> None:
    while True:
        raw = await stream.readline()
        if not raw:
            raise AssertionError(f"the CLI ended before {needle!r}: {''.join(lines)}")
        lines.append(raw.decode(errors="replace"))
        if needle in lines[-1]:
            return


async def test_the_cli_connects_and_exits_cleanly_on_sigterm(hall: LiveHall,
                                                             tmp_path: Path) -> None:
    """hall-kiosk runs as a process, comes online, and exits 0 on SIGTERM."""
    secret = hall.app[keys.KIOSK_KEYS].demo_secret(POINT)
    secret_file = tmp_path / "kiosk.secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "HALL_KIOSK_SECRET"}
    process = await asyncio.create_subprocess_exec(
        *_cli("--url", hall.url, "--point", POINT, "--secret-file", str(secret_file),
              "--health-interval", "60", "--log-level", "INFO"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    assert process.stdout is not None
    lines: list[str] = []
    try:
        await asyncio.wait_for(_read_until(process.stdout, f"online as kiosk:{POINT}", lines),
                               TIMEOUT)
        assert hall.app[keys.HUB].connections.get(f"kiosk:{POINT}") is not None
        process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stdout.read(), TIMEOUT)
        code = await asyncio.wait_for(process.wait(), TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = "".join(lines) + rest.decode(errors="replace")
    assert code == 0, output
    assert "stopped (shutdown)" in output, output
    assert secret not in output


async def test_the_cli_exits_2_on_a_refused_secret(hall: LiveHall) -> None:
    """hall-kiosk with a wrong secret logs why and exits 2 at once (no retry loop)."""
    env = {**os.environ, "HALL_KIOSK_SECRET": "wrong-secret"}
    process = await asyncio.create_subprocess_exec(
        *_cli("--url", hall.url, "--point", POINT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    out, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode == 2, out.decode()
    assert "refused service point 'XH-001'" in out.decode()
    assert "wrong-secret" not in out.decode()


# -- 6. closing -------------------------------------------------------------------------------


def _leftovers() -> list[str]:
    """Tasks still running code of the kiosk agent, aiortc/aioice or the Socket.IO client."""
    mine = ("/kiosk/", "/aiortc/", "/aioice/", "/socketio/async_client",
            "/engineio/async_client")
    found = []
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        code = getattr(coro, "cr_code", None)
        if code is not None and any(part in code.co_filename for part in mine):
            found.append(f"{task.get_name()}: {code.co_filename}:{code.co_name}")
    return found


async def test_close_is_idempotent_and_leaves_no_task(hall: LiveHall) -> None:
    """close() twice at once and again later: media, socket and every task are gone."""
    agent = KioskAgent(kiosk_config(hall))
    await asyncio.wait_for(agent.start(), TIMEOUT)
    clerk, peer = await start_session(hall, agent)
    await media_flows(agent, peer, frames=3)
    stopped: list[KioskEvent] = []
    agent.events.on("agent.stopped", stopped.append)
    media = agent.media
    assert media is not None and media.pc is not None
    pc = media.pc

    await asyncio.gather(agent.close(), agent.close())
    await agent.close()
    assert (agent.state, agent.stop_reason, len(stopped)) == ("stopped", "closed", 1)
    assert pc.connectionState == "closed" and agent.media is None
    assert not agent._link.connected and len(agent._tasks) == 0
    await clerk.wait_for("session.peer", lambda p: p["state"] == "reconnecting",
                         timeout=TIMEOUT)
    await peer.close()
    await clerk.close()
    await until(lambda: not _leftovers(), "every agent and media task to end", timeout=5)


async def test_a_throttled_login_waits_for_retry_after() -> None:
    """429 on login: the agent waits the hall's Retry-After, then logs in once."""
    env = {"HALL_LOGIN_FAILURE_LIMIT": "1", "HALL_LOGIN_FAILURE_WINDOW_S": "2"}
    async with live_hall(env) as hall:
        with pytest.raises(KioskAuthError):
            await asyncio.wait_for(KioskAgent(kiosk_config(hall, secret="wrong")).start(),
                                   TIMEOUT)
        started = time.monotonic()
        async with running(kiosk_config(hall)) as agent:
            assert time.monotonic() - started >= 1.0  # it waited for the lock-out to age
            assert agent.logins == 1 and agent.state == "online"


async def test_the_token_is_renewed_before_it_expires() -> None:
    """With 8 s tokens, auth.refresh renews the token at three quarters of its life."""
    async with (live_hall({"HALL_TOKEN_TTL_S": "8"}) as hall,
                running(kiosk_config(hall)) as agent):
        first = agent._token
        assert first is not None
        await until(lambda: agent.token_refreshes >= 1, "a token refresh", timeout=10)
        assert agent._token is not None and agent._token.expires_at > first.expires_at
        assert agent.logins == 1
        file = await agent.upload_file(PNG, ticket_id=(await agent.take_ticket(
            served_matter(hall), when_unstaffed="wait"))["id"])
        assert file["size"] == len(PNG)  # the renewed token works over HTTP too


async def test_a_second_instance_replaces_the_first(hall: LiveHall) -> None:
    """Another agent of the same point connects: the first stops with reason replaced."""
    async with running(kiosk_config(hall)) as first, running(kiosk_config(hall)) as second:
        assert await asyncio.wait_for(first.wait_stopped(), TIMEOUT) == "replaced"
        assert second.state == "online"
        await asyncio.sleep(1.0)  # the first one does not come back and take over again
        assert second.state == "online" and second.connections == 1
