"""TURN for real: calls relayed through a private coturn with the hall's own credentials.

tests/turnproc.py starts ``turnserver`` (Debian's coturn) with ``use-auth-secret`` on free
ports of the machine's own address: UDP and TCP on one port, TLS (``turns:``) on another with
a certificate from a test CA made at start-up. The hall runs with ``HALL_TURN_URLS`` pointing
at it and ``HALL_TURN_SECRET`` set to its secret, so the only credentials coturn accepts are
the ones in the hall's session view (``ice_servers``: ``"<expiry>:<participant>"`` and
base64(HMAC-SHA1(secret, username))).

* aiortc ↔ aiortc, both ``iceTransportPolicy="relay"``, once per transport (``turn:…udp``,
  ``turn:…tcp``, ``turns:…tcp``): media and data both ways, the selected pair relay ↔ relay,
  and coturn's own log says it relayed the media for those two credentials over that
  listener.
* Chromium ↔ aiortc over each transport, the page relay-only (``HallClient`` option
  ``iceTransportPolicy``; the pages' ``?relay=1`` switch): frames decoded in the browser, its
  selected pair relay over the expected relay protocol.
* An expired credential (the hall's ``turn_credentials`` with a TTL in the past) is refused
  (401 on Allocate, over every transport), so a relay-only peer holding one gathers nothing
  and cannot connect, while a fresh one works.
* ``turns:`` is verified TLS for aiortc and for Chromium; ``deploy/turnserver.conf`` itself
  relays over UDP, TCP and TLS when run with this machine's address and ports.

``turns:`` and aiortc: aiortc passes ``ssl=True`` to aioice, which verifies the server's
certificate with Python's default context (system CAs, host name checked against the URL's
host). A private CA is trusted through ``SSL_CERT_FILE`` (OpenSSL reads it on every new
context), which is how a kiosk agent would trust a district CA too; without it the TLS
handshake fails (checked below).
"""

# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint
from aiortc import RTCIceServer
from playwright.async_api import Browser, Page, async_playwright

from kiosk.media import aiortc_candidate
from signaling.identity import turn_credentials
from tests.browserkit import CHROMIUM_ARGS, open_rtc_test_page
from tests.rtcpeer import HallClient, MediaPeer, Payload, ice_servers_from
from tests.signalkit import LiveHall, live_hall, matter_of
from tests.turnproc import TurnServer, own_turn

CLERK = "clerk01"
TIMEOUT = 10.0  # every single wait
TURN_TTL_S = 600
TRANSPORTS = ("udp", "tcp", "tls")


@pytest.fixture(scope="module")
def turn() -> Iterator[TurnServer]:
    """One private coturn for the module (each test uses credentials of its own)."""
    with own_turn() as server:
        yield server


def turn_url(turn: TurnServer, transport: str) -> str:
    return {"udp": turn.udp_url, "tcp": turn.tcp_url, "tls": turn.tls_url}[transport]


@contextlib.contextmanager
def trusting(turn: TurnServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make Python's default TLS context (what aioice uses for ``turns:``) trust the test CA."""
    with monkeypatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(turn.ca_file))
        yield


@contextlib.asynccontextmanager
async def turn_hall(turn: TurnServer, transport: str) -> AsyncIterator[LiveHall]:
    async with live_hall({"HALL_TURN_URLS": turn_url(turn, transport),
                          "HALL_TURN_SECRET": turn.secret,
                          "HALL_TURN_TTL_S": str(TURN_TTL_S)}) as hall:
        yield hall


def check_ice_servers(view: Payload, participant: str, url: str) -> None:
    """The session view carries the hall's TURN REST credential for this participant."""
    servers = view["ice_servers"]
    assert len(servers) == 1 and servers[0]["urls"] == [url], servers
    expiry, _, who = str(servers[0]["username"]).partition(":")
    assert who == participant, servers
    assert abs(int(expiry) - (time.time() + TURN_TTL_S)) < 30, servers
    assert servers[0]["credential"], servers


