"""The HTTP access log, without the secrets some URLs carry.

A correction list is opened by an unguessable link (``/corrections/<id>``): the id is the key,
so it must not land in a log file that operators, log shippers and backups all read. Query
strings may hold keys too (Socket.IO's polling ``sid`` lets whoever knows it read that
connection). :class:`RedactingAccessLogger` writes aiohttp's usual line (address, request line,
status, size, duration, user agent) with the secret path segment replaced and every query value
replaced except those of an allow-list of harmless parameters; the Referer, which may hold
another page's secret URL, is left out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from rooms.logsafe import safe_log

REDACTED = "…"
# Path prefixes whose next segment is a bearer secret.
_SECRET_SEGMENT = re.compile(r"^(/corrections/)[^/]+")
# Query parameters whose values say nothing about anyone (page language, upload kind,
# Engine.IO's protocol version, transport and cache-buster).
_PUBLIC_PARAMS = frozenset({"lang", "kind", "EIO", "transport", "t"})


def redact_target(path: str, query: Mapping[str, str]) -> str:
    """The request target for the log: the secret segment and non-public query values out."""
    target = _SECRET_SEGMENT.sub(rf"\g<1>{REDACTED}", path)
    if query:
        target += "?" + "&".join(
            f"{key}={value if key in _PUBLIC_PARAMS else REDACTED}"
            for key, value in query.items())
    return target


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's access log line with :func:`redact_target` applied (``access_log_class``)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"',
            request.remote or "-",
            safe_log(request.method, 16),
            safe_log(redact_target(request.path, request.query), 300),
            request.version.major, request.version.minor,
            response.status, response.body_length, time,
            safe_log(request.headers.get("User-Agent", "-")),
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
