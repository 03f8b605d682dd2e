"""Issue 11, the HTTP side: malformed uploads, read timeouts, the public queue view, page
headers, the correction link in logs and URLs, a deleted file announced, and file names shown
as stored in the clerk console.

Everything runs against a real hall on a free port; the read-timeout tests speak raw HTTP over
asyncio sockets, since a well-behaved client cannot send a request slowly on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import segno
import socketio
from aiohttp import web
from playwright.async_api import Browser

from rooms.events import EventKind
from rooms.prereview import MaterialMark, PreReview
from server import keys
from server.app import create_app, make_runner
from server.config import Settings
from server.pages import PAGE_HEADERS
from tests.browserkit import open_page, wait_until
from tests.signalkit import PASSWORD, Client, LiveHall, clients, free_port

MATTER = "flexible_employment_registration"
PUBLIC_URL = "https://hall.example.gov.cn"
SHIPPED_HTML = sorted((Path(__file__).resolve().parent.parent / "web" / "static").rglob("*.html"))


def _png() -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


@asynccontextmanager
async def served(env: Mapping[str, str] | None = None) -> AsyncIterator[tuple[LiveHall, Path]]:
    """A demo hall served exactly as ``hall serve`` serves it (the runner's options: timeouts,
    the access logger), and its data directory."""
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="hall-harden-"))
    settings = Settings.from_env({
        "HALL_DATA_DIR": str(data_dir),
        "HALL_DEMO_PASSWORD": PASSWORD,
        "HALL_DATABASE_URL": f"sqlite+aiosqlite:///{data_dir}/records.sqlite3",
        "HALL_PORT": str(port),
        **(env or {}),
    })
    app = create_app(settings, demo=True)
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield LiveHall(f"http://127.0.0.1:{port}", app), data_dir
    finally:
        await runner.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


def _port(hall: LiveHall) -> int:
    return int(hall.url.rsplit(":", 1)[1])


async def _waiting(hall: LiveHall, resident: Client, resident_id: str = "r1") -> tuple[str, str]:
    token = await hall.resident_id_token(resident_id)
    await resident.connect(hall.url, {"id_token": token})
    await resident.next("welcome")
    took = await resident.call("ticket.take", {"matter_id": MATTER, "when_unstaffed": "wait"})
    assert took["ok"], took
    return token, str(took["ticket"]["id"])


def _blobs(data_dir: Path) -> list[Path]:
    """Every file under the blob store, temporary uploads included."""
    root = data_dir / "files"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def _file_events(hall: LiveHall) -> list[EventKind]:
    kinds = [e.kind for e in await hall.app[keys.STORE].outbox_peek(100_000)]
    kinds += [e.kind for e in await hall.app[keys.RECORDS].events(limit=100_000)]
    return [k for k in kinds if k in (EventKind.FILE_UPLOAD, EventKind.FILE_DELETE)]


def _multipart(filename: bytes, content: bytes, boundary: bytes = b"xx") -> bytes:
    return (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\""
            + filename + b"\"\r\nContent-Type: image/png\r\n\r\n" + content + b"\r\n--"
            + boundary + b"--\r\n")


async def _read_response(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection (b"" if it just closes)."""
    return await asyncio.wait_for(reader.read(), within)


# -- item 6: malformed uploads -------------------------------------------------------------------


