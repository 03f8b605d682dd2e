"""The agent's events, for whoever drives the kiosk: callbacks and async subscriptions.

Every server event the agent receives is published here after the agent has applied it
(``ticket.update``, ``ticket.position``, ``session.started``, ``chat.message``...), plus the
agent's own, prefixed ``agent.``:

* ``agent.connected`` ``{resumed, participant}``, ``agent.disconnected`` ``{reason}``,
* ``agent.health`` ``{report, accepted}``, ``agent.media`` ``{state, generation}``,
* ``agent.stopped`` ``{reason}``: always the last event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from kiosk.errors import KioskStopped

log = logging.getLogger("kiosk.events")

Payload = dict[str, Any]
Listener = Callable[["KioskEvent"], None]
Match = Callable[[Payload], bool]

STOPPED = "agent.stopped"


@dataclass(frozen=True, slots=True)
class KioskEvent:
    name: str
    payload: Payload
    connection: int  # the connection that was current: 1 first, 2 after a reconnect...
    at: float  # time.monotonic()


class Subscription:
    """The events published since it was made, in order, kept until read.

    Iterate it (``async for event in sub``) to read them all, or :meth:`wait_for` one kind
    (which leaves the others for later). At most ``maxlen`` unread events are kept; older
    ones are dropped and counted in :attr:`dropped`, so a forgotten subscription cannot grow
    without bound on a box that runs for months.
    """

    def __init__(self, feed: EventFeed, maxlen: int) -> None:
        self._feed = feed
        self._buffer: deque[KioskEvent] = deque()
        self._maxlen = maxlen
        self._arrived = asyncio.Event()
        self._ended = False
        self.dropped = 0

    def _put(self, event: KioskEvent) -> None:
        if len(self._buffer) >= self._maxlen:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(event)
        if event.name == STOPPED:
            self._ended = True
        self._arrived.set()

    def pending(self, name: str | None = None) -> list[KioskEvent]:
        return [e for e in self._buffer if name is None or e.name == name]

    async def wait_for(self, name: str, match: Match | None = None, *,
                       timeout: float = 10.0) -> Payload:  # noqa: ASYNC109
        """The payload of the first unread ``name`` event matching ``match`` (consumed).

        TimeoutError after ``timeout`` s; KioskStopped once the agent stopped and no such
        event is left.
        """
        async with asyncio.timeout(timeout):
            while True:
                for event in self._buffer:
                    if event.name == name and (match is None or match(event.payload)):
                        self._buffer.remove(event)
                        return event.payload
                if self._ended:
                    stopped = next((e for e in self._buffer if e.name == STOPPED), None)
                    reason = stopped.payload.get("reason") if stopped else "stopped"
                    raise KioskStopped(str(reason))
                self._arrived.clear()
                await self._arrived.wait()

    def __aiter__(self) -> AsyncIterator[KioskEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[KioskEvent]:
        while True:
            while self._buffer:
                event = self._buffer.popleft()
                yield event
                if event.name == STOPPED:
                    return
            if self._ended:
                return
            self._arrived.clear()
            await self._arrived.wait()

    def close(self) -> None:
        self._feed._unsubscribe(self)


class EventFeed:
    """Publishes the agent's events to listeners (called at once) and subscriptions."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}
        self._subscriptions: list[Subscription] = []
        self.connection = 0
        self._stopped: KioskEvent | None = None

    def on(self, name: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every ``name`` event (``"*"``: every event); returns a
        function that removes it. A listener must not block: it runs inside the agent's
        event loop step. Its exceptions are logged, never raised into the agent."""
        self._listeners.setdefault(name, []).append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.get(name, []).remove(listener)

        return remove

    def subscribe(self, maxlen: int = 1000) -> Subscription:
        """Events from now on (after a stop: just the ``agent.stopped`` event)."""
        sub = Subscription(self, maxlen)
        if self._stopped is not None:
            sub._put(self._stopped)
        else:
            self._subscriptions.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(sub)

    def publish(self, name: str, payload: Payload) -> None:
        if self._stopped is not None:
            return  # nothing comes after agent.stopped
        event = KioskEvent(name, payload, self.connection, time.monotonic())
        if name == STOPPED:
            self._stopped = event
        for listener in (*self._listeners.get(name, ()), *self._listeners.get("*", ())):
            try:
                listener(event)
            except Exception:
                log.exception("a listener of %s failed", name)
        for sub in self._subscriptions:
            sub._put(event)
        if name == STOPPED:
            self._subscriptions.clear()
