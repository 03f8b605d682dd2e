"""HTTP routes for a ticket's shared files: upload (multipart, streamed), list, download.

Authentication is the same bearer credential a client uses for its socket: a hall token
(clerk, supervisor, kiosk) or the app's identity token (resident). Authorisation is the
hub's: only the ticket's resident, its clerk and supervisors. A resident may upload while
still waiting, so the clerk sees the documents on accept. Downloads are attachments with
``nosniff``, so a browser never renders an uploaded file as a page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web

from rooms.errors import AuthError, ForbiddenError, HallError
from rooms.files import FileKind, StoredFile
from server import keys
from signaling.identity import Principal, Role

_STATUS = {
    "unauthenticated": 401,
    "too_many_attempts": 429,
    "forbidden": 403,
    "not_found": 404,
    "file_not_found": 404,
    "file_too_large": 413,
    "session_quota_exceeded": 413,
    "file_type_refused": 415,
    "file_empty": 400,
    "invalid_payload": 400,
}


def setup_file_routes(app: web.Application) -> None:
    app.router.add_post("/api/tickets/{ticket_id}/files", upload)
    app.router.add_get("/api/tickets/{ticket_id}/files", list_files)
    app.router.add_get("/api/tickets/{ticket_id}/files/{file_id}", download)
    app.router.add_delete("/api/tickets/{ticket_id}/files/{file_id}", delete)


def _error(err: HallError) -> web.Response:
    response = web.json_response(
        {"ok": False, "error": {"code": err.code, "message": err.message}},
        status=_STATUS.get(err.code, 400),
    )
    response.headers["Cache-Control"] = "no-store"
    return response


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
    throttle.check(address)
    try:
        return request.app[keys.TOKENS].verify(credential)
    except AuthError:
        identity = request.app[keys.APP_IDENTITY]
        if identity is None:
            throttle.failed(address)
            raise
        try:
            return identity.verify(credential)
        except AuthError:
            throttle.failed(address)
            raise


async def _authorised(request: web.Request) -> tuple[Principal, str]:
    principal = await _caller(request)
    ticket_id = request.match_info["ticket_id"]
    await request.app[keys.HUB].check_file_access(principal, ticket_id)
    return principal, ticket_id


async def upload(request: web.Request) -> web.Response:
    try:
        principal, ticket_id = await _authorised(request)
        reader = await request.multipart()
        part = await reader.next()
        if not isinstance(part, BodyPartReader) or part.name != "file":
            raise HallError('send one multipart field named "file"', code="invalid_payload")

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await part.read_chunk(64 * 1024):
                yield chunk

        kind: FileKind = "snapshot" if request.query.get("kind") == "snapshot" else "upload"
        stored = await request.app[keys.FILES].upload(
            ticket_id, principal.participant_id, part.filename or "file", chunks(),
            declared_type=part.headers.get("Content-Type"), kind=kind,
        )
    except HallError as err:
        return _error(err)
    view = _view(stored)
    await request.app[keys.HUB].announce_file(ticket_id, view)
    return web.json_response({"ok": True, "file": view}, status=201)


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
    return web.json_response({"ok": True})
