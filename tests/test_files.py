"""Session files: type sniffing, name sanitising, content-addressed storage, quotas, retention."""

from __future__ import annotations

import asyncio
import base64
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rooms.clock import ManualClock
from rooms.errors import HallError
from rooms.events import EventKind, HallEvent
from rooms.files import (
    MAX_FILENAME_CHARS,
    FileLimits,
    LocalBlobStore,
    MemoryFileIndex,
    SessionFiles,
    StoredFile,
    sanitize_filename,
    sniff_type,
)

KiB = 1024
MiB = 1024 * KiB
DAY = 24 * 3600.0


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


# a real 1x1 white PNG, built chunk by chunk
PNG_1X1 = (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    + _png_chunk(b"IDAT", zlib.compress(b"\x00\xff\xff\xff"))
    + _png_chunk(b"IEND", b"")
)
# a minimal 1x1 greyscale baseline JFIF
JPEG_1X1 = base64.b64decode(
    "/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAP////////////////////////////////////////////////"
    "//////////////////////////////////////wgALCAABAAEBAREA/8QAFBABAAAAAAAAAAAAAAAAAAAAAP/a"
    "AAgBAQABPxA="
) + b"\xff\xd9"
# a real 1x1 lossless WebP
WEBP_1X1 = base64.b64decode("UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA==")
PDF_MIN = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
)
# an ISO-BMFF ftyp box as a HEIC file starts (major brand heic, compatible mif1 heic)
HEIC_HEAD = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00\x00\x00\x08meta"
HEIF_MIF1 = b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic" + b"\x00" * 8
AVIF_HEAD = b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf" + b"\x00" * 8


async def chunks(data: bytes, size: int = 64 * KiB) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in stream])


def blob_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and ".tmp" not in p.parts]


def names_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def temp_files(root: Path) -> list[Path]:
    tmp = root / ".tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


class Hall:
    """A SessionFiles over a local blob store in tmp_path, recording its events."""

    def __init__(self, root: Path, limits: FileLimits | None = None) -> None:
        self.root = root
        self.clock = ManualClock()
        self.events: list[HallEvent] = []
        self.blobs = LocalBlobStore(root)
        self.index = MemoryFileIndex()
        self.files = SessionFiles(self.blobs, self.index, limits or FileLimits(), self.clock,
                                  on_event=self._record)

    async def _record(self, event: HallEvent) -> None:
        self.events.append(event)

    async def up(self, session: str, data: bytes, name: str = "doc.pdf",
                 by: str = "resident-1", **kw: object) -> StoredFile:
        return await self.files.upload(session, by, name, chunks(data), **kw)  # type: ignore[arg-type]


@pytest.fixture
def hall(tmp_path: Path) -> Hall:
    return Hall(tmp_path / "blobs")


async def refused(coro: object, code: str) -> HallError:
    with pytest.raises(HallError) as info:
        await coro  # type: ignore[misc]
    assert info.value.code == code, info.value
    return info.value


# -- sniffing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), [
    (PDF_MIN, "application/pdf"),
    (JPEG_1X1, "image/jpeg"),
    (PNG_1X1, "image/png"),
    (WEBP_1X1, "image/webp"),
    (HEIC_HEAD, "image/heic"),
    (HEIF_MIF1, "image/heic"),
])
async def test_every_allowed_type_is_accepted(hall: Hall, data: bytes, expected: str) -> None:
    """Each allowed kind, as a tiny real sample, is sniffed and stored with its content type."""
    assert sniff_type(data[:64]) == expected
    stored = await hall.up("t1", data, name="whatever.bin", declared_type="text/plain")
    assert stored.content_type == expected
    assert stored.size == len(data)
    assert await collect(await hall.files.read(stored)) == data


@pytest.mark.parametrize("data", [
    b"<!DOCTYPE html><html><script>alert(1)</script></html>",
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script/></svg>',
    b"<svg onload=alert(1)>",
    b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 40,
    b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 40,
    b"\x7fELF\x02\x01\x01" + b"\x00" * 40,
    b"GIF89a\x01\x00\x01\x00",
    AVIF_HEAD,
    b"%PD",
])
async def test_other_content_is_refused_whatever_its_name(hall: Hall, data: bytes) -> None:
    """HTML, SVG, ZIP, executables, GIF, AVIF and truncated magic are refused even as .jpg."""
    assert sniff_type(data[:64]) is None
    await refused(hall.up("t1", data, name="photo.jpg", declared_type="image/jpeg"),
                  "file_type_refused")
    assert await hall.files.list("t1") == []
    assert blob_files(hall.root) == []
    assert temp_files(hall.root) == []
    assert hall.events == []