@dataclass
class Call:
    """clerk01 and a resident in one session, as Socket.IO clients of the hall."""

    clerk: HallClient
    resident: HallClient
    clerk_view: Payload
    resident_view: Payload
    peers: list[MediaPeer] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.clerk_view["id"])

    def participant(self, client: HallClient) -> str:
        return str(client.welcomes[0]["participant"])

    async def close(self) -> None:
        for peer in self.peers:
            await peer.close()
        for client in (self.clerk, self.resident):
            await client.close()


@contextlib.asynccontextmanager
async def call(hall: LiveHall, resident_id: str) -> AsyncIterator[Call]:
    clerk = HallClient("clerk")
    resident = HallClient("resident")
    try:
        await clerk.connect(hall.url, {"token": await hall.clerk_token(CLERK)}, timeout=TIMEOUT)
        await resident.connect(hall.url, {"id_token": await hall.resident_id_token(resident_id)},
                               timeout=TIMEOUT)
        taken = await resident.ok("ticket.take", {"matter_id": matter_of(hall, CLERK),
                                                  "when_unstaffed": "wait"})
        ticket_id = taken["ticket"]["id"]
        await clerk.wait_for("offer.new", lambda p: p["ticket_id"] == ticket_id, timeout=TIMEOUT)
        await clerk.ok("offer.accept", {"ticket_id": ticket_id})
        clerk_view = (await clerk.wait_for("session.started", timeout=TIMEOUT))["session"]
        resident_view = (await resident.wait_for("session.started", timeout=TIMEOUT))["session"]
        session = Call(clerk, resident, clerk_view, resident_view)
        try:
            yield session
        finally:
            await session.close()
    finally:
        await clerk.close()
        await resident.close()


def selected_pair(peer: MediaPeer) -> tuple[str, str]:
    """(local, remote) candidate types of the pair aioice nominated.

    aiortc has no getSelectedCandidatePair(); the ICE transport's aioice Connection keeps the
    nominated pair per component (a private attribute, read only here)."""
    sctp = peer.pc.sctp
    assert sctp is not None, f"{peer.name}: no data channel transport"
    connection = sctp.transport.transport._connection
    pair = connection._nominated.get(1)
    assert pair is not None, f"{peer.name}: no nominated pair"
    return str(pair.local_candidate.type), str(pair.remote_candidate.type)


def local_candidate_types(peer: MediaPeer) -> set[str]:
    sdp = peer.pc.localDescription.sdp
    return {m.group(1) for m in re.finditer(r"^a=candidate:.* typ (\w+)", sdp, re.M)}


# -- what coturn says it did --------------------------------------------------------------------

_SESSION = re.compile(r"session (\d+): (.*)$")


def relayed_sessions(turn: TurnServer) -> dict[str, list[str]]:
    """coturn's log lines per TURN session id (verbose log: every Allocate, usage, close)."""
    sessions: dict[str, list[str]] = {}
    for line in turn.log_tail(10_000_000).splitlines():
        found = _SESSION.search(line)
        if found:
            sessions.setdefault(found.group(1), []).append(found.group(2))
    return sessions


def usage_of(turn: TurnServer, username: str) -> list[tuple[str, int]]:
    """For each closed allocation of ``username``: (the listener it came in on, bytes coturn
    relayed to and from peers), from coturn's "peer usage" and "closed" lines."""
    found = []
    for lines in relayed_sessions(turn).values():
        if not any(f"username=<{username}>" in line for line in lines):
            continue
        peer_bytes = closed_on = None
        for line in lines:
            usage = re.match(r"peer usage: .* rb=(\d+), sp=\d+, sb=(\d+)", line)
            if usage and f"username=<{username}>" in line:
                peer_bytes = int(usage.group(1)) + int(usage.group(2))
            close = re.match(r"closed \(2nd stage\).* local [\d.]+:(\d+),.* reason: (.*)$", line)
            if close:
                port, reason = int(close.group(1)), close.group(2)
                closed_on = ("tls" if port == turn.tls_port and "TLS" in reason
                             else "tcp" if port == turn.port and "TCP" in reason
                             else "udp" if port == turn.port else f"{port}: {reason}")
        if peer_bytes is not None and closed_on is not None:
            found.append((closed_on, peer_bytes))
    return found


