"""The asyncio side of the engine: fires the hall's timers on time.

The engine keeps deadlines in the store and does no waiting itself. The runner sleeps until the
earliest deadline (or until a command may have set an earlier one: every command wakes
it), then calls :meth:`Hall.tick`. A failing tick is logged and retried with capped backoff, so
a store that is briefly unreachable does not stop the timers for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rooms.aio import stop_tasks
from rooms.errors import StoreUnavailableError
from rooms.hall import Hall

logger = logging.getLogger("hall.runner")


class HallRunner:
    def __init__(self, hall: Hall, *, max_sleep_s: float = 1.0, max_backoff_s: float = 5.0):
        self._hall = hall
        self._max_sleep = max_sleep_s
        self._max_backoff = max_backoff_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Any command may have set an earlier deadline than the one being slept towards.
        self._unsubscribe = hall.on_commit(self._wake.set)
        self.ticks = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="hall-timers")

    async def close(self) -> None:
        """Stop firing timers; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            await stop_tasks([task])
        self._unsubscribe()
        self._unsubscribe = lambda: None

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._hall.tick()
                self.ticks += 1
                # Cleared after the tick (which is a command and wakes us itself) and before
                # reading the next deadline, so a command arriving from here on is not missed.
                self._wake.clear()
                deadline = await self._hall.next_deadline()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError as err:
                # Expected while Redis is away (/readyz says so): one line, no traceback.
                logger.warning("firing timers failed: %s; retrying in %.1fs", err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            except Exception:
                logger.exception("firing timers failed; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            delay = self._max_sleep
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - self._hall.clock.now()))
            if delay > 0:
                # asyncio.timeout, not wait_for: on 3.11, wait_for can swallow a cancel that
                # races the wake-up event, leaving the runner (and a shutdown) stuck.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