async def test_malformed_uploads_get_a_4xx_code_and_store_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No or wrong Content-Type, no boundary, a NUL or CRLF in the file name, a body that does
    not match its boundary, a supervisor's upload to a ticket that does not exist: each is a
    4xx with a stable code, and no blob, index row or event is left behind."""
    caplog.set_level(logging.ERROR)
    async with served() as (hall, data_dir), clients(1) as (resident,):
        token, ticket_id = await _waiting(hall, resident)
        auth = {"Authorization": f"Bearer {token}"}
        multipart = {**auth, "Content-Type": "multipart/form-data; boundary=xx"}
        cases: list[tuple[str, dict[str, Any], int, str]] = [
            ("no content type", {"data": _png(), "headers": auth,
                                 "skip_auto_headers": ["Content-Type"]},
             415, "unsupported_media_type"),
            ("json", {"data": b"{}", "headers": {**auth, "Content-Type": "application/json"}},
             415, "unsupported_media_type"),
            ("no boundary", {"data": _multipart(b"a.png", _png()),
                             "headers": {**auth, "Content-Type": "multipart/form-data"}},
             400, "invalid_upload"),
            ("NUL in name", {"data": _multipart(b"a\x00b.png", _png()), "headers": multipart},
             400, "invalid_upload"),
            ("CRLF in name", {"data": _multipart(b"a\r\nb.png", _png()), "headers": multipart},
             400, "invalid_upload"),
            ("other boundary", {"data": _multipart(b"a.png", _png(), b"yy"),
                                "headers": multipart}, 400, "invalid_upload"),
        ]
        async with aiohttp.ClientSession() as http:
            for what, options, status, code in cases:
                async with http.post(f"{hall.url}/api/tickets/{ticket_id}/files",
                                     **options) as r:
                    body = await r.json()
                    assert (r.status, body["ok"], body["error"]["code"]) == (
                        status, False, code), (what, r.status, body)
            supervisor = await hall.clerk_token("supervisor")
            form = aiohttp.FormData()
            form.add_field("file", _png(), filename="a.png", content_type="image/png")
            async with http.post(f"{hall.url}/api/tickets/T-does-not-exist/files", data=form,
                                 headers={"Authorization": f"Bearer {supervisor}"}) as r:
                body = await r.json()
                assert (r.status, body["error"]["code"]) == (404, "not_found"), body
        files = hall.app[keys.FILES]
        assert await files.list(ticket_id) == []
        assert await files.list("T-does-not-exist") == []
        assert _blobs(data_dir) == []
        assert await _file_events(hall) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records]


async def test_upload_to_a_missing_ticket_is_refused_before_the_body_arrives() -> None:
    """The ticket is checked before anything is streamed: the 404 comes while the client is
    still holding most of its body back."""
    async with served() as (hall, data_dir):
        supervisor = await hall.clerk_token("supervisor")
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(hall))
        try:
            writer.write(
                b"POST /api/tickets/T-nope/files HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + supervisor.encode() + b"\r\n"
                b"Content-Type: multipart/form-data; boundary=xx\r\n"
                b"Content-Length: 5000000\r\n\r\n"
                + _multipart(b"a.png", _png())[:60])
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 404"), head
        finally:
            writer.close()
        assert _blobs(data_dir) == []


# -- the protocol contract: a deleted file is announced ------------------------------------------


async def test_a_deleted_file_is_announced_to_the_other_side() -> None:
    """The resident deletes a file they uploaded: the clerk gets ``file.removed``; the deleter,
    who has the HTTP answer, does not."""
    async with served() as (hall, _), clients(2) as (resident, clerk):
        token, ticket_id = await _waiting(hall, resident)
        clerk_token = await hall.clerk_token()
        await clerk.connect(hall.url, {"token": clerk_token})
        await clerk.next("offer.new")
        await clerk.call("offer.accept", {"ticket_id": ticket_id})
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("file", _png(), filename="户口本.png", content_type="image/png")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{hall.url}/api/tickets/{ticket_id}/files", data=form,
                                 headers={"Authorization": f"Bearer {token}"}) as r:
                file_id = (await r.json())["file"]["id"]
            await clerk.next("file.added")
            async with http.delete(f"{hall.url}/api/tickets/{ticket_id}/files/{file_id}",
                                   headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
        removed = await clerk.next("file.removed")
        assert {k: v for k, v in removed.items() if k != "seq"} == {
            "ticket_id": ticket_id, "file_id": file_id, "by": "resident:r1"}, removed
        # Fence: a later push to the resident arrives, and file.removed did not precede it.
        await clerk.call("chat.send", {"session_id": ticket_id, "text": "收到"})
        await resident.next("chat.message")
        assert "file.removed" not in resident.names()


# -- item 11: the public queue view --------------------------------------------------------------


async def test_public_queue_view_shows_counts_only() -> None:
    """Without a login, /api/queues has per-matter counts and clerk counts by state: no clerk
    name or id, no ticket, no break reason. A staff token adds the clerk directory (id, name,
    state) the transfer form needs, still without tickets or reasons."""
    async with served() as (hall, _), clients(3) as (resident, clerk, other):
        _, ticket_id = await _waiting(hall, resident)
        clerk_token = await hall.clerk_token()
        await clerk.connect(hall.url, {"token": clerk_token})
        await clerk.next("offer.new")
        await clerk.call("offer.accept", {"ticket_id": ticket_id})
        await other.connect(hall.url, {"token": await hall.clerk_token("clerk02")})
        await other.next("welcome")
        reason = "去医院复查（病假）"
        assert (await other.call("clerk.break", {"reason": reason}))["ok"]
        catalog = hall.app[keys.CATALOG]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{hall.url}/api/queues") as r:
                assert r.status == 200
                text = await r.text()
            public = json.loads(text)
            async with http.get(f"{hall.url}/api/queues",
                                headers={"Authorization": f"Bearer {clerk_token}"}) as r:
                staff = await r.json()
            async with http.get(f"{hall.url}/api/catalog") as r:
                catalog_text = await r.text()
        for clerk_profile in catalog.clerks.values():
            assert clerk_profile.id not in text and clerk_profile.name not in text
            assert clerk_profile.name not in catalog_text
        for supervisor in catalog.supervisors.values():
            assert supervisor.name not in text and supervisor.name not in catalog_text
        assert ticket_id not in text and reason not in text and "break_reason" not in text
        assert "clerks" not in public
        assert public["clerk_states"]["in_session"] == 1
        assert public["clerk_states"]["on_break"] == 1
        row = next(m for m in public["matters"] if m["id"] == MATTER)
        assert set(row) == {"id", "name", "department_id", "queued", "on_duty", "head_wait_s",
                            "handle_time_s"}
        assert row["queued"] == 0 and row["on_duty"] >= 1
        directory = {c["id"]: c for c in staff["clerks"]}
        assert directory["clerk01"] == {"id": "clerk01", "name": catalog.clerks["clerk01"].name,
                                        "state": "in_session"}
        assert directory["clerk02"]["state"] == "on_break"
        assert reason not in json.dumps(staff, ensure_ascii=False)
        assert ticket_id not in json.dumps(staff)


# -- item 12: every HTML answer carries the page headers -----------------------------------------


async def _saved_review(hall: LiveHall) -> str:
    catalog = hall.app[keys.CATALOG]
    matter = catalog.matters[MATTER]
    review = PreReview("T-gone", matter, "clerk01", 1_700_000_000.0)
    for item in review.items:
        review.mark(item.material_id, MaterialMark.ACCEPTABLE)
    review.finish(1_700_000_100.0)
    review_id: str = await hall.app[keys.PREREVIEWS].save(review, matter.department_id)
    return review_id


async def test_every_html_route_carries_the_strict_csp_and_page_headers() -> None:
    """Walk every GET route of the hall: whatever answers HTML sends the pages' CSP and
    security headers. The test page with inline script is no longer served."""
    async with served() as (hall, _):
        review_id = await _saved_review(hall)
        point = next(iter(hall.app[keys.CATALOG].service_points))
        values = {"point_id": point, "review_id": review_id, "name": "socket.io.min.js",
                  "folder": "pdfjs-cmaps", "ticket_id": "T-x", "file_id": "f"}
        paths: set[str] = set()
        for resource in hall.app.router.resources():
            info = resource.get_info()
            if "path" in info:
                paths.add(str(info["path"]))
            elif "formatter" in info:
                paths.add(str(info["formatter"]).format(**values))
        assert not SHIPPED_HTML, "no HTML test pages are shipped"
        html_paths = []
        async with aiohttp.ClientSession() as http:
            for path in sorted(paths):
                if path.startswith("/socket.io") or "{" in path:
                    continue
                for query in ("", "?lang=en"):
                    async with http.get(hall.url + path + query) as r:
                        if r.content_type != "text/html":
                            continue
                        html_paths.append(path)
                        for name, value in PAGE_HEADERS.items():
                            if name == "Cache-Control":
                                assert "no-store" in r.headers[name], (path, r.headers)
                            else:
                                assert r.headers.get(name) == value, (path, name, r.headers)
                        body = await r.text()
                        assert "<style" not in body and " style=" not in body, path
                        assert not re.search(r"<script(?![^>]*(type=\"application/json\"|src=))",
                                             body), path
            async with http.get(hall.url + "/static/rtc-test.html") as r:
                assert r.status == 404
        assert {"/", "/app", "/clerk", "/supervisor", f"/kiosk/{point}",
                f"/corrections/{review_id}"} <= set(html_paths), html_paths


# -- item 13: the correction link: not logged, printed from the public URL ----------------------


async def test_correction_link_stays_out_of_the_access_log_and_ignores_the_host_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The access log shows the correction route without its secret; the printed URL and the QR
    code come from HALL_PUBLIC_URL whatever Host the request names."""
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    async with served({"HALL_PUBLIC_URL": PUBLIC_URL + "/"}) as (hall, _):
        review_id = await _saved_review(hall)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{hall.url}/corrections/{review_id}?lang=en&k=v",
                                headers={"Host": "evil.example"}) as r:
                assert r.status == 200
                html = await r.text()
            async with http.get(f"{hall.url}/healthz") as r:
                assert r.status == 200
        expected = f"{PUBLIC_URL}/corrections/{review_id}"
        assert expected in html and "evil.example" not in html
        qr = segno.make(expected, error="m").svg_inline(scale=4, title="扫码查看补正清单")
        assert qr in html
        lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
        assert any("/healthz" in line for line in lines), lines
        corrections = [line for line in lines if "/corrections/" in line]
        assert corrections, lines
        for line in lines:
            assert review_id not in line and "k=v" not in line, line


