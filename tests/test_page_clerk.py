"""The clerk console (/clerk) in real Chromium against a real demo hall.

The other side is real too: the resident is a protocol client (tests/rtcpeer.HallClient) and,
where media matters, an aiortc peer (tests/rtcpeer.MediaPeer) that answers the console's offer
(the clerk initiates), sends a stamped camera track and, for screen share, a second video track
announced with ``media.screen``. Files are uploaded over HTTP as the resident would.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiortc.sdp import candidate_from_sdp
from playwright.async_api import Browser, FilePayload, Page

from rooms.catalog import ServiceKind
from server import keys
from tests.browserkit import Watched, open_page, run_axe, serious, wait_until
from tests.rtcpeer import HallClient, MediaPeer, Payload, StampedVideoTrack
from tests.signalkit import PASSWORD, LiveHall, live_hall
from tests.test_browser_rtc import _fingerprint, _ufrag

pytestmark = pytest.mark.browser

CLERK = "clerk01"


@pytest.fixture
async def hall() -> AsyncIterator[LiveHall]:
    async with live_hall() as running:
        yield running


# -- helpers ---------------------------------------------------------------------------------


def matter_for(hall: LiveHall, kind: ServiceKind = ServiceKind.CONSULTATION) -> str:
    """A matter clerk01 serves (primary skill) that offers ``kind`` and has materials."""
    catalog = hall.app[keys.CATALOG]
    for matter_id in sorted(catalog.clerk_matters(CLERK)):
        matter = catalog.matters[matter_id]
        if kind in matter.kinds and matter.materials:
            return str(matter_id)
    raise AssertionError(f"clerk01 serves no matter offering {kind}")


async def clerk_state(hall: LiveHall) -> str:
    clerk = await hall.app[keys.HALL].get_clerk(CLERK)
    return str(clerk.state)


async def login(page: Page, password: str = PASSWORD) -> None:
    await page.fill("#login-username", CLERK)
    await page.fill("#login-password", password)
    await page.click("#login-submit")


async def open_console(browser: Browser, hall: LiveHall, lang: str = "zh") -> Watched:
    """The console logged in as clerk01, available."""
    watched = await open_page(browser, f"{hall.url}/clerk?lang={lang}")
    await login(watched.page)
    await watched.page.wait_for_selector('#clerk-state[data-state="available"]')
    return watched


async def resident(hall: LiveHall, resident_id: str, name: str = "张三") -> HallClient:
    client = HallClient(resident_id)
    await client.connect(hall.url, {"id_token": await hall.resident_id_token(resident_id, name)})
    return client


async def take(client: HallClient, matter_id: str, **extra: Any) -> Payload:
    ack = await client.ok("ticket.take", {"matter_id": matter_id, **extra})
    ticket: Payload = ack["ticket"]
    return ticket


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    """A small RGB PNG with a gradient (hand-encoded: no imaging library needed)."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            rows += bytes((200, (x * 4) % 256, (y * 5) % 256))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(rows))) + chunk(b"IEND", b""))


def pdf_bytes() -> bytes:
    """A one-page PDF that draws a black rectangle (hand-written, with a correct xref)."""
    content = b"0 0 0 rg 40 60 220 280 re f"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 400] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    return bytes(out)


async def upload(hall: LiveHall, ticket_id: str, token: str, filename: str, data: bytes,
                 content_type: str) -> Payload:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type=content_type)
    async with aiohttp.ClientSession() as http, http.post(
            f"{hall.url}/api/tickets/{ticket_id}/files", data=form,
            headers={"Authorization": f"Bearer {token}"}) as response:
        body: Payload = await response.json()
        assert response.status == 201, body
        return body["file"]  # type: ignore[no-any-return]


async def files_of(hall: LiveHall, ticket_id: str, token: str) -> list[Payload]:
    async with aiohttp.ClientSession() as http, http.get(
            f"{hall.url}/api/tickets/{ticket_id}/files",
            headers={"Authorization": f"Bearer {token}"}) as response:
        body: Payload = await response.json()
        assert response.status == 200, body
        return list(body["files"])


