"""Files shared in a session: validation, content-addressed storage, retention.

Residents and clerks exchange documents (and camera snapshots) during a session; a resident may
upload while still waiting, so the clerk sees the documents on accept. This module is the domain
and storage layer only; the HTTP routes and socket announcements are built on top of it.

* :func:`sniff_type` decides the type from the content's magic bytes. The file name and the
  type the client declared never influence the decision (PDF, JPEG, PNG, WebP and HEIC only).
* :func:`sanitize_filename` makes a display name safe. Names are metadata only: blobs are stored
  under paths derived from their SHA-256 digest alone, so user input never reaches a path.
* :class:`BlobStore` is the small storage interface (:class:`LocalBlobStore` stores blobs in a
  local directory; an S3-compatible store can be added later without touching callers). Uploads
  are streamed to a temporary file while being hashed, never held whole in memory, and refused as
  soon as they exceed their size cap. Identical content is stored once.
* :class:`FileIndex` records which session holds which file and counts references per digest
  (:class:`MemoryFileIndex` now, a Redis/database version later).
* :class:`SessionFiles` is the service callers use: upload with per-file, per-session and daily
  per-uploader quotas, list, get, read, delete and the retention sweep, and it reports every
  upload, view and deletion as a :class:`~rooms.events.HallEvent` through its ``on_event``
  callback.

Access control is NOT decided here: this module trusts its caller. The signaling/HTTP layer must
check that the caller is a participant of the session (or a supervisor) before calling
:meth:`SessionFiles.list`, :meth:`SessionFiles.get`, :meth:`SessionFiles.read` or
:meth:`SessionFiles.delete`, and must send downloads as attachments with
``X-Content-Type-Options: nosniff`` and the stored (sniffed) content type.

Error codes (stable, forwarded to clients): ``file_too_large``, ``session_quota_exceeded``,
``daily_quota_exceeded`` (the uploader's files or bytes of the day, over all its sessions),
``file_type_refused``, ``file_empty``, ``file_not_found`` and, in a rare race with a concurrent
deletion of identical content, ``file_upload_interrupted`` (the client may simply retry).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime
import hashlib
import logging
import os
import re
import secrets
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal
from zoneinfo import ZoneInfo

from rooms.clock import Clock
from rooms.errors import HallError, ValidationError
from rooms.events import EventKind, HallEvent

log = logging.getLogger(__name__)

MiB = 1024 * 1024
CHUNK_SIZE = 64 * 1024
HEAD_SIZE = 64  # bytes of the content kept for sniffing
MAX_FILENAME_CHARS = 120

FileKind = Literal["upload", "snapshot"]
FILE_KINDS: frozenset[str] = frozenset({"upload", "snapshot"})


# -- errors -------------------------------------------------------------------------------------


class FileTooLargeError(HallError):
    """The file exceeds the per-file size cap."""

    code = "file_too_large"


class DailyQuotaExceededError(HallError):
    """The uploader has used its files or bytes of the day (over all its tickets)."""

    code = "daily_quota_exceeded"


class SessionQuotaExceededError(HallError):
    """The session's total size or file count cap would be exceeded."""

    code = "session_quota_exceeded"


class FileTypeRefusedError(HallError):
    """The content is not one of the allowed types (judged by magic bytes)."""

    code = "file_type_refused"


class FileEmptyError(HallError):
    """The upload has no content."""

    code = "file_empty"


class FileNotFoundInSessionError(HallError):
    """No such file in this session (or no such blob in the store)."""

    code = "file_not_found"


class FileUploadInterruptedError(HallError):
    """Identical content was deleted while this upload was being stored; retry the upload."""

    code = "file_upload_interrupted"


# -- content type sniffing ---------------------------------------------------------------------

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"})
_MIAF_BRANDS = frozenset({b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})

ALLOWED_TYPES: frozenset[str] = frozenset(
    {"application/pdf", "image/jpeg", "image/png", "image/webp", "image/heic"}
)


