"""Shared files over HTTP on a real server: upload, rights, refusals, download headers."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rooms.events import EventKind
from server import keys
from tests.signalkit import Client, LiveHall, clients, hall_backend, live_hall

# Every test runs on an embedded hall and on a Redis-mode one.
pytestmark = pytest.mark.usefixtures(hall_backend.__name__)

MATTER = "flexible_employment_registration"


def _png() -> bytes:
    """A real 1x1 PNG."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
            + chunk(b"IEND", b""))


async def _upload(hall: LiveHall, token: str, ticket_id: str, name: str, content: bytes,
                  content_type: str = "image/png") -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData(quote_fields=False)  # as browsers send it: raw UTF-8 names
    form.add_field("file", content, filename=name, content_type=content_type)
    async with aiohttp.ClientSession() as http, http.post(
        f"{hall.url}/api/tickets/{ticket_id}/files", data=form,
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, await response.json()


async def _waiting(hall: LiveHall, resident: Client) -> tuple[str, str]:
    """Resident r1 connects and waits for a ticket; returns their id token and ticket id."""
    token = await hall.resident_id_token("r1")
    await resident.connect(hall.url, {"id_token": token})
    await resident.next("welcome")
    took = await resident.call("ticket.take", {"matter_id": MATTER, "when_unstaffed": "wait"})
    return token, str(took["ticket"]["id"])


async def test_upload_while_waiting_then_clerk_downloads_as_attachment() -> None:
    """A waiting resident uploads; the clerk is told on accept-time and downloads it safely."""
    async with live_hall() as hall, clients(2) as (resident, clerk):
        token, ticket_id = await _waiting(hall, resident)
        status, body = await _upload(hall, token, ticket_id, "../../身份证 正面.png", _png(),
                                     content_type="text/html")
        assert status == 201, body
        assert body["file"]["filename"] == "身份证 正面.png"
        assert body["file"]["content_type"] == "image/png"
        clerk_token = await hall.clerk_token()
        await clerk.connect(hall.url, {"token": clerk_token})
        offer = await clerk.next("offer.new")
        assert offer["ticket_id"] == ticket_id
        async with aiohttp.ClientSession() as http:
            listing = await (await http.get(
                f"{hall.url}/api/tickets/{ticket_id}/files",
                headers={"Authorization": f"Bearer {clerk_token}"})).json()
            assert [f["filename"] for f in listing["files"]] == ["身份证 正面.png"]
            file_id = listing["files"][0]["id"]
            async with http.get(f"{hall.url}/api/tickets/{ticket_id}/files/{file_id}",
                                headers={"Authorization": f"Bearer {clerk_token}"}) as r:
                assert r.status == 200
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert r.headers["Content-Disposition"].startswith("attachment;")
                assert r.headers["Content-Type"] == "image/png"
                assert await r.read() == _png()
        await clerk.call("offer.accept", {"ticket_id": ticket_id})
        status, _ = await _upload(hall, clerk_token, ticket_id, "snap.png", _png())
        assert status == 201
        added = await resident.next("file.added")
        assert added["file"]["uploaded_by"] == "clerk:clerk01"
        kinds = [e.kind for e in await hall.app[keys.STORE].outbox_peek(10_000)]
        records = [e.kind for e in await hall.app[keys.RECORDS].events(limit=10_000)]
        assert (kinds + records).count(EventKind.FILE_UPLOAD) == 2
        assert EventKind.FILE_VIEW in kinds + records


async def test_refused_files_and_strangers_get_clear_codes() -> None:
    """Wrong content, empty files, no token and other residents are refused distinctly."""
    async with live_hall() as hall, clients(1) as (resident,):
        token, ticket_id = await _waiting(hall, resident)
        status, body = await _upload(hall, token, ticket_id, "x.jpg",
                                     b"<html><script>alert(1)</script></html>", "image/jpeg")
        assert (status, body["error"]["code"]) == (415, "file_type_refused")
        status, body = await _upload(hall, token, ticket_id, "x.png", b"")
        assert body["error"]["code"] == "file_empty"
        stranger = await hall.resident_id_token("r2")
        status, body = await _upload(hall, stranger, ticket_id, "x.png", _png())
        # Not "forbidden": that would tell the stranger the ticket exists.
        assert (status, body["error"]["code"]) == (404, "not_found")
        status, missing = await _upload(hall, stranger, "T-no-such", "x.png", _png())
        assert (status, missing["error"]) == (404, {
            "code": "not_found", "message": 'no ticket or session "T-no-such" of yours'})
        assert body["error"]["message"] == f'no ticket or session "{ticket_id}" of yours'
        status, body = await _upload(hall, "garbage", ticket_id, "x.png", _png())
        assert (status, body["error"]["code"]) == (401, "unauthenticated")
        async with aiohttp.ClientSession() as http:
            r = await http.get(f"{hall.url}/api/tickets/{ticket_id}/files/nope",
                               headers={"Authorization": f"Bearer {token}"})
            assert r.status == 404
        assert await hall.app[keys.FILES].list(ticket_id) == []


async def test_oversized_upload_is_refused_and_nothing_is_kept() -> None:
    """A file over the per-file cap is refused with 413 and leaves nothing behind."""
    async with live_hall() as hall, clients(1) as (resident,):
        token, ticket_id = await _waiting(hall, resident)
        limit = hall.app[keys.FILES].limits.max_file_bytes
        big = _png() + b"\x00" * limit
        status, body = await _upload(hall, token, ticket_id, "big.png", big)
        assert (status, body["error"]["code"]) == (413, "file_too_large")
        assert await hall.app[keys.FILES].list(ticket_id) == []


async def test_only_uploader_or_supervisor_deletes_and_files_survive_a_restart(
    tmp_path: Path,
) -> None:
    """Deletion is the uploader's (or a supervisor's); stored files outlive the process."""
    env = {"HALL_DATA_DIR": str(tmp_path),
           "HALL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/records.sqlite3"}
    async with live_hall(env) as hall, clients(2) as (resident, clerk):
        token, ticket_id = await _waiting(hall, resident)
        _, first = await _upload(hall, token, ticket_id, "a.png", _png())
        _, second = await _upload(hall, token, ticket_id, "b.png", _png() + b"\x00")
        clerk_token = await hall.clerk_token()
        await clerk.connect(hall.url, {"token": clerk_token})
        await clerk.next("offer.new")
        async with aiohttp.ClientSession() as http:
            url = f"{hall.url}/api/tickets/{ticket_id}/files/{first['file']['id']}"
            r = await http.delete(url, headers={"Authorization": f"Bearer {clerk_token}"})
            assert r.status == 403
            r = await http.delete(url, headers={"Authorization": f"Bearer {token}"})
            assert r.status == 200
            r = await http.get(url, headers={"Authorization": f"Bearer {token}"})
            assert r.status == 404
        kinds = [e.kind for e in await hall.app[keys.STORE].outbox_peek(10_000)]
        records = [e.kind for e in await hall.app[keys.RECORDS].events(limit=10_000)]
        assert EventKind.FILE_DELETE in kinds + records
    async with live_hall(env) as hall:
        sup = await hall.clerk_token("supervisor")
        async with aiohttp.ClientSession() as http:
            listing = await (await http.get(
                f"{hall.url}/api/tickets/{ticket_id}/files",
                headers={"Authorization": f"Bearer {sup}"})).json()
            assert [f["filename"] for f in listing["files"]] == ["b.png"]
            r = await http.get(
                f"{hall.url}/api/tickets/{ticket_id}/files/{second['file']['id']}",
                headers={"Authorization": f"Bearer {sup}"})
            assert await r.read() == _png() + b"\x00"


async def test_snapshot_links_into_prereview_and_retention_removes_files() -> None:
    """A clerk's snapshot can be linked to a material; unknown file ids are refused; past
    retention the files are gone for everyone."""
    async with live_hall() as hall, clients(2) as (clerk, resident):
        token = await hall.resident_id_token("r1")
        clerk_token = await hall.clerk_token()
        await clerk.connect(hall.url, {"token": clerk_token})
        await resident.connect(hall.url, {"id_token": token})
        took = await resident.call("ticket.take", {"matter_id": MATTER})
        ticket_id = took["ticket"]["id"]
        await clerk.next("offer.new")
        await clerk.call("offer.accept", {"ticket_id": ticket_id})
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("file", _png(), filename="身份证.png", content_type="image/png")
        async with aiohttp.ClientSession() as http, http.post(
            f"{hall.url}/api/tickets/{ticket_id}/files?kind=snapshot", data=form,
            headers={"Authorization": f"Bearer {clerk_token}"},
        ) as r:
            snap = (await r.json())["file"]
        assert snap["kind"] == "snapshot"
        ref = {"session_id": ticket_id}
        await clerk.call("prereview.start", ref)
        linked = await clerk.call("prereview.mark", {**ref, "material_id": "id_card",
                                                     "mark": "acceptable",
                                                     "file_ids": [snap["id"]]})
        assert linked["prereview"]["items"][0]["file_ids"] == [snap["id"]]
        bogus = await clerk.call("prereview.mark", {**ref, "material_id": "id_card",
                                                    "mark": "acceptable",
                                                    "file_ids": ["not-a-file"]})
        assert bogus["error"]["code"] == "not_found"
        files = hall.app[keys.FILES]
        removed = await files.sweep(files.clock.now() + files.limits.retention_s + 1)
        assert removed == 1
        async with aiohttp.ClientSession() as http:
            r = await http.get(f"{hall.url}/api/tickets/{ticket_id}/files/{snap['id']}",
                               headers={"Authorization": f"Bearer {token}"})
            assert r.status == 404