def _align_extmap(offer: str, reference: str) -> str:
    """aiortc's re-offer numbers RTP header extensions afresh, which Chromium refuses on a live
    bundle ("RTP extension ID reassignment not supported"): keep the ids already negotiated
    (those of the browser's first offer) and drop extensions it did not offer."""
    ids: dict[str, str] = {}
    for line in reference.splitlines():
        if line.startswith("a=extmap:"):
            number, uri = line.removeprefix("a=extmap:").split(" ", 1)
            ids[uri.strip()] = number.split("/")[0]
    lines = []
    for line in offer.splitlines():
        if line.startswith("a=extmap:"):
            uri = line.removeprefix("a=extmap:").split(" ", 1)[1].strip()
            if uri not in ids:
                continue
            line = f"a=extmap:{ids[uri]} {uri}"
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


@dataclass
class ResidentMedia:
    """The resident's aiortc media: answers the console's offers (from a fresh connection when
    the browser starts afresh), takes its trickled candidates, and can offer a screen share."""

    client: HallClient
    peer: MediaPeer | None = None
    failure: BaseException | None = None
    _task: asyncio.Task[None] | None = None
    _ended: set[int] = field(default_factory=set)

    def start(self, session: Payload) -> MediaPeer:
        self.peer = MediaPeer.for_session("resident-media", session, tag=5)
        self._task = asyncio.create_task(self._pump(), name="resident-signals")
        return self.peer

    @property
    def frames(self) -> int:
        """Video frames received from the console (its fake camera is not stamped)."""
        if self.peer is None:
            return 0
        return sum(video.frames for video in self.peer.remote_video.values())

    def check(self) -> None:
        if self.failure is not None:
            raise AssertionError(f"resident signaling failed: {self.failure!r}") from self.failure

    async def _pump(self) -> None:
        try:
            while True:
                signal = await self.client.wait_for("rtc.signal", lambda p: p.get("from") == "peer",
                                                    timeout=3600)
                await self._handle(signal)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced by check()
            self.failure = exc

    async def _handle(self, signal: Payload) -> None:
        peer = self.peer
        assert peer is not None
        description = signal.get("description")
        if isinstance(description, dict):
            if description["type"] == "offer":
                remote = peer.pc.remoteDescription
                if peer.pc.connectionState in ("failed", "closed") or (
                        remote is not None
                        and _fingerprint(remote.sdp) != _fingerprint(str(description["sdp"]))):
                    await peer.renew()
                answer = await peer.answer(description)
                await self.client.ok("rtc.signal", {"session_id": peer.session_id,
                                                    "description": answer})
            elif description["type"] == "answer":
                await peer.accept_answer(description)
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
        text = str(init.get("candidate") or "")
        ufrag = init.get("usernameFragment")
        if not text or remote is None or (ufrag is not None and ufrag != _ufrag(remote.sdp)):
            return
        candidate = candidate_from_sdp(text.removeprefix("candidate:"))
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        with contextlib.suppress(ValueError):
            await peer.pc.addIceCandidate(candidate)

    async def share_screen(self, stream_id: str) -> None:
        """A second video track in its own stream, announced first (docs/protocol.md)."""
        peer = self.peer
        assert peer is not None
        await self.client.ok("media.screen", {"session_id": peer.session_id, "active": True,
                                              "stream_id": stream_id})
        sender = peer.pc.addTrack(StampedVideoTrack(9))
        # aiortc puts every track in one stream; the screen needs a stream of its own.
        sender._stream_id = stream_id
        offer = await peer.offer()
        remote = peer.pc.remoteDescription
        assert remote is not None
        offer["sdp"] = _align_extmap(str(offer["sdp"]), remote.sdp)
        await self.client.ok("rtc.signal", {"session_id": peer.session_id, "description": offer})

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.peer is not None:
            await self.peer.close()


async def page_stats(page: Page) -> dict[str, Any]:
    stats: dict[str, Any] = await page.evaluate("window.hallClient.stats()")
    return stats