async def test_empty_file_is_refused(hall: Hall) -> None:
    """An empty upload is refused with file_empty and leaves no blob."""
    await refused(hall.up("t1", b""), "file_empty")
    assert blob_files(hall.root) == []


async def test_refused_upload_leaves_other_blobs_alone(hall: Hall) -> None:
    """A refused upload removes only its own unreferenced blob, not the session's files."""
    stored = await hall.up("t1", PNG_1X1, name="a.png")
    await refused(hall.up("t1", b"<html>"), "file_type_refused")
    assert await hall.blobs.exists(stored.digest)
    assert blob_files(hall.root) == [hall.blobs.path_for(stored.digest)]


# -- sizes and quotas --------------------------------------------------------------------------


async def test_oversize_is_refused_mid_stream_without_temp_files(tmp_path: Path) -> None:
    """A file over the per-file cap is refused as soon as the cap is passed; nothing is left."""
    hall = Hall(tmp_path / "blobs", FileLimits(max_file_bytes=256 * KiB))
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield PDF_MIN
        while True:
            pulled += 1
            yield b"\x00" * (64 * KiB)

    await refused(hall.files.upload("t1", "r", "big.pdf", endless()), "file_too_large")
    assert pulled <= 5
    assert temp_files(hall.root) == []
    assert blob_files(hall.root) == []
    assert await hall.files.list("t1") == []


async def test_exactly_the_cap_is_accepted(tmp_path: Path) -> None:
    """A file of exactly max_file_bytes is accepted."""
    hall = Hall(tmp_path / "blobs", FileLimits(max_file_bytes=100 * KiB))
    data = PDF_MIN + b"\x00" * (100 * KiB - len(PDF_MIN))
    stored = await hall.up("t1", data)
    assert stored.size == 100 * KiB


async def test_session_byte_quota(tmp_path: Path) -> None:
    """Uploads past the session's total bytes are refused with session_quota_exceeded."""
    hall = Hall(tmp_path / "blobs",
                FileLimits(max_file_bytes=100 * KiB, max_session_bytes=250 * KiB))
    for i in range(2):
        await hall.up("t1", PDF_MIN + bytes([i]) * (100 * KiB - len(PDF_MIN)))
    # 50 KiB left: a 60 KiB file is refused mid-stream with the session code
    await refused(hall.up("t1", PDF_MIN + b"\x07" * (60 * KiB)), "session_quota_exceeded")
    assert temp_files(hall.root) == []
    # a 40 KiB file still fits; then the session is full
    await hall.up("t1", PDF_MIN + b"\x08" * (40 * KiB))
    assert len(await hall.files.list("t1")) == 3
    # another session is not affected
    await hall.up("t2", PDF_MIN + b"\x09" * (100 * KiB - len(PDF_MIN)))


async def test_session_file_count_quota(tmp_path: Path) -> None:
    """The (max_session_files+1)th file is refused before anything is stored."""
    hall = Hall(tmp_path / "blobs", FileLimits(max_session_files=3))
    for i in range(3):
        await hall.up("t1", PDF_MIN + bytes([i]))
    consumed = False

    async def stream() -> AsyncIterator[bytes]:
        nonlocal consumed
        consumed = True
        yield PDF_MIN

    await refused(hall.files.upload("t1", "r", "x.pdf", stream()), "session_quota_exceeded")
    assert not consumed
    assert len(await hall.files.list("t1")) == 3


# -- names and paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "clean"), [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\x.pdf", "x.pdf"),
    ("/etc/shadow", "shadow"),
    ("C:\\Windows\\System32\\evil.pdf", "evil.pdf"),
    ("a\x00b.pdf", "ab.pdf"),
    ("..", "file"),
    ("", "file"),
    ("  ...  ", "file"),
    ("in<v>a:l\"i|d?*.pdf", "invalid.pdf"),
    ("身份证  正面\t扫描.jpg", "身份证 正面 扫描.jpg"),
    ("e\u0301te\u0301.png", "\u00e9t\u00e9.png"),
    ("gpj.\u202eexe.pdf", "gpj.exe.pdf"),
    ("report.pdf.", "report.pdf"),
    (".hidden", "hidden"),
    ("CON.pdf", "_CON.pdf"),
])
def test_sanitize_filename(raw: str, clean: str) -> None:
    """Directory parts, control/reserved chars and edge dots go; Chinese and NFC stay."""
    assert sanitize_filename(raw) == clean


