"""The hall's HTTP side as a kiosk uses it: the device login and ticket file uploads."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from kiosk.config import Secret
from kiosk.errors import HallRefused, HallUnavailable, KioskAuthError, Throttled

log = logging.getLogger("kiosk.http")

MAX_RETRY_AFTER_S = 3600.0  # a proxy's absurd Retry-After must not park the kiosk for a day


@dataclass(frozen=True, slots=True)
class HallToken:
    """A hall token (``POST /api/auth/kiosk``); the token itself never appears in a repr."""

    token: str = field(repr=False)
    expires_at: float
    name: str = ""


class HallHttp:
    """One aiohttp session to the hall, opened on first use and closed by :meth:`close`."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def login_kiosk(self, service_point_id: str, secret: Secret) -> HallToken:
        """Trade the device secret for a hall token.

        KioskAuthError if the hall refuses the secret or the service point (401, or 400 for
        a malformed one): retrying cannot help. Throttled on 429, with the hall's
        ``Retry-After``. HallUnavailable when the hall cannot be reached or fails.
        """
        body = {"service_point_id": service_point_id, "secret": secret.reveal()}
        try:
            async with self._http().post(f"{self.base_url}/api/auth/kiosk", json=body) as r:
                status = r.status
                retry_after = r.headers.get("Retry-After")
                data = await _json(r)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HallUnavailable(f"cannot reach the hall at {self.base_url}: "
                                  f"{type(exc).__name__} {exc}") from None
        if status == 429:
            raise Throttled(_retry_after(retry_after))
        error = data.get("error") if isinstance(data, dict) else None
        if status in (400, 401, 403):
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            raise KioskAuthError(
                f"the hall refused service point {service_point_id!r} with this device secret "
                f"(HTTP {status} {code}: {message}); check the secret file and the point id")
        if status != 200 or not isinstance(data, dict) or not isinstance(data.get("token"), str):
            raise HallUnavailable(f"POST /api/auth/kiosk answered HTTP {status}")
        return HallToken(token=data["token"], expires_at=float(data.get("expires_at") or 0.0),
                         name=str(data.get("name") or ""))

    async def upload(self, token: HallToken, ticket_id: str, content: bytes | Path, *,
                     filename: str | None = None, content_type: str | None = None,
                     snapshot: bool = False) -> dict[str, Any]:
        """``POST /api/tickets/{id}/files``: share a document with the ticket's clerk.

        The hall decides the type from the content (PDF, JPEG, PNG, WebP, HEIC); the file's
        view ``{id, filename, size, content_type, kind, ...}`` is returned. HallRefused with
        the hall's code (``file_type_refused``, ``forbidden``...) otherwise.
        """
        if isinstance(content, Path):
            name = filename or content.name
            payload: bytes = await asyncio.to_thread(content.read_bytes)
        else:
            name = filename or "document"
            payload = content
        form = aiohttp.FormData()
        form.add_field("file", payload, filename=name,
                       content_type=content_type or "application/octet-stream")
        url = f"{self.base_url}/api/tickets/{ticket_id}/files"
        params = {"kind": "snapshot"} if snapshot else None
        try:
            async with self._http().post(url, data=form, params=params,
                                         headers={"Authorization": f"Bearer {token.token}"}
                                         ) as r:
                status = r.status
                data = await _json(r)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HallUnavailable(f"upload failed: {type(exc).__name__} {exc}") from None
        if status == 201 and isinstance(data, dict) and isinstance(data.get("file"), dict):
            file: dict[str, Any] = data["file"]
            return file
        error = data.get("error") if isinstance(data, dict) else None
        raise HallRefused("upload", error or {"code": f"http_{status}", "message": ""})


async def _json(response: aiohttp.ClientResponse) -> Any:
    """The body as JSON, or None when it is not JSON (a proxy's error page)."""
    try:
        return await response.json(content_type=None)
    except ValueError:
        return None


def _retry_after(header: str | None) -> float:
    """Seconds from a ``Retry-After`` header (only the delta form: the hall sends that)."""
    try:
        seconds = float(header) if header is not None else math.nan
    except ValueError:
        seconds = math.nan
    if math.isnan(seconds) or seconds < 0:
        return 30.0
    return min(seconds, MAX_RETRY_AFTER_S)