async def no_serious_axe(page: Page, where: str) -> None:
    problems = serious(await run_axe(page))
    assert not problems, f"axe on {where}:\n" + "\n".join(problems)


async def offer_arrives(page: Page, number: str) -> None:
    await page.wait_for_selector("#offer-card", state="visible")
    await wait_until(lambda: _text_is(page, "#offer-number", number), what=f"offer {number}")


async def _count(page: Page, selector: str, n: int) -> bool:
    return len(await page.query_selector_all(selector)) == n


async def _contains(page: Page, selector: str, text: str) -> bool:
    return text in (await page.text_content(selector) or "")


async def _text_is(page: Page, selector: str, expected: str) -> bool:
    return (await page.text_content(selector) or "").strip() == expected


async def accept_offer(page: Page, hall: LiveHall, matter_id: str, client: HallClient,
                       **extra: Any) -> tuple[Payload, Payload]:
    """The resident takes a ticket; the console accepts it; returns (ticket, session)."""
    ticket = await take(client, matter_id, **extra)
    await offer_arrives(page, ticket["number"])
    await page.click("#offer-accept")
    started = await client.wait_for("session.started", timeout=15)
    await page.wait_for_selector("#session-view", state="visible")
    return ticket, started["session"]


# -- tests -----------------------------------------------------------------------------------


async def test_login_break_queues_offer_and_decline(browser: Browser) -> None:
    """Log in (wrong password refused), break with a reason, queue counts, offer countdown,
    decline, token renewed before it expires; zh and en render; axe clean on the login, idle
    and offer screens."""
    async with live_hall({"HALL_TOKEN_TTL_S": "8"}) as hall:
        watched = await open_page(browser, f"{hall.url}/clerk")
        try:
            await _login_break_queues_offer_and_decline(hall, browser, watched)
        finally:
            # Before the hall stops: its shutdown waits for live connections otherwise.
            await watched.context.close()


async def _login_break_queues_offer_and_decline(hall: LiveHall, browser: Browser,
                                                watched: Watched) -> None:
    page = watched.page
    assert await page.text_content("#login-heading") == "帮办登录"
    await no_serious_axe(page, "the login screen")

    await login(page, "not-the-password")
    await wait_until(lambda: _contains(page, "#login-error", "用户名或密码错误"),
                     what="the wrong-password error")
    assert await page.is_visible("#login-view")
    await login(page)
    await page.wait_for_selector('#clerk-state[data-state="available"]')
    assert await clerk_state(hall) == "available"
    assert await page.evaluate("!!window.hallClient && window.hallClient.connected")
    first_token = await _stored_token(page)
    assert first_token

    # A break with a reason from the list plus detail; the server has it.
    await page.click("#btn-break")
    await no_serious_axe(page, "the break dialog")
    await page.select_option("#break-reason", "meeting")
    await page.fill("#break-text", "部门例会")
    await page.click("#break-submit")
    await page.wait_for_selector('#clerk-state[data-state="on_break"]')
    clerk = await hall.app[keys.HALL].get_clerk(CLERK)
    assert (str(clerk.state), clerk.break_reason) == ("on_break", "会议：部门例会")
    assert "会议：部门例会" in (await page.text_content("#clerk-state") or "")

    # A resident waits for one of the clerk's matters: the queue table counts them.
    matter_id = matter_for(hall)
    first = await resident(hall, "r-queue-1")
    ticket = await take(first, matter_id, when_unstaffed="wait")
    row = f'#queue-rows tr[data-matter-id="{matter_id}"]'
    await wait_until(lambda: _text_is(page, f'{row} [data-col="waiting"]', "1"),
                     what="the queue table to count the waiting resident")
    assert await page.text_content(f"{row} .skill") == "主"
    await no_serious_axe(page, "the idle console")

    # Back to work: the waiting ticket is offered with a countdown and a chime.
    await page.click("#btn-available")
    await offer_arrives(page, ticket["number"])
    assert await clerk_state(hall) == "offered"
    first_count = int((await page.text_content("#offer-countdown") or "0").split()[0])
    assert 0 < first_count <= 20
    await wait_until(
        lambda: _countdown_below(page, first_count), what="the offer countdown to tick")
    assert (await page.evaluate("window.clerkConsole.snapshot().chimes")) >= 1
    assert await page.evaluate("document.activeElement.id") == "offer-card"
    await no_serious_axe(page, "the offer card")

    # Decline: the offer is withdrawn and the ticket waits again; the clerk is available.
    await page.click("#offer-decline")
    await page.wait_for_selector("#offer-card", state="hidden")
    await page.wait_for_selector('#clerk-state[data-state="available"]')
    assert await clerk_state(hall) == "available"
    assert str((await hall.app[keys.HALL].get_ticket(ticket["id"])).state) == "waiting"
    events = [name for name, _ in (await page_stats(page))["events"]]
    assert "offer.withdrawn" in events, events
    await first.close()

    # The hall token (8 s here) was renewed with auth.refresh before it ran out.
    async def renewed() -> bool:
        token = await _stored_token(page)
        return bool(token) and token != first_token

    await wait_until(renewed, what="the token to be renewed")
    assert await page.evaluate("window.hallClient.connected")

    # English renders completely too.
    english = await open_page(browser, f"{hall.url}/clerk?lang=en")
    assert await english.page.text_content("#login-heading") == "Clerk log in"
    assert await english.page.get_attribute("html", "lang") == "en"
    english.assert_no_errors()
    await english.context.close()
    watched.assert_no_errors()