def test_sanitize_filename_limits_length_keeping_extension() -> None:
    """Long names are cut to 120 characters and keep their extension."""
    name = sanitize_filename("办" * 300 + ".pdf")
    assert len(name) == MAX_FILENAME_CHARS
    assert name.endswith(".pdf")
    assert len(sanitize_filename("x" * 500)) == MAX_FILENAME_CHARS


@pytest.mark.parametrize("name", [
    "../../etc/passwd", "..\\..\\x.pdf", "/tmp/evil.pdf", "a\x00/../../b.pdf",
])
async def test_traversal_names_never_reach_the_storage_path(tmp_path: Path, name: str) -> None:
    """Hostile names are sanitised and the blob lands at root/ab/cd/<digest> only."""
    root = tmp_path / "deep" / "blobs"
    hall = Hall(root)
    stored = await hall.up("t1", PDF_MIN, name=name)
    assert "/" not in stored.filename and "\\" not in stored.filename
    assert "\x00" not in stored.filename and stored.filename not in ("", ".", "..")
    files = blob_files(root)
    assert files == [root / stored.digest[:2] / stored.digest[2:4] / stored.digest]
    assert names_in(tmp_path) == ["deep"]
    assert names_in(tmp_path / "deep") == ["blobs"]


async def test_blob_store_refuses_non_digest_names(hall: Hall) -> None:
    """The blob store accepts only hex digests as names (no path can be smuggled in)."""
    for bad in ("../../etc/passwd", "A" * 64, "ab/cd", ""):
        await refused(hall.blobs.open(bad), "file_not_found")
        with pytest.raises(HallError):
            await hall.blobs.exists(bad)


# -- dedup, access within a session, deletion --------------------------------------------------


async def test_identical_content_is_stored_once_and_refcounted(hall: Hall) -> None:
    """Same bytes in two sessions share one blob, deleted only with its last reference."""
    a = await hall.up("t1", JPEG_1X1, name="a.jpg")
    b = await hall.up("t2", JPEG_1X1, name="b.jpg", by="clerk-9")
    assert a.digest == b.digest and a.id != b.id
    assert len(blob_files(hall.root)) == 1
    assert await hall.index.refcount(a.digest) == 2
    await hall.files.delete("t1", a.id, by="resident-1")
    assert await hall.blobs.exists(a.digest)
    assert await collect(await hall.files.read(b)) == JPEG_1X1
    await hall.files.delete("t2", b.id, by="clerk-9")
    assert not await hall.blobs.exists(a.digest)
    assert blob_files(hall.root) == []
    assert await hall.index.refcount(a.digest) == 0


async def test_get_from_another_session_is_file_not_found(hall: Hall) -> None:
    """A file id is only found within its own session."""
    stored = await hall.up("t1", PNG_1X1, name="p.png")
    assert await hall.files.get("t1", stored.id) == stored
    await refused(hall.files.get("t2", stored.id), "file_not_found")
    await refused(hall.files.get("t1", "nope"), "file_not_found")
    await refused(hall.files.delete("t2", stored.id, by="x"), "file_not_found")
    assert await hall.files.list("t1") == [stored]


async def test_list_is_in_upload_order_and_records_round_trip(hall: Hall) -> None:
    """list() keeps upload order; StoredFile survives to_dict/from_dict."""
    first = await hall.up("t1", PDF_MIN, name="申请表.pdf")
    hall.clock.advance(5)
    second = await hall.up("t1", PNG_1X1, name="snap.png", by="clerk-1", kind="snapshot")
    assert await hall.files.list("t1") == [first, second]
    assert second.kind == "snapshot" and second.uploaded_by == "clerk-1"
    assert second.uploaded_at == first.uploaded_at + 5
    for stored in (first, second):
        assert StoredFile.from_dict(stored.to_dict()) == stored


# -- retention ---------------------------------------------------------------------------------


