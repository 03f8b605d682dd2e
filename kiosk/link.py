"""The kiosk's Socket.IO connection to the hall, with the protocol's numbering.

One ``socketio.AsyncClient`` per connection, with python-socketio's own reconnection off: it
would reconnect with the first connection's credentials, which is a fresh login, not a resume
(docs/protocol.md, "Resume"). Reconnecting is the agent's job; this module connects once,
tells it when the connection is gone, and keeps what a resume needs: the last ``seq``
received and the newest one-time ``resume_token``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import socketio

from kiosk.errors import HallRefused, HallUnavailable, KioskDisconnected, KioskError

log = logging.getLogger("kiosk.link")

Payload = dict[str, Any]
# Server→client events without a seq (docs/protocol.md, "Conventions"): the connection's own
# messages, and state pushes that each supersede the previous one.
UNNUMBERED = frozenset({"welcome", "replaced", "session.expired", "wall.update",
                        "queues.update"})

EventSink = Callable[[int, str, Payload], None]  # (connection, event, payload)
DropSink = Callable[[int, str], None]  # (connection, reason)


class ConnectRefused(KioskError):
    """The hall refused the handshake (``connect_error``) with a contract error code."""

    def __init__(self, code: str | None, message: str) -> None:
        super().__init__(f"the hall refused the connection: {code}: {message}")
        self.code = code
        self.hall_message = message


def _refusal(data: Any) -> tuple[str | None, str]:
    """``{code, message}`` from connect_error data: at the top, or under ``data`` (what
    python-socketio sends for ``ConnectionRefusedError(message, {code, message})``)."""
    for where in (data, data.get("data") if isinstance(data, dict) else None):
        if isinstance(where, dict) and isinstance(where.get("code"), str):
            return str(where["code"]), str(where.get("message") or "")
    message = data.get("message") if isinstance(data, dict) else data
    return None, str(message or "")


class HallLink:
    """A participant's connection to the hall, one Socket.IO connection at a time.

    Every server event goes to ``on_event`` in arrival order, after the numbering check:
    an event whose ``seq`` was already received (a replay overlapping what arrived) is
    dropped; a gap is logged (the server promises none). ``on_drop`` is called once when a
    connection ends without :meth:`disconnect` having been asked for.
    """

    def __init__(self, url: str, on_event: EventSink, on_drop: DropSink) -> None:
        self.url = url
        self.on_event = on_event
        self.on_drop = on_drop
        self.connection = 0  # 1 for the first connection, 2 for the next...
        self.last_seq = 0  # the last seq received: what a resume counts from
        self.resume_token: str | None = None
        self.welcome: Payload | None = None
        self.gaps = 0
        self.duplicates = 0
        self._sio: socketio.AsyncClient | None = None
        self._welcome_waiter: asyncio.Future[Payload] | None = None
        self._dropped = asyncio.Event()
        self._leaving = False

    @property
    def connected(self) -> bool:
        return self._sio is not None and bool(self._sio.connected) and self.welcome is not None

    # ---- connecting

    # ``timeout`` parameters (ruff's ASYNC109): each bounds one step of several (the
    # handshake, then the welcome; the ack, raced against the connection dropping), which an
    # asyncio.timeout around the whole call could not express.
    async def connect(self, auth: Mapping[str, Any], *,
                      timeout: float = 10.0) -> Payload:  # noqa: ASYNC109
        """Connect (websocket only) with the handshake ``auth``; return the ``welcome``.

        ConnectRefused if the hall refuses the credentials; HallUnavailable if it cannot be
        reached or sends no welcome in time.
        """
        await self.disconnect()
        connection = self.connection + 1
        sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        refusal: list[Any] = []
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Payload] = loop.create_future()

        def on_any(event: str, *args: Any) -> None:
            self._receive(connection, event, args[0] if args else None)

        def on_connect_error(data: Any = None) -> None:
            refusal.append(data)

        def on_disconnect(reason: Any = None) -> None:
            self._gone(connection, str(reason or "disconnected"))

        sio.on("*", on_any)
        sio.on("connect_error", on_connect_error)
        sio.on("disconnect", on_disconnect)
        self.connection = connection
        self.welcome = None
        self._welcome_waiter = waiter
        self._dropped = asyncio.Event()
        self._leaving = False
        self._sio = sio
        try:
            await sio.connect(self.url, auth=dict(auth), transports=["websocket"],
                              wait_timeout=timeout)
        except socketio.exceptions.ConnectionError as exc:
            await self._abandon(sio)
            if refusal and refusal[-1] is not None:
                code, message = _refusal(refusal[-1])
                if code is not None:
                    raise ConnectRefused(code, message) from None
            raise HallUnavailable(f"cannot connect to {self.url}: {exc}") from None
        except (OSError, TimeoutError, ValueError) as exc:
            await self._abandon(sio)
            raise HallUnavailable(f"cannot connect to {self.url}: {exc!r}") from None
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(waiter)
        except TimeoutError:
            await self._abandon(sio)
            raise HallUnavailable(f"no welcome from the hall within {timeout} s") from None
        except HallUnavailable:
            await self._abandon(sio)
            raise

    async def _abandon(self, sio: socketio.AsyncClient) -> None:
        self._leaving = True
        waiter = self._welcome_waiter
        if waiter is not None:
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled():
                waiter.exception()  # retrieved: the caller got it or no longer waits
        if self._sio is sio:
            self._sio = None
        self.welcome = None
        with contextlib.suppress(Exception):
            await sio.disconnect()
        with contextlib.suppress(Exception):
            await sio.shutdown()

    async def disconnect(self) -> None:
        """Leave on purpose (no ``on_drop`` call); nothing happens when not connected."""
        sio = self._sio
        if sio is not None:
            await self._abandon(sio)

    async def wait_dropped(self) -> None:
        """Until the current connection ends (at once if there is none)."""
        if self._sio is None:
            return
        await self._dropped.wait()

    # ---- sending

    async def call(self, event: str, payload: Mapping[str, Any], *,
                   timeout: float = 10.0) -> Payload:  # noqa: ASYNC109
        """Emit ``event`` asking for an ack; return the ack's fields when ``ok``.

        HallRefused with the hall's error code when not; KioskDisconnected when there is no
        connection or it drops before the answer; HallUnavailable when no answer comes in time.
        """
        sio = self._sio
        if sio is None or not self.connected:
            raise KioskDisconnected(f"{event}: not connected to the hall")
        dropped = self._dropped
        call = asyncio.ensure_future(sio.call(event, dict(payload), timeout=timeout))
        drop = asyncio.ensure_future(dropped.wait())
        try:
            done, _ = await asyncio.wait({call, drop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (call, drop):
                if not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pending
        if call not in done:
            raise KioskDisconnected(f"{event}: the connection dropped before the hall answered")
        try:
            ack = call.result()
        except socketio.exceptions.TimeoutError:
            raise HallUnavailable(f"{event}: no answer from the hall within {timeout} s") from None
        except socketio.exceptions.SocketIOError as exc:
            raise KioskDisconnected(f"{event}: {exc}") from None
        if not isinstance(ack, dict) or not isinstance(ack.get("ok"), bool):
            raise HallRefused(event, {"code": "bad_ack", "message": repr(ack)[:200]})
        if not ack["ok"]:
            raise HallRefused(event, ack.get("error"))
        return {k: v for k, v in ack.items() if k != "ok"}

    # ---- receiving

    def _receive(self, connection: int, event: str, data: Any) -> None:
        if connection != self.connection:
            return  # a late message of a connection already given up
        payload: Payload = data if isinstance(data, dict) else {}
        if event == "welcome":
            self._welcomed(payload)
        elif event not in UNNUMBERED:
            seq = payload.get("seq")
            if isinstance(seq, int):
                if seq <= self.last_seq:
                    self.duplicates += 1
                    log.debug("dropping %s seq %d: already received", event, seq)
                    return
                if seq != self.last_seq + 1:
                    self.gaps += 1
                    log.warning("the hall skipped seq %d..%d (protocol violation)",
                                self.last_seq + 1, seq - 1)
                self.last_seq = seq
            else:
                log.warning("%s carries no seq (protocol violation)", event)
        self.on_event(connection, event, payload)
        waiter = self._welcome_waiter
        if event == "welcome" and waiter is not None and not waiter.done():
            waiter.set_result(payload)

    def _welcomed(self, welcome: Payload) -> None:
        self.welcome = welcome
        token = welcome.get("resume_token")
        self.resume_token = token if isinstance(token, str) else None
        if not welcome.get("resumed"):
            # A fresh connection: nothing is replayed, numbering continues from here.
            last = welcome.get("last_seq")
            self.last_seq = last if isinstance(last, int) else 0

    def _gone(self, connection: int, reason: str) -> None:
        if connection != self.connection:
            return
        self.welcome = None
        self._dropped.set()
        waiter = self._welcome_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(HallUnavailable(f"the hall closed the connection before the "
                                                 f"welcome ({reason})"))
        if self._leaving:
            return
        self._leaving = True
        self.on_drop(connection, reason)