async def _stored_token(page: Page) -> str | None:
    token: str | None = await page.evaluate(
        "() => (JSON.parse(sessionStorage.getItem('hall.clerk.auth') || 'null') || {}).token")
    return token


async def _countdown_below(page: Page, value: int) -> bool:
    text = (await page.text_content("#offer-countdown") or "").split()
    return bool(text) and text[0].isdigit() and int(text[0]) < value


async def test_session_media_screen_share_files_and_snapshot(hall: LiveHall,
                                                             browser: Browser) -> None:
    """Accept with Enter; media both ways with an aiortc resident; the resident's screen share
    shows; shared image and PDF preview inline; a snapshot is stored; a supervisor listening
    in is shown; a reload restores the call; the resident's drop is shown; axe clean."""
    watched = await open_console(browser, hall)
    page = watched.page
    client = await resident(hall, "r-media-1", "李四")
    media = ResidentMedia(client)
    try:
        ticket = await take(client, matter_for(hall))
        await offer_arrives(page, ticket["number"])
        assert await page.evaluate("document.activeElement.id") == "offer-card"
        await page.keyboard.press("Enter")
        session = (await client.wait_for("session.started", timeout=15))["session"]
        media.start(session)
        await page.wait_for_selector("#session-view", state="visible")
        assert await clerk_state(hall) == "in_session"

        async def both_ways() -> bool:
            media.check()
            stats = await page_stats(page)
            return bool(stats["framesDecoded"] > 5 and media.frames >= 10)

        await wait_until(both_ways, what="video both ways")

        # The resident shares a screen (document camera): a second video in the console.
        await media.share_screen("screen-r-media-1")
        await page.wait_for_selector('#stage[data-layout="screen"]')

        async def screen_frames() -> bool:
            media.check()
            stats = await page_stats(page)
            width = int(await page.evaluate(
                "document.querySelector('#remote-screen').videoWidth"))
            return bool(stats["videoStreamsReceiving"] >= 2 and width > 0)

        await wait_until(screen_frames, what="the screen share to play")
        await no_serious_axe(page, "the session screen")

        # An image from the resident appears via file.added and previews inline.
        token = await hall.resident_id_token("r-media-1", "李四")
        image = await upload(hall, ticket["id"], token, "身份证正面.png", png_bytes(), "image/png")
        item = f'#file-list li[data-file-id="{image["id"]}"]'
        await page.wait_for_selector(item)
        await page.click(f"{item} .file-open")
        await wait_until(lambda: page.evaluate(
            "() => { const i = document.querySelector('#file-preview img');"
            " return !!i && i.complete && i.naturalWidth === 64; }"), what="the image preview")

        # A PDF renders to a canvas that is not blank.
        pdf = await upload(hall, ticket["id"], token, "劳动合同.pdf", pdf_bytes(),
                           "application/pdf")
        await page.click(f'#file-list li[data-file-id="{pdf["id"]}"] .file-open')
        await page.wait_for_selector('#file-preview[data-state="pdf"]')
        dark = await page.evaluate("""() => {
            const c = document.querySelector('#file-preview canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let dark = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] < 60 && d[i + 1] < 60) dark++;
            return dark / (d.length / 4);
        }""")
        assert dark > 0.2, dark  # the rectangle covers about half of the page

        # Snapshot of the resident's view: stored as kind "snapshot" for the ticket.
        await page.click("#btn-snapshot")

        async def snapshot_stored() -> bool:
            return any(f["kind"] == "snapshot" for f in await files_of(hall, ticket["id"], token))

        await wait_until(snapshot_stored, what="the snapshot upload")
        await page.wait_for_selector('#file-list li[data-kind="snapshot"]')

        # Chat both ways.
        await page.fill("#chat-input", "您好，请出示身份证")
        await page.click('[data-testid="chat-send"]')
        said = await client.wait_for("chat.message", timeout=10)
        assert said["message"]["text"] == "您好，请出示身份证"
        await client.ok("chat.send", {"session_id": session["id"], "text": "好的，马上"})
        await wait_until(lambda: _contains(page, ".chat-log", "好的，马上"), what="the reply")

        # A supervisor listens in: the clerk is told, discreetly.
        supervisor = HallClient("supervisor")
        await supervisor.connect(hall.url, {"token": await hall.clerk_token("supervisor")})
        await supervisor.ok("monitor.join", {"session_id": session["id"]})
        await page.wait_for_selector("#monitor-indicator", state="visible")
        await supervisor.ok("monitor.leave", {"session_id": session["id"]})
        await page.wait_for_selector("#monitor-indicator", state="hidden")
        await supervisor.close()

        # A reload restores the call: a fresh offer, which the resident answers afresh, media
        # again both ways; the shared files are listed again.
        await page.reload()
        await page.wait_for_selector("#session-view", state="visible")

        async def media_again() -> bool:
            media.check()
            assert media.peer is not None
            return media.peer.generation >= 1 and await both_ways()

        await wait_until(media_again, what="media after a reload")
        await wait_until(lambda: _count(page, "#file-list li", 3), what="the files after a reload")

        # The resident's connection drops: the console says so.
        await client.drop()
        await page.wait_for_selector('#peer-banner[data-state="reconnecting"]')
        media.check()
        watched.assert_no_errors()
    finally:
        await media.close()
        await client.close()


