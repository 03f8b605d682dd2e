"""HTTP routes for a ticket's shared files: upload (multipart, streamed), list, download.

Authentication is the same bearer credential a client uses for its socket: a hall token
(clerk, supervisor, kiosk) or the app's identity token (resident). Authorisation is the
hub's: only the ticket's resident, its clerk and supervisors of its department (the
hall-wide supervisor: every ticket; signaling.scope). A resident may upload while
still waiting, so the clerk sees the documents on accept. Downloads are attachments with
``nosniff``, so a browser never renders an uploaded file as a page.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, hdrs, web
from aiohttp.helpers import parse_mimetype
from aiohttp.http_exceptions import HttpProcessingError

from rooms.errors import AuthError, ForbiddenError, HallError, ThrottledError, ValidationError
from rooms.files import FileKind, StoredFile
from server import keys
from server.auth_routes import json_error, throttled
from signaling.identity import Principal, Role

log = logging.getLogger(__name__)

_STATUS = {
    "unauthenticated": 401,
    "too_many_attempts": 429,
    "forbidden": 403,
    "not_found": 404,
    "file_not_found": 404,
    "file_too_large": 413,
    "session_quota_exceeded": 413,
    "daily_quota_exceeded": 413,
    "uploads_closed": 409,
    "file_type_refused": 415,
    "file_empty": 400,
    "invalid_payload": 400,
    "invalid_upload": 400,
    "unsupported_media_type": 415,
    "request_timeout": 408,
}


def setup_file_routes(app: web.Application) -> None:
    app.router.add_post("/api/tickets/{ticket_id}/files", upload)
    app.router.add_get("/api/tickets/{ticket_id}/files", list_files)
    app.router.add_get("/api/tickets/{ticket_id}/files/{file_id}", download)
    app.router.add_delete("/api/tickets/{ticket_id}/files/{file_id}", delete)


def _error(err: HallError) -> web.Response:
    if isinstance(err, ThrottledError):
        return throttled(err)
    return json_error(_STATUS.get(err.code, 400), err.code, err.message)


def _view(stored: StoredFile) -> dict[str, Any]:
    return {"id": stored.id, "filename": stored.filename, "size": stored.size,
            "content_type": stored.content_type, "kind": stored.kind,
            "uploaded_by": stored.uploaded_by, "uploaded_at": stored.uploaded_at}


async def _caller(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise AuthError("send Authorization: Bearer <token>")
    credential = credential.strip()
    throttle = request.app[keys.THROTTLE]
    address = request.remote or "unknown"
    # A valid credential passes whatever its address did; a refused one counts (and answers
    # too_many_attempts once the address is over its limit): signaling.throttle.AuthThrottle.
    try:
        return (await request.app[keys.TOKENS].verify_live(credential)).principal
    except AuthError:
        identity = request.app[keys.APP_IDENTITY]
        if identity is None:
            await throttle.refused(address)
            raise
        try:
            return identity.verify(credential)
        except AuthError:
            await throttle.refused(address)
            raise


async def _authorised(request: web.Request, *, upload: bool = False) -> tuple[Principal, str]:
    principal = await _caller(request)
    ticket_id = request.match_info["ticket_id"]
    await request.app[keys.HUB].check_file_access(principal, ticket_id, upload=upload)
    return principal, ticket_id


async def upload(request: web.Request) -> web.Response:
    try:
        principal, ticket_id = await _authorised(request, upload=True)
        # Before a byte of the body is read: a refused upload must leave nothing behind.
        await request.app[keys.HALL].get_ticket(ticket_id)
        part = await _file_part(request)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await part.read_chunk(64 * 1024):
                    yield chunk
            except (ValueError, HttpProcessingError):
                # (The parser's message quotes the client's bytes: not echoed.)
                raise _malformed("the file part is cut or broken") from None

        kind: FileKind = "snapshot" if request.query.get("kind") == "snapshot" else "upload"
        files = request.app[keys.FILES]
        stored = await files.upload(
            ticket_id, principal.participant_id, part.filename or "file", chunks(),
            declared_type=part.headers.get("Content-Type"), kind=kind,
            daily=files.limits.daily_for(principal.role.value),
        )
    except HallError as err:
        return _error(err)
    view = _view(stored)
    try:
        await request.app[keys.HUB].announce_file(ticket_id, view)
    except HallError as err:
        # Stored is stored: the others see the file when they list; the uploader gets its 201.
        log.warning("file %s of %s stored but not announced: %s", stored.id, ticket_id, err)
    return web.json_response({"ok": True, "file": view}, status=201)


def _malformed(what: str) -> ValidationError:
    return ValidationError(f"malformed upload: {what}", code="invalid_upload")


async def _file_part(request: web.Request) -> BodyPartReader:
    """The part named ``file`` of a ``multipart/form-data`` body, its headers read.

    Anything else is refused before the file's content is read: another or no Content-Type
    (415 ``unsupported_media_type``), no boundary, a body that does not follow its boundary or
    part headers the parser refuses (a NUL, CR or LF in the file name: 400 ``invalid_upload``).
    """
    if request.content_type != "multipart/form-data":
        raise HallError("send the file as multipart/form-data (one field named \"file\")",
                        code="unsupported_media_type")
    if not parse_mimetype(request.headers.get(hdrs.CONTENT_TYPE, "")).parameters.get(
            "boundary"):
        raise _malformed("the multipart/form-data Content-Type has no boundary")
    try:
        reader = await request.multipart()
        part = await reader.next()
        filename = part.filename if isinstance(part, BodyPartReader) else None
    except (KeyError, ValueError, HttpProcessingError):
        raise _malformed("the multipart body does not follow its boundary, or a part's "
                         "headers are invalid (a NUL, CR or LF in the file name?)") from None
    if not isinstance(part, BodyPartReader) or part.name != "file":
        raise HallError('send one multipart field named "file"', code="invalid_payload")
    if filename is not None and any(ch in filename for ch in "\x00\r\n"):
        # An RFC 5987 name (filename*=UTF-8''…) decoding to one: refused like a raw one.
        raise _malformed("the file name contains a NUL, CR or LF")
    return part


async def list_files(request: web.Request) -> web.Response:
    try:
        _, ticket_id = await _authorised(request)
        files = await request.app[keys.FILES].list(ticket_id)
    except HallError as err:
        return _error(err)
    return web.json_response({"ok": True, "files": [_view(f) for f in files]})


async def download(request: web.Request) -> web.StreamResponse:
    try:
        principal, ticket_id = await _authorised(request)
        files = request.app[keys.FILES]
        stored = await files.get(ticket_id, request.match_info["file_id"])
        body = await files.read(stored, by=principal.participant_id)
    except HallError as err:
        return _error(err)
    response = web.StreamResponse(headers={
        "Content-Type": stored.content_type,
        "Content-Length": str(stored.size),
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(stored.filename)}",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
    })
    await response.prepare(request)
    async for chunk in body:
        await response.write(chunk)
    await response.write_eof()
    return response


async def delete(request: web.Request) -> web.Response:
    """The uploader (or a supervisor) removes a file; the deletion is logged."""
    try:
        principal, ticket_id = await _authorised(request)
        files = request.app[keys.FILES]
        stored = await files.get(ticket_id, request.match_info["file_id"])
        if principal.role != Role.SUPERVISOR and stored.uploaded_by != principal.participant_id:
            raise ForbiddenError("only the uploader or a supervisor may delete a file")
        await files.delete(ticket_id, stored.id, principal.participant_id)
    except HallError as err:
        return _error(err)
    try:
        await request.app[keys.HUB].announce_file_removed(
            ticket_id, stored.id, by=principal.participant_id)
    except HallError as err:
        log.warning("file %s of %s deleted but not announced: %s", stored.id, ticket_id, err)
    return web.json_response({"ok": True})
