"""The resident in real Chromium, the clerk as an aiortc peer, through the real hall.

The browser loads ``tests/rtc-test.html`` at the hall's origin (the Socket.IO client bundle and
``js/hall-client.js`` come from the hall itself) with fake camera and microphone; the clerk is a
:class:`tests.rtcpeer.MediaPeer` driven from Python. Both sides follow docs/protocol.md: the
clerk offers (half-trickle), the browser answers and trickles its candidates one ``rtc.signal``
at a time, then ``{candidate: null}``.

After a dropped socket the browser resumes (``{resume, last_seq}``) and restarts ICE
(``restartIce()``, a new offer with new ICE credentials on the same connection). aiortc 1.16
cannot take part in an ICE restart, checked here both ways the clerk can answer it:

* ``in_place``: aiortc accepts the restart offer and answers it, but with its *old* ICE
  ufrag/password (``RTCIceTransport.start`` runs once, so aioice never learns the browser's new
  credentials, answers its new checks with 401 and refuses candidates after the earlier
  end-of-candidates). Left alone, the browser keeps media on the old pair and the restart never
  completes (measured: still on the old pair 11 s later).
* ``fresh``: the clerk answers from a fresh ``RTCPeerConnection`` (what :class:`MediaPeer`
  does with an offer that changes the ICE ufrag). Chromium accepts the new DTLS fingerprint
  and media recovers through a DTLS restart, but the data channel closes for good (its SCTP
  association does not survive), and aiortc's fresh connection never gets one.

So ``hall-client.js`` sees either answer for what it is (same remote ufrag; new remote DTLS
fingerprint) and falls back to a fresh RTCPeerConnection and a new offer, which aiortc answers
from a fresh connection: media and the data channel come back in ~0.1 s.

Chromium is Debian's package (``scripts/install-browser.sh`` installs it when missing), driven
by Playwright through ``executable_path``; ``playwright install`` is never used. Timings are
printed with the ``[timing]`` prefix (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp
from playwright.async_api import Browser, Page, Response

from server import keys
from tests.browserkit import open_rtc_test_page
from tests.rtcpeer import HallClient, MediaPeer, Payload
from tests.signalkit import LiveHall, live_hall

ROOT = Path(__file__).resolve().parent.parent
CLERK = "clerk01"
TIMEOUT = 10.0  # every single wait

pytestmark = pytest.mark.browser


# -- fixtures (chromium, browser: tests/browserkit.py) ---------------------------------------


@pytest.fixture
async def hall() -> AsyncIterator[LiveHall]:
    async with live_hall() as running:
        yield running


# -- the clerk: an aiortc peer -----------------------------------------------------------------


def _ufrag(sdp: str | None) -> str | None:
    for line in (sdp or "").splitlines():
        if line.startswith("a=ice-ufrag:"):
            return line.split(":", 1)[1].strip()
    return None


def _aiortc_candidate(init: Payload) -> RTCIceCandidate | None:
    """A browser's RTCIceCandidateInit as aiortc's RTCIceCandidate (None: end marker)."""
    text = str(init.get("candidate") or "")
    if not text:
        return None
    candidate = candidate_from_sdp(text.removeprefix("candidate:"))
    candidate.sdpMid = init.get("sdpMid")
    candidate.sdpMLineIndex = init.get("sdpMLineIndex")
    return candidate


def _fingerprint(sdp: str | None) -> str | None:
    for line in (sdp or "").splitlines():
        if line.startswith("a=fingerprint:"):
            return line.split(":", 1)[1].strip().lower()
    return None


@dataclass(frozen=True)
class Answered:
    """An offer from the browser and how the clerk answered it."""

    offer_ufrag: str | None
    fresh: bool  # answered from a fresh RTCPeerConnection
    answer_ufrag: str | None


@dataclass
class ClerkSide:
    """clerk01 over Socket.IO (:class:`HallClient`) with an aiortc :class:`MediaPeer`.

    One task handles every ``rtc.signal`` from the resident, in order: answers, offers and
    trickled candidates (a candidate of another ICE generation than the current remote
    description is dropped). An offer from a new browser connection (new DTLS fingerprint) is
    answered from a fresh RTCPeerConnection. An ICE-restart offer (same fingerprint, new
    ufrag) is answered as ``restart_answer`` says: ``"in_place"``, on the current connection
    (what aiortc itself does with one: it answers with its old ICE credentials), or
    ``"fresh"``, from a fresh connection (what :class:`MediaPeer` does, per docs/protocol.md).
    """

    client: HallClient
    restart_answer: str = "fresh"
    peer: MediaPeer | None = None
    answered: list[Answered] = field(default_factory=list)
    candidates_added: int = 0
    candidates_dropped: int = 0
    failure: BaseException | None = None
    _task: asyncio.Task[None] | None = None
    _ended: set[int] = field(default_factory=set)  # generations told end-of-candidates

    def start(self, session: Payload) -> MediaPeer:
        self.peer = MediaPeer.for_session("clerk-media", session, tag=1)
        self._task = asyncio.create_task(self._pump(), name="clerk-signals")
        return self.peer

    async def offer(self) -> None:
        assert self.peer is not None
        await self.peer.send_offer(self.client, timeout=TIMEOUT)

    @property
    def frames(self) -> int:
        """Video frames received from the browser on the current connection."""
        if self.peer is None:
            return 0
        return sum(video.frames for video in self.peer.remote_video.values())

    async def _pump(self) -> None:
        try:
            while True:
                signal = await self.client.wait_for(
                    "rtc.signal", lambda p: p.get("from") == "peer", timeout=3600
                )
                await self._handle(signal)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced by check()
            self.failure = exc

    def _answer_fresh(self, offer: Payload) -> bool:
        assert self.peer is not None
        pc = self.peer.pc
        remote = pc.remoteDescription
        if pc.connectionState in ("failed", "closed") or remote is None:
            return pc.connectionState in ("failed", "closed")
        if _fingerprint(remote.sdp) != _fingerprint(str(offer["sdp"])):
            return True  # a new connection on the browser's side
        return self.restart_answer == "fresh" and self.peer.needs_fresh_connection(offer)

    async def _handle(self, signal: Payload) -> None:
        peer = self.peer
        assert peer is not None
        description = signal.get("description")
        if isinstance(description, dict):
            if description["type"] == "answer":
                await peer.accept_answer(description)
            elif description["type"] == "offer":
                fresh = self._answer_fresh(description)
                if fresh:
                    await peer.renew()
                answer = await peer.answer(description)
                self.answered.append(Answered(_ufrag(str(description["sdp"])), fresh,
                                              _ufrag(str(answer["sdp"]))))
                await self.client.ok("rtc.signal", {"session_id": peer.session_id,
                                                    "description": answer}, timeout=TIMEOUT)
            return
        if "candidate" not in signal:
            return
        remote = peer.pc.remoteDescription
        init = signal["candidate"]
        if init is None:
            if remote is not None and peer.generation not in self._ended:
                self._ended.add(peer.generation)
                await peer.pc.addIceCandidate(None)
            return
        candidate = _aiortc_candidate(init)
        ufrag = init.get("usernameFragment")
        if (candidate is None or remote is None
                or (ufrag is not None and ufrag != _ufrag(remote.sdp))):
            self.candidates_dropped += 1
            return
        try:
            await peer.pc.addIceCandidate(candidate)
        except ValueError:
            # aioice: "Cannot add remote candidate after end-of-candidates" (the candidates
            # of an ICE restart answered in place: aiortc has no new ICE generation for them).
            self.candidates_dropped += 1
            return
        self.candidates_added += 1

    def check(self) -> None:
        if self.failure is not None:
            raise AssertionError(f"clerk signaling failed: {self.failure!r}") from self.failure
        self.client.check()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.peer is not None:
            await self.peer.close()
        await self.client.close()


# -- the resident: rtc-test.html in Chromium ---------------------------------------------------


async def stats(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate("window.hallRtc.stats()")
    return result


async def until(what: str, check: Callable[[], Awaitable[bool]]) -> float:
    """Poll ``check`` every 20 ms until it holds (at most TIMEOUT); returns the seconds taken."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > TIMEOUT:
            raise AssertionError(f"no {what} within {TIMEOUT} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@dataclass
class Live:
    """A session in progress: the browser page, the clerk and the session id."""

    page: Page
    clerk: ClerkSide
    session_id: str
    console: list[str]  # console messages, page errors and failed HTTP requests
    requests: list[str]  # every URL the page requested

    async def browser_stats(self) -> dict[str, Any]:
        return await stats(self.page)

    async def diagnostics(self) -> str:
        log = await self.page.evaluate("window.hallLog || []")
        return "\n".join([*self.console[-20:], *log[-30:]])


async def matter_of(hall: LiveHall, clerk_id: str) -> str:
    """A consultation matter the clerk serves."""
    catalog = hall.app[keys.CATALOG]
    profile = catalog.clerks[clerk_id]
    for matter in catalog.matters.values():
        if matter.id in profile.matters or matter.department_id in profile.departments:
            return str(matter.id)
    raise AssertionError(f"no matter served by {clerk_id}")


@contextlib.asynccontextmanager
async def live_session(hall: LiveHall, browser: Browser,
                       restart_answer: str = "fresh") -> AsyncIterator[Live]:
    """clerk01 on duty (aiortc), a resident in Chromium takes a ticket, clerk01 accepts, the
    clerk offers; yields once the offer is out."""
    clerk = ClerkSide(HallClient("clerk"), restart_answer=restart_answer)
    context = await browser.new_context()
    console: list[str] = []
    requests: list[str] = []
    try:
        await clerk.client.connect(hall.url, {"token": await hall.clerk_token(CLERK)},
                                   timeout=TIMEOUT)
        page = await context.new_page()
        page.on("console", lambda m: console.append(f"console.{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.on("request", lambda r: requests.append(r.url))

        def failed(response: Response) -> None:
            if response.status >= 400:
                console.append(f"HTTP {response.status} {response.url}")

        page.on("response", failed)
        id_token = await hall.resident_id_token("r-browser-1", "张三")
        await open_rtc_test_page(page, hall.url, f"#id_token={id_token}")
        welcome = await page.evaluate("window.hallReady")
        assert welcome["role"] == "resident" and welcome["resumed"] is False, welcome

        matter_id = await matter_of(hall, CLERK)
        taken = await page.evaluate(
            "m => window.hallRtc.call('ticket.take', {matter_id: m, when_unstaffed: 'wait'})",
            matter_id)
        assert taken["ok"] is True, taken
        ticket_id = taken["ticket"]["id"]
        await clerk.client.wait_for("offer.new", lambda p: p["ticket_id"] == ticket_id,
                                    timeout=TIMEOUT)
        await clerk.client.ok("offer.accept", {"ticket_id": ticket_id}, timeout=TIMEOUT)
        session = (await clerk.client.wait_for("session.started", timeout=TIMEOUT))["session"]
        assert session["initiator"] is True and session["polite"] is False, session
        clerk.start(session)
        await clerk.offer()
        yield Live(page, clerk, str(session["id"]), console, requests)
    finally:
        await clerk.close()
        await context.close()


async def media_both_ways(live: Live, label: str, *, browser_from: int = 0,
                          clerk_from: int = 0) -> dict[str, Any]:
    """Wait for ≥ 10 more decoded frames in the browser (from aiortc) and ≥ 10 more frames at
    the clerk (from the fake camera), and a data-channel message each way."""
    clerk = live.clerk
    assert clerk.peer is not None

    async def browser_frames() -> bool:
        return int((await live.browser_stats())["framesDecoded"]) >= browser_from + 10

    async def clerk_frames() -> bool:
        clerk.check()
        return clerk.frames >= clerk_from + 10

    try:
        await asyncio.gather(until(f"{label}: 10 frames in the browser", browser_frames),
                             until(f"{label}: 10 frames at the clerk", clerk_frames))
        await clerk.peer.wait_channel_open(TIMEOUT)
        await until(f"{label}: the browser's data channel to open", _channel_open(live))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await live.diagnostics()}") from exc
    clerk.peer.send(f"{label}: 您好，我是帮办")
    await live.page.evaluate("t => window.hallRtc.sendMessage(t)", f"{label}: 您好")
    assert (await clerk.peer.wait_messages(1, TIMEOUT))[-1] == f"{label}: 您好"

    async def browser_got_message() -> bool:
        messages: list[str] = (await live.browser_stats())["messages"]
        return f"{label}: 您好，我是帮办" in messages

    await until(f"{label}: the clerk's message in the browser", browser_got_message)
    return await live.browser_stats()


def _channel_open(live: Live) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool((await live.browser_stats())["channelState"] == "open")
    return check


# -- tests -------------------------------------------------------------------------------------


async def test_browser_and_aiortc_exchange_media(hall: LiveHall, browser: Browser) -> None:
    """A resident in Chromium and an aiortc clerk exchange video, audio and data via the hall."""
    async with live_session(hall, browser) as live:
        s = await media_both_ways(live, "first connection")
        clerk = live.clerk
        assert clerk.peer is not None
        assert s["iceConnectionState"] in ("connected", "completed"), s
        assert s["audioPacketsReceived"] > 0 and s["framesSent"] > 0, s
        # Full trickle: every browser candidate went out on its own, then the end marker.
        assert s["candidatesOut"] >= 1 and s["endOfCandidatesOut"] == 1, s
        assert clerk.candidates_added >= 1, clerk
        assert clerk.peer.audio_frames > 0
        assert s["answersOut"] == 1 and s["offersOut"] == 0, s  # the clerk offered
        assert s["seqViolations"] == [] and s["signalErrors"] == [], s
        # Everything came from the hall itself (no CDN), and nothing failed to load.
        assert live.requests and all(u.startswith(hall.url + "/") for u in live.requests), (
            live.requests)
        assert not [c for c in live.console if c.startswith(("HTTP", "pageerror"))], live.console
        t = s["timings"]
        print(f"[timing] first connection, browser: ICE connected "
              f"{(t['iceConnected'] - t['sessionStarted']) / 1000:.3f} s, first frame "
              f"{(t['firstFrame'] - t['sessionStarted']) / 1000:.3f} s after session.started; "
              f"clerk: connected {await clerk.peer.wait_connected(TIMEOUT):.3f} s, first frame "
              f"{clerk.peer.first_frame_after_s or 0:.3f} s after its offer")
        clerk.check()


@pytest.mark.parametrize("restart_answer", ["in_place", "fresh"])
async def test_resume_restarts_ice_and_media_flows_again(hall: LiveHall, browser: Browser,
                                                         restart_answer: str) -> None:
    """The socket drops, resumes (replay in seq order), restarts ICE; media flows again."""
    async with live_session(hall, browser, restart_answer) as live:
        clerk = live.clerk
        before = await media_both_ways(live, "before the drop")
        seq_before = before["lastSeq"]
        events_before = len(before["events"])

        # The socket drops (websocket closed under Engine.IO, no goodbye); the clerk is told
        # and signals meanwhile, which must be replayed in order on the resume.
        await live.page.evaluate("window.hallRtc.dropForTest()")
        away = await clerk.client.wait_for("session.peer", lambda p: p["state"] == "reconnecting",
                                           timeout=TIMEOUT)
        assert away["session_id"] == live.session_id
        for active in (True, False):
            await clerk.client.ok("media.screen", {"session_id": live.session_id,
                                                   "active": active, "stream_id": "screen-1"})

        t_resume = time.monotonic()
        welcome = await live.page.evaluate("window.hallRtc.reconnect()")
        resumed_in = time.monotonic() - t_resume
        assert welcome["resumed"] is True and welcome["session"]["id"] == live.session_id, welcome
        back = await clerk.client.wait_for("session.peer", lambda p: p["state"] == "back",
                                           timeout=TIMEOUT)
        assert back["session_id"] == live.session_id

        async def restarted() -> bool:
            clerk.check()
            return int((await live.browser_stats())["restartsCompleted"]) >= 1

        try:
            await until("the restart to complete", restarted)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await live.diagnostics()}") from exc
        # The fallback's fresh connections (both sides) count their frames from zero.
        after = await media_both_ways(live, "after the resume")

        # The replay: what the clerk sent while the browser was away, first and in seq order.
        replayed = after["events"][events_before:]
        seqs = [seq for _, seq in replayed]
        assert seqs == list(range(seq_before + 1, seq_before + 1 + len(seqs))), replayed
        assert [e for e, _ in replayed[:2]] == ["media.screen", "media.screen"], replayed
        assert welcome["last_seq"] == seq_before + 2, (welcome, seq_before)
        assert after["seqViolations"] == [] and after["signalErrors"] == [], after
        assert after["resumes"] == 1 and after["iceRestarts"] == 1, after

        # The browser restarted ICE: its offer carried new credentials on the same connection.
        # (The clerk made the first offer, so these are the only offers it answered.)
        assert len(clerk.answered) == 2, clerk.answered
        restart_offer, fresh_offer = clerk.answered
        assert restart_offer.offer_ufrag not in (None, before["localUfrag"]), clerk.answered
        if restart_answer == "in_place":
            # What aiortc 1.16 does with an ICE-restart offer: it answers, but with its old
            # ICE credentials (RTCIceTransport.start runs once; aioice keeps the old remote
            # ufrag and refuses the browser's new checks with 401).
            assert not restart_offer.fresh
            assert restart_offer.answer_ufrag == before["remoteUfrag"], (
                "aiortc answered an ICE restart with new credentials: it may restart ICE now; "
                f"revisit the browser's fallback. {clerk.answered}")
            reason = "the peer kept its ICE credentials"
        else:
            assert restart_offer.fresh and restart_offer.answer_ufrag != before["remoteUfrag"]
            reason = "the peer answered from a fresh connection"
        restart = after["lastRestart"]
        assert (after["fallbacks"], restart["fallback"]) == (1, reason), after
        # ...and fell back to a fresh connection and offer, which the clerk answered afresh.
        assert fresh_offer.fresh, clerk.answered
        assert after["generation"] == before["generation"] + 1, (before, after)
        assert after["offersOut"] == 2, after  # the restart offer, then the fresh one
        assert after["localUfrag"] == fresh_offer.offer_ufrag, (after, clerk.answered)
        assert after["selectedLocalUfrag"] == after["localUfrag"], after
        assert after["iceConnectionState"] in ("connected", "completed"), after

        t = after["timings"]
        started = restart["startedAt"]
        assert clerk.peer is not None
        print(f"[timing] resume ({restart_answer}): welcome {resumed_in:.3f} s after reconnect(); "
              f"from restartIce(): restart offer {restart['restartOfferedAt'] - started:.0f} ms, "
              f"answer {restart['restartAnsweredAt'] - started:.0f} ms, fallback "
              f"{restart['fallbackAt'] - started:.0f} ms, ICE connected "
              f"{t['iceConnected'] - started:.0f} ms, first frame {t['firstFrame'] - started:.0f}"
              f" ms; clerk: connected {await clerk.peer.wait_connected(TIMEOUT):.3f} s, first "
              f"frame {clerk.peer.first_frame_after_s or 0:.3f} s after the fresh offer")
        clerk.check()