async def test_prereview_notes_reload_and_wrapup(hall: LiveHall, browser: Browser) -> None:
    """In English: pre-review with a correction and a linked file (the resident is told), a
    note that survives a reload, end, wrap-up that needs an outcome, then available again."""
    watched = await open_console(browser, hall, lang="en")
    page = watched.page
    assert await page.text_content("#queues-heading") == "My queues"
    matter_id = matter_for(hall, ServiceKind.PRE_REVIEW)
    client = await resident(hall, "r-review-1", "王五")
    ticket, session = await accept_offer(page, hall, matter_id, client, kind="pre_review")
    materials = hall.app[keys.CATALOG].matters[matter_id].materials
    required = [m.id for m in materials if m.required]
    assert len(required) >= 2

    # A photo from the resident, linked to the first material.
    token = await hall.resident_id_token("r-review-1", "王五")
    photo = await upload(hall, ticket["id"], token, "id.png", png_bytes(), "image/png")
    await page.wait_for_selector(f'#file-list li[data-file-id="{photo["id"]}"]')

    # The clerk can share a file too (the resident is told with file.added).
    shared: FilePayload = {"name": "checklist.pdf", "mimeType": "application/pdf",
                           "buffer": pdf_bytes()}
    await page.set_input_files("#file-upload", files=[shared])
    added = await client.wait_for("file.added", lambda p: p["file"]["filename"] == "checklist.pdf",
                                  timeout=10)
    await page.wait_for_selector(f'#file-list li[data-file-id="{added["file"]["id"]}"]')
    assert added["file"]["uploaded_by"] == f"clerk:{CLERK}"

    await page.click("#prereview-start")
    first = f'#prereview-list li[data-material-id="{required[0]}"]'
    second = f'#prereview-list li[data-material-id="{required[1]}"]'
    await page.wait_for_selector(first)
    await client.wait_for("prereview.update", timeout=10)
    await page.click(f'{first} button[data-mark="acceptable"]')
    await page.wait_for_selector(f'{first}[data-mark="acceptable"]')
    await page.check(f'#file-select-{photo["id"]}')
    await page.click(f"{first} .btn-link-files")
    await wait_until(lambda: _linked(client, required[0], photo["id"]),
                     what="the file linked to the material")

    # Needs correction: refused without a note, accepted with one.
    await page.click(f'{second} button[data-mark="needs_correction"]')
    await page.wait_for_selector(f"{second} .form-error", state="visible")
    assert await page.get_attribute(f"{second}", "data-mark") == "pending"
    await page.fill(f"{second} .check-note-input", "盖章不清晰")
    await page.click(f'{second} button[data-mark="needs_correction"]')
    await page.wait_for_selector(f'{second}[data-mark="needs_correction"]')
    for material_id in required[2:]:
        item = f'#prereview-list li[data-material-id="{material_id}"]'
        await page.click(f'{item} button[data-mark="acceptable"]')
        await page.wait_for_selector(f'{item}[data-mark="acceptable"]')
    await page.click("#prereview-finish")
    await page.wait_for_selector('#prereview-result[data-result="passed_with_corrections"]')
    result = await client.wait_for("prereview.result", timeout=10)
    assert result["result"] == "passed_with_corrections"
    assert [c["material_id"] for c in result["corrections"]] == [required[1]]
    assert required[1] in await page.inner_html("#prereview-result")

    # A note, saved (ack) and still listed after a reload (the session view carries notes).
    await page.fill("#note-text", "Resident will bring the stamped contract")
    await page.click("#note-save")
    await page.wait_for_selector("#note-list li")
    await page.reload()
    await page.wait_for_selector("#session-view", state="visible")
    await wait_until(lambda: _note_listed(page, "Resident will bring the stamped contract"),
                     what="the note after a reload")
    await page.wait_for_selector('#prereview-result[data-result="passed_with_corrections"]')
    assert await page.text_content("#session-number") == ticket["number"]

    # End (confirmed), then wrap-up: no finish without an outcome (and a reason where needed).
    await page.click("#btn-end")
    await page.click("#confirm-ok")
    await page.wait_for_selector("#wrapup-view", state="visible")
    assert await clerk_state(hall) == "wrap_up"
    await wait_until(lambda: _timer_shows_time(page), what="the wrap-up timer")
    await no_serious_axe(page, "the wrap-up form")
    assert await page.is_disabled("#wrapup-finish")
    await page.check("#outcome-unresolved")
    assert await page.is_disabled("#wrapup-finish")
    await page.check("#outcome-resolved")
    assert not await page.is_disabled("#wrapup-finish")
    await page.click("#wrapup-finish")
    await page.wait_for_selector('#clerk-state[data-state="available"]')
    assert await clerk_state(hall) == "available"
    done = await hall.app[keys.HALL].get_ticket(ticket["id"])
    assert (str(done.state), done.outcome) == ("done", "resolved")
    assert session["id"] == ticket["id"]
    await client.close()
    watched.assert_no_errors()