async def until(what: str, check: Callable[[], Awaitable[bool] | bool],
                timeout: float = TIMEOUT) -> float:
    """Poll ``check`` every 20 ms until it holds; returns the seconds taken."""
    start = time.monotonic()
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.02)


# -- (a) aiortc ↔ aiortc, relay only, over UDP, TCP and TLS ------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_aiortc_peers_call_through_turn_with_the_halls_credentials(
        turn: TurnServer, transport: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = turn_url(turn, transport)
    with trusting(turn, monkeypatch):
        async with turn_hall(turn, transport) as hall, call(hall, f"r-turn-{transport}") as c:
            check_ice_servers(c.clerk_view, c.participant(c.clerk), url)
            check_ice_servers(c.resident_view, c.participant(c.resident), url)
            clerk = MediaPeer.for_session("clerk-media", c.clerk_view, tag=1, relay_only=True)
            resident = MediaPeer.for_session("resident-media", c.resident_view, tag=2,
                                             relay_only=True)
            c.peers += [clerk, resident]
            t0 = time.monotonic()
            await asyncio.gather(clerk.negotiate(c.clerk, initiator=True, timeout=TIMEOUT),
                                 resident.negotiate(c.resident, initiator=False, timeout=TIMEOUT))
            # Relay only: each side offered its TURN allocation and nothing else.
            assert local_candidate_types(clerk) == local_candidate_types(resident) == {"relay"}
            await asyncio.gather(clerk.wait_connected(TIMEOUT), resident.wait_connected(TIMEOUT))
            connected = time.monotonic() - t0
            # 30 frames (about a second of video): enough bytes to tell media from ICE checks in
            # coturn's account below.
            await asyncio.gather(clerk.wait_frames(30, TIMEOUT), resident.wait_frames(30, TIMEOUT))
            assert clerk.remote_tags() == {2} and resident.remote_tags() == {1}
            await asyncio.gather(clerk.wait_channel_open(TIMEOUT),
                                 resident.wait_channel_open(TIMEOUT))
            clerk.send("您好，我是帮办")
            resident.send("您好")
            assert await clerk.wait_messages(1, TIMEOUT) == ["您好"]
            assert await resident.wait_messages(1, TIMEOUT) == ["您好，我是帮办"]
            assert selected_pair(clerk) == selected_pair(resident) == ("relay", "relay")
            print(f"[timing] TURN {transport}: offer to connected {connected:.3f} s, "
                  f"30 frames each way {time.monotonic() - t0:.3f} s")
            usernames = [str(v["ice_servers"][0]["username"])
                         for v in (c.clerk_view, c.resident_view)]

    # Closing the peers released their allocations: coturn's account of each credential is
    # the transport asked for, with the call's media relayed through it.
    def accounted() -> bool:
        return all(usage_of(turn, name) for name in usernames)

    await until("coturn's usage lines for both credentials", accounted)
    for name in usernames:
        sessions = usage_of(turn, name)
        # aiortc allocates once per transceiver (audio, video, data) before bundling, so a
        # credential has three allocations; one carries the call. ICE checks and the DTLS
        # handshake alone come to about 4 kB; measured with 30 frames each way: about 16 kB.
        assert {on for on, _ in sessions} == {transport}, (name, sessions, turn.log_tail())
        assert max(relayed for _, relayed in sessions) > 10_000, (name, sessions)


# -- (b) Chromium ↔ aiortc, the page relay only ------------------------------------------------


async def clerk_signals(client: HallClient, peer: MediaPeer) -> None:
    """The aiortc clerk's side of the browser's answer and trickled candidates."""
    while True:
        signal = await client.wait_for("rtc.signal", lambda p: p.get("from") == "peer",
                                       timeout=3600)
        description = signal.get("description")
        if isinstance(description, dict) and description.get("type") == "answer":
            await peer.accept_answer(description)
        elif "candidate" in signal:
            init = signal["candidate"]
            await peer.pc.addIceCandidate(None if init is None else aiortc_candidate(init))


SELECTED_PAIR_JS = """async () => {
  const report = await window.hallRtc.pc.getStats();
  let pair = null;
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) {
      pair = report.get(s.selectedCandidatePairId);
    }
  });
  if (!pair || pair.state !== "succeeded") return null;
  const local = report.get(pair.localCandidateId), remote = report.get(pair.remoteCandidateId);
  return {local: local.candidateType, relayProtocol: local.relayProtocol || null,
          url: local.url || null, remote: remote.candidateType};
}"""