def sniff_type(head: bytes) -> str | None:
    """The content type of a file from its first bytes, or ``None`` if it is not allowed.

    Only PDF, JPEG, PNG, WebP and HEIC are recognised; everything else (HTML, SVG, ZIP,
    executables, text...) is ``None`` whatever the file is called.
    """
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(_PNG_MAGIC):
        return "image/png"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if len(head) >= 12 and head[4:8] == b"ftyp":
        major = head[8:12]
        if major in _HEIC_BRANDS:
            return "image/heic"
        if major in _MIAF_BRANDS:
            # mif1/msf1 is the generic HEIF brand, also used by AVIF: look at the compatible
            # brands we have and refuse what is clearly AVIF only.
            box_size = int.from_bytes(head[:4], "big")
            end = min(len(head), box_size) if box_size >= 16 else len(head)
            compatible = {head[i:i + 4] for i in range(16, end - 3, 4)}
            if compatible & _AVIF_BRANDS and not compatible & _HEIC_BRANDS:
                return None
            return "image/heic"
    return None


# -- file names --------------------------------------------------------------------------------

_RESERVED_CHARS = re.compile(r'[<>:"/\\|?*]')
_WHITESPACE = re.compile(r"\s+")
_WINDOWS_DEVICES = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)
_MAX_EXT_CHARS = 16


def sanitize_filename(name: str) -> str:
    """A safe display name: base name only, NFC, no control or reserved characters, ≤120 chars.

    Chinese (and other non-ASCII) letters are kept. An empty result becomes ``"file"``. The name
    is metadata only; it never reaches a storage path.
    """
    name = unicodedata.normalize("NFC", name)
    # base name only: whatever follows the last / or \ (POSIX, Windows, and mixed forms)
    name = re.split(r"[/\\]", name)[-1]
    # whitespace (tabs, newlines, ideographic space...) becomes one space; other control (Cc)
    # and format (Cf: bidi overrides, zero-width) characters go
    name = _WHITESPACE.sub(" ", name)
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf"))
    name = _RESERVED_CHARS.sub("", name)
    name = _WHITESPACE.sub(" ", name).strip(". ")
    if not name:
        return "file"
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > _MAX_EXT_CHARS:
        stem, ext = name, ""
    if stem.split(".")[0].strip().lower() in _WINDOWS_DEVICES:
        stem = "_" + stem
    if len(stem) + len(ext) + (1 if ext else 0) > MAX_FILENAME_CHARS:
        keep = MAX_FILENAME_CHARS - (len(ext) + 1 if ext else 0)
        stem = stem[:keep].rstrip(". ")
    result = f"{stem}.{ext}" if ext else stem
    result = result.strip(". ")
    return result or "file"


# -- records and limits ------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredFile:
    """One file of one session. ``session_id`` is the ticket id; ``filename`` is sanitised."""

    id: str
    session_id: str
    digest: str
    size: int
    content_type: str
    filename: str
    uploaded_by: str
    uploaded_at: float
    kind: FileKind = "upload"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "session_id": self.session_id,
            "digest": self.digest,
            "size": self.size,
            "content_type": self.content_type,
            "filename": self.filename,
            "uploaded_by": self.uploaded_by,
            "uploaded_at": self.uploaded_at,
            "kind": self.kind,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StoredFile:
        kind = str(raw.get("kind", "upload"))
        if kind not in FILE_KINDS:
            raise ValidationError(f"unknown file kind {kind!r}")
        return cls(
            id=str(raw["id"]),
            session_id=str(raw["session_id"]),
            digest=str(raw["digest"]),
            size=int(raw["size"]),
            content_type=str(raw["content_type"]),
            filename=str(raw["filename"]),
            uploaded_by=str(raw["uploaded_by"]),
            uploaded_at=float(raw["uploaded_at"]),
            kind="snapshot" if kind == "snapshot" else "upload",
        )