async def _linked(client: HallClient, material_id: str, file_id: str) -> bool:
    for update in client.received("prereview.update"):
        for item in update["prereview"]["items"]:
            if item["material_id"] == material_id and file_id in item["file_ids"]:
                return True
    return False


async def _note_listed(page: Page, text: str) -> bool:
    return text in (await page.text_content("#note-list") or "")


async def _timer_shows_time(page: Page) -> bool:
    text = (await page.text_content("#wrapup-timer") or "").strip()
    return ":" in text and text != "0:00"


async def test_pending_break_transfer_overdue_and_logout(browser: Browser) -> None:
    """A break asked in session waits for the wrap-up; transfer to another matter; a break
    survives a reload; an overdue wrap-up is flagged, extended, finished with a reason; log out."""
    async with live_hall({"HALL_WRAPUP_S": "3"}) as hall:
        watched = await open_console(browser, hall)
        client = await resident(hall, "r-transfer-1", "赵六")
        try:
            await _pending_break_transfer_overdue_and_logout(hall, watched, client)
        finally:
            await client.close()
            await watched.context.close()


async def _pending_break_transfer_overdue_and_logout(hall: LiveHall, watched: Watched,
                                                     client: HallClient) -> None:
    page = watched.page
    catalog = hall.app[keys.CATALOG]
    matter_id = matter_for(hall)
    other = next(m for m in sorted(catalog.clerk_matters(CLERK)) if m != matter_id)
    ticket, _ = await accept_offer(page, hall, matter_id, client)

    # A break asked during the session is pending until the wrap-up is over.
    await page.click("#btn-break")
    await page.click("#break-submit")  # the first reason of the list: 休息
    await page.wait_for_selector("#pending-break", state="visible")
    clerk = await hall.app[keys.HALL].get_clerk(CLERK)
    assert (str(clerk.state), clerk.pending_break) == ("in_session", "休息")

    # Transfer to another matter: the hall records "transferred"; the short wrap-up (3 s)
    # then ends by itself and the pending break starts.
    await page.click("#transfer-panel summary")
    await page.select_option("#transfer-matter", other)
    await page.click("#transfer-submit")
    await page.click("#confirm-ok")
    await page.wait_for_selector("#wrapup-transferred", state="visible")
    moved = await hall.app[keys.HALL].get_ticket(ticket["id"])
    assert (moved.matter_id, moved.transfers) == (other, 1)
    await page.wait_for_selector('#clerk-state[data-state="on_break"]')
    assert await clerk_state(hall) == "on_break"

    # A reload keeps the login and the break.
    await page.reload()
    await page.wait_for_selector('#clerk-state[data-state="on_break"]')
    assert await page.is_visible("#console")

    # Back to work: the transferred ticket comes back; this time the wrap-up runs over.
    await page.click("#btn-available")
    await offer_arrives(page, ticket["number"])
    await page.click("#offer-accept")
    await page.wait_for_selector("#session-view", state="visible")
    await page.click("#btn-end")
    await page.click("#confirm-ok")
    await page.wait_for_selector("#wrapup-overdue", state="visible")
    before = (await hall.app[keys.HALL].get_clerk(CLERK)).wrapup_deadline
    await page.click("#wrapup-extend")
    await page.wait_for_selector("#wrapup-overdue", state="hidden")
    after = (await hall.app[keys.HALL].get_clerk(CLERK)).wrapup_deadline
    assert before is not None and after is not None and after > before
    await page.check("#outcome-referred_offline")
    assert await page.is_disabled("#wrapup-finish")  # this outcome needs a reason
    await page.fill("#wrapup-reason", "需到线下窗口核验原件")
    await page.click("#wrapup-finish")
    await page.wait_for_selector('#clerk-state[data-state="available"]')
    done = await hall.app[keys.HALL].get_ticket(ticket["id"])
    assert (done.outcome, done.outcome_reason) == ("referred_offline", "需到线下窗口核验原件")

    # Log out: back to the login form, logged out in the hall, nothing left in the tab.
    await page.click("#btn-logout")
    await page.wait_for_selector("#login-view", state="visible")
    assert await clerk_state(hall) == "logged_out"
    assert await _stored_token(page) is None
    watched.assert_no_errors()