async def js(page: Page, expression: str, arg: object = None) -> Any:
    """page.evaluate with the test's deadline (Playwright's own has none for evaluate)."""
    return await asyncio.wait_for(page.evaluate(expression, arg), TIMEOUT)


@pytest.fixture
async def turn_browser(turn: TurnServer, chromium: Path) -> AsyncIterator[Browser]:
    """Chromium that trusts the TURN server's test certificate (pinned by its key)."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True,
            args=[*CHROMIUM_ARGS,
                  f"--ignore-certificate-errors-spki-list={turn.spki_sha256}"])
        try:
            yield launched
        finally:
            await launched.close()


@pytest.mark.browser
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_browser_calls_relay_only_through_turn(
        turn: TurnServer, turn_browser: Browser, transport: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = turn_url(turn, transport)
    context = await turn_browser.new_context()
    console: list[str] = []
    with trusting(turn, monkeypatch):
        async with turn_hall(turn, transport) as hall:
            clerk = HallClient("clerk")
            pump: asyncio.Task[None] | None = None
            peer: MediaPeer | None = None
            try:
                await clerk.connect(hall.url, {"token": await hall.clerk_token(CLERK)},
                                    timeout=TIMEOUT)
                page = await context.new_page()
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                id_token = await hall.resident_id_token(f"r-turn-browser-{transport}", "张三")
                await open_rtc_test_page(
                    page, hall.url, f"#id_token={id_token}&ice_transport_policy=relay")
                welcome = await js(page, "window.hallReady")
                taken = await js(page, "m => window.hallRtc.call('ticket.take', "
                                 "{matter_id: m, when_unstaffed: 'wait'})", matter_of(hall, CLERK))
                assert taken["ok"] is True, taken
                ticket_id = taken["ticket"]["id"]
                await clerk.wait_for("offer.new", lambda p: p["ticket_id"] == ticket_id,
                                     timeout=TIMEOUT)
                await clerk.ok("offer.accept", {"ticket_id": ticket_id})
                session = (await clerk.wait_for("session.started", timeout=TIMEOUT))["session"]
                check_ice_servers(session, str(clerk.welcomes[0]["participant"]), url)
                peer = MediaPeer.for_session("clerk-media", session, tag=1, relay_only=True)
                pump = asyncio.create_task(clerk_signals(clerk, peer))
                t0 = time.monotonic()
                await peer.send_offer(clerk, timeout=TIMEOUT)

                async def decoded() -> bool:
                    assert pump is not None and not pump.done(), pump
                    stats = await js(page, "window.hallRtc.stats()")
                    return int(stats["framesDecoded"]) >= 10

                try:
                    await until("10 frames decoded in the browser", decoded)
                    # The fake camera's frames carry no stamps: count them all.
                    await until("10 frames from the browser at the clerk", lambda: sum(
                        v.frames for v in peer.remote_video.values()) >= 10)
                except AssertionError as exc:
                    log = await js(page, "window.hallLog || []")
                    raise AssertionError("\n".join([str(exc), *console[-20:], *log[-30:],
                                                    turn.log_tail(3000)])) from exc
                elapsed = time.monotonic() - t0
                pair = await js(page, SELECTED_PAIR_JS)
                expected_protocol = {"udp": "udp", "tcp": "tcp", "tls": "tls"}[transport]
                assert pair is not None and pair["local"] == "relay", pair
                assert pair["relayProtocol"] == expected_protocol, pair
                # aiortc answers the browser's relayed address from its own allocation.
                assert selected_pair(peer) == ("relay", "relay")
                assert welcome["role"] == "resident"
                print(f"[timing] browser TURN {transport}: offer to 10 frames decoded "
                      f"{elapsed:.3f} s; pair {pair}")
            finally:
                if pump is not None:
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump
                if peer is not None:
                    await peer.close()
                await clerk.close()
                await context.close()


GATHER_RELAY_JS = """async (server) => {
  const pc = new RTCPeerConnection({iceServers: [server], iceTransportPolicy: "relay"});
  pc.createDataChannel("probe");
  const types = [];
  const done = new Promise((resolve) => {
    pc.onicecandidate = ({candidate}) => {
      if (candidate) types.push(candidate.type); else resolve();
    };
  });
  await pc.setLocalDescription(await pc.createOffer());
  await done;
  pc.close();
  return types;
}"""


@pytest.mark.browser
async def test_chromium_verifies_the_turns_certificate(
        turn: TurnServer, turn_browser: Browser, browser: Browser) -> None:
    """Chromium gathers a ``turns:`` relay candidate only from a server whose certificate it
    trusts (here: pinned); the same credential against an untrusted one gathers nothing."""
    username, credential = turn_credentials(turn.secret, "resident:r-turn-probe",
                                            ttl_s=TURN_TTL_S, now=time.time())
    server = {"urls": [turn.tls_url], "username": username, "credential": credential}
    found: dict[str, list[str]] = {}
    for name, launched in (("pinned", turn_browser), ("untrusted", browser)):
        context = await launched.new_context()
        try:
            page = await context.new_page()
            found[name] = await js(page, GATHER_RELAY_JS, server)
        finally:
            await context.close()
    assert set(found["pinned"]) == {"relay"} and found["untrusted"] == [], found


@pytest.mark.browser
async def test_relay_1_in_a_pages_address_makes_its_calls_relay_only(browser: Browser) -> None:
    """The operators' diagnosis switch: any page's HallClient opens its connections with
    ``iceTransportPolicy: "relay"`` when the address has ``?relay=1``."""
    probe = """async () => {
      const { HallClient } = await import("/static/js/hall-client.js");
      return new HallClient({ credentials: {} })._rtcConfig({ ice_servers: [] });
    }"""
    async with live_hall() as hall:
        context = await browser.new_context()
        try:
            page = await context.new_page()
            seen: dict[str, str] = {}
            for query in ("?relay=1", ""):
                await page.goto(f"{hall.url}/{query}")
                seen[query] = (await js(page, probe))["iceTransportPolicy"]
        finally:
            await context.close()
    assert seen == {"?relay=1": "relay", "": "all"}, seen


# -- (c) an expired credential is refused ------------------------------------------------------


async def allocate(turn: TurnServer, transport: str, username: str,
                   password: str) -> tuple[str, int]:
    """One TURN Allocate (what aioice does while gathering); returns the relayed address."""
    port = turn.tls_port if transport == "tls" else turn.port
    relay, _ = await asyncio.wait_for(create_turn_endpoint(
        asyncio.DatagramProtocol, (turn.host, port), username, password,
        ssl=transport == "tls", transport="udp" if transport == "udp" else "tcp"), TIMEOUT)
    try:
        host, relayed_port = relay.get_extra_info("sockname")
        return str(host), int(relayed_port)
    finally:
        relay.close()


async def test_an_expired_credential_is_refused_over_every_transport(
        turn: TurnServer, monkeypatch: pytest.MonkeyPatch) -> None:
    participant = "resident:r-turn-expired"
    now = time.time()
    fresh = turn_credentials(turn.secret, participant, ttl_s=TURN_TTL_S, now=now)
    expired = turn_credentials(turn.secret, participant, ttl_s=-60, now=now)
    forged = turn_credentials("not-the-secret", participant, ttl_s=TURN_TTL_S, now=now)
    with trusting(turn, monkeypatch):
        for transport in TRANSPORTS:
            assert (await allocate(turn, transport, *fresh))[0] == turn.host
            for refused in (expired, forged):
                with pytest.raises(TransactionFailed) as failed:
                    await allocate(turn, transport, *refused)
                assert failed.value.response.attributes["ERROR-CODE"][0] == 401, transport


async def test_turns_certificate_is_verified_by_aiortc(turn: TurnServer) -> None:
    """Without the test CA trusted, aioice refuses the TURN server's certificate: ``turns:``
    from aiortc is verified TLS, not merely encrypted."""
    username, password = turn_credentials(turn.secret, "clerk:clerk01", ttl_s=60,
                                          now=time.time())
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        await allocate(turn, "tls", username, password)


async def test_a_relay_only_peer_with_an_expired_credential_cannot_connect(
        turn: TurnServer) -> None:
    """The resident's credential expired before the call: its relay-only peer gathers no
    candidate and ICE fails; renewed with a fresh credential (what the hall hands out on the
    next session view), the call connects."""
    async with turn_hall(turn, "udp") as hall, call(hall, "r-turn-late") as c:
        resident_id = c.participant(c.resident)
        username, credential = turn_credentials(turn.secret, resident_id, ttl_s=-1,
                                                now=time.time())
        stale = MediaPeer(
            "resident-media", tag=2, session_id=c.id, relay_only=True,
            ice_servers=[RTCIceServer(urls=[turn.udp_url], username=username,
                                      credential=credential)])
        clerk = MediaPeer.for_session("clerk-media", c.clerk_view, tag=1, relay_only=True)
        c.peers += [clerk, stale]
        await asyncio.gather(clerk.negotiate(c.clerk, initiator=True, timeout=TIMEOUT),
                             stale.negotiate(c.resident, initiator=False, timeout=TIMEOUT))
        assert local_candidate_types(stale) == set()  # the Allocate was refused
        assert local_candidate_types(clerk) == {"relay"}
        # aiortc does not even start ICE without a local candidate (the stale side stays
        # "new"); the clerk, with only that side's silence to check against, fails.
        await until("the clerk's ICE to fail", lambda: clerk.pc.connectionState == "failed")
        assert stale.pc.connectionState != "connected" and stale.frames_received == 0
        assert f"user <{username}>" in turn.log_tail(), "coturn never saw the stale credential"

        # The hall's own credential for the same resident works on the same call.
        fresh = MediaPeer.for_session("resident-media-2", c.resident_view, tag=3,
                                      relay_only=True)
        c.peers.append(fresh)
        await clerk.renew()
        await asyncio.gather(clerk.negotiate(c.clerk, initiator=True, timeout=TIMEOUT),
                             fresh.negotiate(c.resident, initiator=False, timeout=TIMEOUT))
        await asyncio.gather(clerk.wait_connected(TIMEOUT), fresh.wait_connected(TIMEOUT))
        await fresh.wait_frames(5, TIMEOUT)
        assert selected_pair(fresh) == ("relay", "relay")
        assert ice_servers_from(c.resident_view)[0].username != username



# -- the deployment's coturn configuration ------------------------------------------------------

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


async def test_the_deploy_configuration_relays_over_udp_tcp_and_tls(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/turnserver.conf, run for real (with this machine's address, free ports and the
    test certificate in place of the production ones), allocates over UDP, TCP and TLS for
    the hall's credentials and refuses an expired one; compose publishes the TLS port and
    hands the halls a ``turns:`` URL."""
    conf = (DEPLOY / "turnserver.conf").read_text()
    for line in ("listening-port=3478", "tls-listening-port=5349", "use-auth-secret"):
        assert re.search(f"^{re.escape(line)}$", conf, re.M), line
    assert not re.search(r"^no-tls$", conf, re.M)
    compose = (DEPLOY / "compose.yaml").read_text()
    assert '"5349:5349/tcp"' in compose
    found = re.search(r"^\s*HALL_TURN_URLS: (.*)$", compose, re.M)
    assert found, "compose.yaml sets no HALL_TURN_URLS"
    urls = found.group(1).split(",")
    # UDP first: aiortc (the kiosk agent) takes only the first TURN URL.
    assert urls[0].startswith("turn:") and urls[0].endswith(":3478?transport=udp"), urls
    assert "turns:${TURN_PUBLIC_HOST}:5349?transport=tcp" in urls, urls
    with own_turn(base_config=conf) as deployed, trusting(deployed, monkeypatch):
        now = time.time()
        fresh = turn_credentials(deployed.secret, "clerk:clerk01", ttl_s=TURN_TTL_S, now=now)
        expired = turn_credentials(deployed.secret, "clerk:clerk01", ttl_s=-60, now=now)
        for transport in TRANSPORTS:
            assert (await allocate(deployed, transport, *fresh))[0] == deployed.host
            with pytest.raises(TransactionFailed):
                await allocate(deployed, transport, *expired)