def test_public_url_setting_is_validated_and_defaults_to_the_bind_address() -> None:
    assert Settings.from_env({"HALL_PORT": "8123"}).public_url == "http://127.0.0.1:8123"
    assert Settings.from_env({"HALL_HOST": "0.0.0.0", "HALL_PORT": "80"}).public_url == (
        "http://127.0.0.1:80")
    assert Settings.from_env({"HALL_PUBLIC_URL": "https://a.example/"}).public_url == (
        "https://a.example")
    for bad in ("ftp://a.example", "https://", "https://a.example/x?y=1", "a.example"):
        with pytest.raises(Exception, match="HALL_PUBLIC_URL"):
            Settings.from_env({"HALL_PUBLIC_URL": bad})


# -- item 10: read timeouts ----------------------------------------------------------------------

TIMEOUTS = {"HALL_HTTP_HEADER_TIMEOUT_S": "1", "HALL_HTTP_BODY_TIMEOUT_S": "1"}


async def _trickle(writer: asyncio.StreamWriter, piece: bytes, every: float) -> None:
    """Send ``piece`` every ``every`` seconds until the connection breaks (the attack)."""
    with contextlib.suppress(ConnectionError, OSError):
        while not writer.is_closing():
            await asyncio.sleep(every)
            writer.write(piece)
            await writer.drain()


