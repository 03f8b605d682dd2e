"""Read timeouts for HTTP: a client that sends slowly must not hold a connection for ever.

Two guards, both settings (server/config.py):

* **Headers** (``HALL_HTTP_HEADER_TIMEOUT_S``): aiohttp's keep-alive timer is armed when a
  connection opens and again after each answer, and closes the connection if, when it fires,
  the server is still waiting for a request to arrive (its headers incomplete). Its
  ``keepalive_timeout`` is therefore set to the header timeout (:func:`server_options`): a
  request's headers must be complete within it, and an idle keep-alive connection is closed
  after it. A handler that is running (a long-polling GET, a websocket: aiohttp turns keep-alive
  off for an upgraded connection) is never cut by it.
* **Bodies** (``HALL_HTTP_BODY_TIMEOUT_S``): aiohttp has no read timeout on a request's body.
  :func:`body_timeout_middleware` watches every request that has one; when no byte has arrived
  for the timeout while the body is incomplete, the body's reader fails with
  :class:`RequestBodyTimeoutError` (a pending read raises it at once), and the answer is
  408 ``request_timeout``, after which the connection is closed. It measures gaps, not the
  total: a slow link that keeps sending is never cut.
"""

from __future__ import annotations

import asyncio
from typing import TypedDict

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler, Middleware

from rooms.errors import HallError
from server.access_log import RedactingAccessLogger
from server.auth_routes import json_error
from server.config import Settings


class RequestBodyTimeoutError(HallError, TimeoutError):
    """The client stopped sending the request's body. A TimeoutError too, so that aiohttp's
    clean-up read of the rest of the body ends quietly and closes the connection."""

    code = "request_timeout"


class ServerOptions(TypedDict):
    """The keyword arguments ``web.AppRunner`` and ``web.run_app`` take for these guards."""

    keepalive_timeout: float
    access_log_class: type[AbstractAccessLogger]


def server_options(settings: Settings) -> ServerOptions:
    return {"keepalive_timeout": settings.http_header_timeout_s,
            "access_log_class": RedactingAccessLogger}


def body_timeout_middleware(idle_s: float) -> Middleware:
    @web.middleware
    async def body_timeout(request: web.Request, handler: Handler) -> web.StreamResponse:
        content = request.content
        if not request.body_exists or content.is_eof():
            return await handler(request)
        watchdog = asyncio.create_task(_watch(content, idle_s))
        try:
            response = await handler(request)
        except RequestBodyTimeoutError as err:
            return _timed_out(err)
        finally:
            watchdog.cancel()
        cut = content.exception()
        if isinstance(cut, RequestBodyTimeoutError) and not response.prepared:
            # The handler turned the failed read into an answer of its own (a 400, say):
            # the client is told what happened instead.
            return _timed_out(cut)
        return response

    return body_timeout


async def _watch(content: StreamReader, idle_s: float) -> None:
    loop = asyncio.get_running_loop()
    seen = content.total_bytes
    last = loop.time()
    step = min(1.0, idle_s / 4)
    while not content.is_eof() and content.exception() is None:
        await asyncio.sleep(step)
        if content.total_bytes != seen:
            seen, last = content.total_bytes, loop.time()
        elif loop.time() - last >= idle_s and not content.is_eof():
            content.set_exception(RequestBodyTimeoutError(
                f"no part of the request body arrived for {idle_s:g} s"))
            return


def _timed_out(err: RequestBodyTimeoutError) -> web.Response:
    response = json_error(408, err.code, err.message)
    response.force_close()  # the rest of the body will not come: nothing else can follow
    return response