@dataclass(frozen=True)
class FileLimits:
    """Size caps and retention of session files."""

    max_file_bytes: int = 10 * MiB
    max_session_bytes: int = 50 * MiB
    max_session_files: int = 40
    retention_s: float = 30 * 24 * 3600.0
    # Per uploader and calendar day (``timezone``), over all their tickets: an app resident,
    # and a kiosk (one service point, many residents a day) with room for a busy day.
    # Clerks and supervisors have none. Deleted files no longer count.
    resident_daily_files: int = 60
    resident_daily_bytes: int = 200 * MiB
    kiosk_daily_files: int = 600
    kiosk_daily_bytes: int = 2048 * MiB
    timezone: str = "Asia/Shanghai"

    def daily_for(self, role: str) -> tuple[int, int] | None:
        """``(files, bytes)`` a day for an uploader of this role, None for no daily quota."""
        if role == "resident":
            return self.resident_daily_files, self.resident_daily_bytes
        if role == "kiosk":
            return self.kiosk_daily_files, self.kiosk_daily_bytes
        return None


# -- blob storage ------------------------------------------------------------------------------

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobStore(ABC):
    """Content-addressed blob storage (local directory now, S3-compatible later).

    Blobs are named by the SHA-256 hex digest of their content; storing identical content twice
    keeps one copy. Reference counting is the caller's business (see :class:`FileIndex`).
    """

    @abstractmethod
    async def put(
        self, stream: AsyncIterator[bytes], *, max_bytes: int
    ) -> tuple[str, int, bytes]:
        """Store a stream; return ``(digest, size, head)`` where ``head`` is its first bytes.

        Raises :class:`FileTooLargeError` as soon as more than ``max_bytes`` arrive, leaving
        nothing behind.
        """

    @abstractmethod
    async def open(self, digest: str) -> AsyncIterator[bytes]:
        """The blob's content in chunks; :class:`FileNotFoundInSessionError` if it is missing.

        Awaiting this checks (and opens) the blob; iterate the result to read it.
        """

    @abstractmethod
    async def delete(self, digest: str) -> None:
        """Remove a blob (no error if it is already gone)."""

    @abstractmethod
    async def exists(self, digest: str) -> bool:
        """Whether the blob is stored."""


def _write_chunk(fh: IO[bytes], hasher: Any, chunk: bytes) -> None:
    fh.write(chunk)
    hasher.update(chunk)


def _open_temp(tmp_dir: Path) -> tuple[Path, IO[bytes]]:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    path = tmp_dir / f"{secrets.token_hex(16)}.part"
    return path, path.open("xb")