async def test_slow_headers_are_cut_at_the_header_timeout() -> None:
    """Headers trickled a byte at a time, and many half-open requests, are closed within the
    header timeout; a normal request on the same hall is answered."""
    async with served(TIMEOUTS) as (hall, _):
        loop = asyncio.get_running_loop()
        port = _port(hall)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        trickle = asyncio.create_task(_trickle(writer, b"X", 0.2))
        started = loop.time()
        try:
            assert await _read_response(reader, 5) == b""
            assert loop.time() - started < 2.5
        finally:
            trickle.cancel()
            writer.close()
        half_open = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
        for _, w in half_open:
            w.write(b"POST /api/auth/login HTT")
        started = loop.time()
        closed = await asyncio.gather(*(_read_response(r, 5) for r, _ in half_open))
        assert all(not data or data.startswith(b"HTTP/1.1 408") for data in closed)
        assert loop.time() - started < 3
        for _, w in half_open:
            w.close()
        async with aiohttp.ClientSession() as http, http.get(hall.url + "/healthz") as r:
            assert r.status == 200


async def test_slow_bodies_are_cut_and_a_steady_upload_is_not() -> None:
    """An upload whose body stalls gets 408 ``request_timeout`` and leaves nothing stored; a
    stalled JSON body is cut too; an upload that keeps sending (slowly, for longer than the
    body timeout in total) is stored."""
    async with served(TIMEOUTS) as (hall, data_dir), clients(1) as (resident,):
        token, ticket_id = await _waiting(hall, resident)
        loop = asyncio.get_running_loop()
        body = _multipart(b"a.png", _png())
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(hall))
        writer.write(
            f"POST /api/tickets/{ticket_id}/files HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary=xx\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:120])
        started = loop.time()
        answer = await _read_response(reader, 6)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b'"request_timeout"' in answer
        assert loop.time() - started < 3.5
        assert await hall.app[keys.FILES].list(ticket_id) == []
        assert _blobs(data_dir) == []

        reader, writer = await asyncio.open_connection("127.0.0.1", _port(hall))
        writer.write(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"user")
        started = loop.time()
        answer = await _read_response(reader, 6)
        writer.close()
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
        assert loop.time() - started < 3.5

        reader, writer = await asyncio.open_connection("127.0.0.1", _port(hall))
        writer.write(
            f"POST /api/tickets/{ticket_id}/files HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\nConnection: close\r\n"
            f"Content-Type: multipart/form-data; boundary=xx\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode())
        for i in range(0, len(body), len(body) // 6 + 1):  # ~2.4 s in all, 0.4 s gaps
            writer.write(body[i:i + len(body) // 6 + 1])
            await writer.drain()
            await asyncio.sleep(0.4)
        answer = await _read_response(reader, 6)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 201"), answer
        assert len(await hall.app[keys.FILES].list(ticket_id)) == 1


async def test_socketio_websocket_and_polling_outlive_the_header_timeout() -> None:
    """Socket.IO over websocket and over long-polling stays up past the header and keep-alive
    timers: the timers only cut connections that are waiting for a request's headers."""
    async with served(TIMEOUTS) as (hall, _):
        ws = Client()
        polling = Client(sio=socketio.AsyncClient(reconnection=False))
        try:
            await ws.connect(hall.url, {"id_token": await hall.resident_id_token("r1")})
            await polling.sio.connect(
                hall.url, auth={"id_token": await hall.resident_id_token("r2")},
                transports=["polling"], wait_timeout=5)
            await ws.next("welcome")
            await polling.next("welcome")
            # Fence: an idle raw connection opened after both is closed by the header timer,
            # so both Socket.IO connections have been idle past it.
            reader, writer = await asyncio.open_connection("127.0.0.1", _port(hall))
            assert await _read_response(reader, 5) == b""
            writer.close()
            for client in (ws, polling):
                took = await client.call("ticket.take", {"matter_id": MATTER,
                                                         "when_unstaffed": "wait"})
                assert took["ok"], took
                assert client.sio.connected
            assert polling.sio.transport() == "polling"
        finally:
            await ws.close()
            await polling.close()


def test_http_timeout_settings_are_validated() -> None:
    settings = Settings.from_env({})
    assert (settings.http_header_timeout_s, settings.http_body_timeout_s) == (10.0, 30.0)
    for name in ("HALL_HTTP_HEADER_TIMEOUT_S", "HALL_HTTP_BODY_TIMEOUT_S"):
        with pytest.raises(Exception, match=name):
            Settings.from_env({name: "0"})


# -- item 15: the clerk console shows file names as stored ---------------------------------------


@pytest.mark.browser
async def test_clerk_console_shows_a_percent_encoded_name_as_stored(browser: Browser) -> None:
    """A resident uploads ``id-card%E2%80%AEgnp.png`` (literally): the console shows exactly
    that, never the right-to-left override percent-decoding would bring back."""
    async with served() as (hall, _), clients(1) as (resident,):
        token, ticket_id = await _waiting(hall, resident)
        name = "id-card%E2%80%AEgnp.png"
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("file", _png(), filename=name, content_type="image/png")
        async with aiohttp.ClientSession() as http, http.post(
                f"{hall.url}/api/tickets/{ticket_id}/files", data=form,
                headers={"Authorization": f"Bearer {token}"}) as r:
            stored = (await r.json())["file"]
        assert stored["filename"] == name
        watched = await open_page(browser, f"{hall.url}/clerk")
        page = watched.page
        await page.fill("#login-username", "clerk01")
        await page.fill("#login-password", PASSWORD)
        await page.click("#login-submit")

        async def offered() -> bool:
            return await page.locator("#offer-accept").is_visible()

        await wait_until(offered)
        await page.click("#offer-accept")

        async def listed() -> bool:
            return await page.locator("#file-list li").count() == 1

        await wait_until(listed)
        text = await page.locator("#file-list").inner_text()
        assert name in text, text
        assert "\u202e" not in await page.evaluate("document.body.textContent")
        watched.assert_no_errors()