async def test_retention_sweep(tmp_path: Path) -> None:
    """sweep() deletes files past retention (index and unreferenced blobs) and nothing else."""
    hall = Hall(tmp_path / "blobs", FileLimits(retention_s=30 * DAY))
    old = await hall.up("t1", PDF_MIN, name="old.pdf")
    old_shared = await hall.up("t1", PNG_1X1, name="shared.png")
    hall.clock.advance(10 * DAY)
    new_shared = await hall.up("t2", PNG_1X1, name="shared.png")
    new = await hall.up("t2", JPEG_1X1, name="new.jpg")
    assert await hall.files.sweep(hall.clock.now()) == 0
    hall.clock.advance(25 * DAY)
    hall.events.clear()
    assert await hall.files.sweep(hall.clock.now()) == 2
    assert await hall.files.list("t1") == []
    assert await hall.files.list("t2") == [new_shared, new]
    assert not await hall.blobs.exists(old.digest)
    assert await hall.blobs.exists(old_shared.digest)
    assert [(e.kind, e.data["reason"], e.data["file_id"]) for e in hall.events] == [
        (EventKind.FILE_DELETE, "retention", old.id),
        (EventKind.FILE_DELETE, "retention", old_shared.id),
    ]
    hall.clock.advance(10 * DAY)
    assert await hall.files.sweep() == 2
    assert blob_files(hall.root) == []


# -- events ------------------------------------------------------------------------------------


async def test_events_for_upload_view_and_delete(hall: Hall) -> None:
    """Upload, read and delete each emit one event carrying the session and the actor."""
    stored = await hall.up("t7", PDF_MIN, name="a.pdf", by="resident-3",
                           declared_type="application/x-evil")
    await collect(await hall.files.read(stored, by="clerk-2"))
    await hall.files.delete("t7", stored.id, by="clerk-2")
    kinds = [e.kind for e in hall.events]
    assert kinds == [EventKind.FILE_UPLOAD, EventKind.FILE_VIEW, EventKind.FILE_DELETE]
    assert all(e.ticket_id == "t7" and e.data["file_id"] == stored.id for e in hall.events)
    upload, view, delete = hall.events
    assert upload.data["by"] == "resident-3"
    assert upload.data["content_type"] == "application/pdf"
    assert upload.data["declared_type"] == "application/x-evil"
    assert view.data["by"] == "clerk-2"
    assert delete.data["by"] == "clerk-2" and delete.data["reason"] == "deleted"
    assert HallEvent.from_dict(upload.to_dict()) == upload


# -- streaming ---------------------------------------------------------------------------------


async def test_upload_and_read_stream_in_small_memory(tmp_path: Path) -> None:
    """A 9 MiB upload in 64 KiB chunks, and reading it back, stay under 2 MiB of peak memory."""
    hall = Hall(tmp_path / "blobs")
    chunk = 64 * KiB
    total = 9 * MiB

    async def stream() -> AsyncIterator[bytes]:
        yield PNG_1X1 + b"\x00" * (chunk - len(PNG_1X1))
        for i in range(1, total // chunk):
            yield bytes([i % 251]) * chunk

    tracemalloc.start()
    try:
        stored = await hall.files.upload("t1", "r", "big.png", stream())
        read_sizes = [len(c) async for c in await hall.files.read(stored)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == total
    assert sum(read_sizes) == total
    assert max(read_sizes) <= chunk
    assert peak < 2 * MiB, f"peak {peak / MiB:.2f} MiB"
    assert temp_files(hall.root) == []


async def test_concurrent_uploads_cannot_overrun_the_count_quota(tmp_path: Path) -> None:
    """Two uploads racing for the last slot: one is stored, the other refused and cleaned up."""
    hall = Hall(tmp_path / "blobs", FileLimits(max_session_files=1))
    gate = asyncio.Event()

    async def slow(data: bytes) -> AsyncIterator[bytes]:
        await gate.wait()
        yield data

    first = asyncio.create_task(hall.files.upload("t1", "r", "a.pdf", slow(PDF_MIN + b"a")))
    second = asyncio.create_task(hall.files.upload("t1", "r", "b.pdf", slow(PDF_MIN + b"b")))
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(first, second, return_exceptions=True)
    stored = [r for r in results if isinstance(r, StoredFile)]
    errors = [r for r in results if isinstance(r, HallError)]
    assert len(stored) == 1 and len(errors) == 1
    assert errors[0].code == "session_quota_exceeded"
    assert await hall.files.list("t1") == stored
    assert blob_files(hall.root) == [hall.blobs.path_for(stored[0].digest)]