def _discard_temp(path: Path, fh: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        fh.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _commit_temp(path: Path, fh: IO[bytes], target: Path) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    if target.exists():  # identical content already stored: keep the existing copy
        path.unlink()
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _open_blob(path: Path) -> IO[bytes] | None:
    try:
        return path.open("rb")
    except FileNotFoundError:
        return None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class LocalBlobStore(BlobStore):
    """Blobs in a local directory: ``root/ab/cd/abcd…`` (the full hex digest), temp files in
    ``root/.tmp``. All file IO runs in worker threads, off the event loop."""

    def __init__(self, root: str | os.PathLike[str], *, chunk_size: int = CHUNK_SIZE) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / ".tmp"
        self.chunk_size = chunk_size

    def path_for(self, digest: str) -> Path:
        """The blob's path; derived from a validated hex digest only."""
        if not _DIGEST_RE.fullmatch(digest):
            raise FileNotFoundInSessionError(f"not a blob digest: {digest[:80]!r}")
        return self.root / digest[:2] / digest[2:4] / digest

    async def put(
        self, stream: AsyncIterator[bytes], *, max_bytes: int
    ) -> tuple[str, int, bytes]:
        hasher = hashlib.sha256()
        head = b""
        size = 0
        path, fh = await asyncio.to_thread(_open_temp, self.tmp_dir)
        try:
            async for chunk in stream:
                if not chunk:
                    continue
                size += len(chunk)
                if size > max_bytes:
                    raise FileTooLargeError(f"file exceeds {max_bytes} bytes")
                if len(head) < HEAD_SIZE:
                    head += chunk[: HEAD_SIZE - len(head)]
                await asyncio.to_thread(_write_chunk, fh, hasher, chunk)
            digest = hasher.hexdigest()
            await asyncio.to_thread(_commit_temp, path, fh, self.path_for(digest))
        except BaseException:
            # too large, client gone, cancelled, disk full: leave nothing behind
            _discard_temp(path, fh)
            raise
        return digest, size, head

    async def open(self, digest: str) -> AsyncIterator[bytes]:
        fh = await asyncio.to_thread(_open_blob, self.path_for(digest))
        if fh is None:
            raise FileNotFoundInSessionError(f"blob {digest[:12]}… is not stored")
        return self._chunks(fh)

    async def _chunks(self, fh: IO[bytes]) -> AsyncIterator[bytes]:
        try:
            while True:
                chunk = await asyncio.to_thread(fh.read, self.chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            fh.close()

    async def delete(self, digest: str) -> None:
        await asyncio.to_thread(_unlink, self.path_for(digest))

    async def exists(self, digest: str) -> bool:
        return await asyncio.to_thread(self.path_for(digest).is_file)


# -- the index ---------------------------------------------------------------------------------


class FileIndex(ABC):
    """Which session holds which file (in upload order) and how many files use each digest."""

    @abstractmethod
    async def add(self, stored: StoredFile) -> None:
        """Record a file (and one more reference to its digest)."""

    @abstractmethod
    async def list(self, session_id: str) -> builtins.list[StoredFile]:
        """A session's files, oldest first."""

    @abstractmethod
    async def get(self, session_id: str, file_id: str) -> StoredFile | None:
        """The file if it belongs to this session."""

    @abstractmethod
    async def remove(self, session_id: str, file_id: str) -> StoredFile | None:
        """Forget a file (and one reference to its digest); the removed record or ``None``."""

    @abstractmethod
    async def refcount(self, digest: str) -> int:
        """How many files (in any session) use this digest."""

    @abstractmethod
    async def usage(self, session_id: str) -> tuple[int, int]:
        """``(file count, total bytes)`` of a session."""

    @abstractmethod
    async def older_than(self, cutoff: float) -> builtins.list[StoredFile]:
        """Every file (of every session) uploaded before ``cutoff``."""

    @abstractmethod
    async def uploader_usage(self, uploaded_by: str, since: float) -> tuple[int, int]:
        """``(file count, total bytes)`` uploaded by ``uploaded_by`` at or after ``since``,
        over every session."""


class MemoryFileIndex(FileIndex):
    """The in-process index (tests, single-process halls)."""

    def __init__(self) -> None:
        self._sessions: dict[str, dict[str, StoredFile]] = {}
        self._refs: Counter[str] = Counter()

    async def add(self, stored: StoredFile) -> None:
        files = self._sessions.setdefault(stored.session_id, {})
        if stored.id in files:
            raise ValidationError(f"file {stored.id} is already recorded")
        files[stored.id] = stored
        self._refs[stored.digest] += 1

    async def list(self, session_id: str) -> builtins.list[StoredFile]:
        files = self._sessions.get(session_id, {}).values()
        return sorted(files, key=lambda f: f.uploaded_at)  # stable: ties keep upload order

    async def get(self, session_id: str, file_id: str) -> StoredFile | None:
        return self._sessions.get(session_id, {}).get(file_id)

    async def remove(self, session_id: str, file_id: str) -> StoredFile | None:
        files = self._sessions.get(session_id)
        if files is None or file_id not in files:
            return None
        stored = files.pop(file_id)
        if not files:
            del self._sessions[session_id]
        self._refs[stored.digest] -= 1
        if self._refs[stored.digest] <= 0:
            del self._refs[stored.digest]
        return stored

    async def refcount(self, digest: str) -> int:
        return self._refs.get(digest, 0)

    async def usage(self, session_id: str) -> tuple[int, int]:
        files = self._sessions.get(session_id, {})
        return len(files), sum(f.size for f in files.values())

    async def older_than(self, cutoff: float) -> builtins.list[StoredFile]:
        return [f for files in self._sessions.values() for f in files.values()
                if f.uploaded_at < cutoff]

    async def uploader_usage(self, uploaded_by: str, since: float) -> tuple[int, int]:
        mine = [f for files in self._sessions.values() for f in files.values()
                if f.uploaded_by == uploaded_by and f.uploaded_at >= since]
        return len(mine), sum(f.size for f in mine)


# -- the service -------------------------------------------------------------------------------

EventSink = Callable[[HallEvent], Awaitable[None]]


@dataclass
class _Inflight:
    """Digests stored by uploads that are not yet in the index (protects them from GC)."""

    digests: Counter[str] = field(default_factory=Counter)


class SessionFiles:
    """Upload, list, read, delete and expire the files of sessions.

    Callers must have checked access (see the module docstring). Quota checks are exact within
    one process (the final check and the index write happen under a lock); several processes
    sharing an index would need the index to enforce them atomically.
    """

    def __init__(
        self,
        blobs: BlobStore,
        index: FileIndex,
        limits: FileLimits,
        clock: Clock,
        *,
        on_event: EventSink | None = None,
    ) -> None:
        self.blobs = blobs
        self.index = index
        self.limits = limits
        self.clock = clock
        self.on_event = on_event
        self._lock = asyncio.Lock()
        self._inflight = _Inflight()

    async def upload(
        self,
        session_id: str,
        uploaded_by: str,
        filename: str,
        stream: AsyncIterator[bytes],
        *,
        declared_type: str | None = None,
        kind: FileKind = "upload",
        daily: tuple[int, int] | None = None,
    ) -> StoredFile:
        """Validate and store one file; emits ``FILE_UPLOAD``.

        ``declared_type`` (the client's Content-Type) is only logged, never trusted.
        ``daily`` is the uploader's ``(files, bytes)`` for the day over all its sessions
        (:meth:`FileLimits.daily_for`), None for none.
        """
        if kind not in FILE_KINDS:
            raise ValidationError(f"unknown file kind {kind!r}")
        safe_name = sanitize_filename(filename)
        limits = self.limits
        count, used = await self.index.usage(session_id)
        if count >= limits.max_session_files:
            raise SessionQuotaExceededError(
                f"session {session_id} already has {count} files "
                f"(limit {limits.max_session_files})")
        remaining = limits.max_session_bytes - used
        if remaining <= 0:
            raise SessionQuotaExceededError(
                f"session {session_id} has used its {limits.max_session_bytes} bytes")
        day_left = await self._day_left(uploaded_by, daily)
        max_bytes = min(limits.max_file_bytes, remaining,
                        day_left if day_left is not None else limits.max_file_bytes)
        try:
            digest, size, head = await self.blobs.put(stream, max_bytes=max_bytes)
        except FileTooLargeError:
            if max_bytes == limits.max_file_bytes:
                raise FileTooLargeError(
                    f"file exceeds {limits.max_file_bytes} bytes") from None
            if day_left is not None and day_left <= remaining:
                raise DailyQuotaExceededError(
                    f"file would exceed today's upload quota ({day_left} bytes left)") from None
            raise SessionQuotaExceededError(
                f"file would exceed the {limits.max_session_bytes} bytes of session "
                f"{session_id} ({remaining} left)") from None
        self._inflight.digests[digest] += 1
        stored: StoredFile | None = None
        try:
            if size == 0:
                raise FileEmptyError("the file is empty")
            content_type = sniff_type(head)
            if content_type is None:
                log.info("refused upload to %s by %s: unknown content (declared %r)",
                         session_id, uploaded_by, declared_type)
                raise FileTypeRefusedError(
                    "only PDF, JPEG, PNG, WebP and HEIC files are accepted")
            async with self._lock:
                if not await self.blobs.exists(digest):
                    raise FileUploadInterruptedError(
                        "the file was removed while it was being stored; please retry")
                count, used = await self.index.usage(session_id)
                if count >= limits.max_session_files or used + size > limits.max_session_bytes:
                    raise SessionQuotaExceededError(
                        f"session {session_id} quota exceeded by a concurrent upload")
                left = await self._day_left(uploaded_by, daily)
                if left is not None and size > left:
                    raise DailyQuotaExceededError(
                        "today's upload quota was used by a concurrent upload")
                stored = StoredFile(
                    id=secrets.token_urlsafe(12),
                    session_id=session_id,
                    digest=digest,
                    size=size,
                    content_type=content_type,
                    filename=safe_name,
                    uploaded_by=uploaded_by,
                    uploaded_at=self.clock.now(),
                    kind=kind,
                )
                await self.index.add(stored)
        finally:
            self._inflight.digests[digest] -= 1
            if self._inflight.digests[digest] <= 0:
                del self._inflight.digests[digest]
            if stored is None:
                await self._collect(digest)
        await self._emit(EventKind.FILE_UPLOAD, stored, by=uploaded_by,
                         declared_type=declared_type)
        return stored

    def day_start(self, now: float | None = None) -> float:
        """When the current calendar day began in the limits' time zone (epoch seconds)."""
        tz = ZoneInfo(self.limits.timezone)
        day = datetime.datetime.fromtimestamp(self.clock.now() if now is None else now, tz)
        return day.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()

    async def _day_left(self, uploaded_by: str, daily: tuple[int, int] | None) -> int | None:
        """Bytes the uploader may still upload today (DailyQuotaExceededError if no file
        or no byte is left); None without a daily quota."""
        if daily is None:
            return None
        max_files, max_bytes = daily
        count, used = await self.index.uploader_usage(uploaded_by, self.day_start())
        if count >= max_files:
            raise DailyQuotaExceededError(
                f"{count} files uploaded today: the limit is {max_files} a day")
        if used >= max_bytes:
            raise DailyQuotaExceededError(f"today's {max_bytes} bytes of uploads are used")
        return max_bytes - used

    async def list(self, session_id: str) -> builtins.list[StoredFile]:
        """The session's files, oldest first."""
        return await self.index.list(session_id)

    async def get(self, session_id: str, file_id: str) -> StoredFile:
        """The file, if it belongs to THIS session; otherwise ``file_not_found``."""
        stored = await self.index.get(session_id, file_id)
        if stored is None:
            raise FileNotFoundInSessionError(f"no file {file_id!r} in session {session_id}")
        return stored

    async def read(self, stored: StoredFile, *, by: str | None = None) -> AsyncIterator[bytes]:
        """The file's content in chunks (await, then iterate); emits ``FILE_VIEW``."""
        chunks = await self.blobs.open(stored.digest)
        await self._emit(EventKind.FILE_VIEW, stored, by=by)
        return chunks

    async def delete(self, session_id: str, file_id: str, by: str) -> None:
        """Remove a file from its session (and its blob if no other file uses it)."""
        stored = await self.index.remove(session_id, file_id)
        if stored is None:
            raise FileNotFoundInSessionError(f"no file {file_id!r} in session {session_id}")
        await self._collect(stored.digest)
        await self._emit(EventKind.FILE_DELETE, stored, by=by, reason="deleted")

    async def sweep(self, now: float | None = None) -> int:
        """Delete every file older than the retention period; the number of files deleted."""
        when = self.clock.now() if now is None else now
        cutoff = when - self.limits.retention_s
        removed = 0
        for old in await self.index.older_than(cutoff):
            stored = await self.index.remove(old.session_id, old.id)
            if stored is None:  # deleted meanwhile
                continue
            removed += 1
            await self._collect(stored.digest)
            await self._emit(EventKind.FILE_DELETE, stored, by=None, reason="retention",
                             at=when)
        return removed

    async def _collect(self, digest: str) -> None:
        """Delete a blob that no file and no upload in progress uses."""
        async with self._lock:
            if self._inflight.digests.get(digest, 0) > 0:
                return
            if await self.index.refcount(digest) > 0:
                return
            await self.blobs.delete(digest)

    async def _emit(self, kind: EventKind, stored: StoredFile, *, by: str | None,
                    at: float | None = None, **extra: Any) -> None:
        if self.on_event is None:
            return
        data: dict[str, Any] = {
            "file_id": stored.id,
            "by": by,
            "size": stored.size,
            "content_type": stored.content_type,
            "kind": stored.kind,
            "digest": stored.digest,
        }
        data.update({k: v for k, v in extra.items() if v is not None})
        await self.on_event(HallEvent(kind, self.clock.now() if at is None else at,
                                      ticket_id=stored.session_id, data=data))
