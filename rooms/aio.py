"""Stopping asyncio tasks for sure.

On Python 3.11, ``asyncio.wait_for`` (used inside redis-py) can swallow a cancellation that
races its own timeout: the task goes on as if never cancelled, and an ``await task`` after
``task.cancel()`` then waits forever (seen: a hall that did not exit on SIGTERM, its timer loop
still running). So a task is cancelled again until it is done, and given up on, loudly, after
a while rather than hanging a shutdown.

Also the one loop for work retried until it lands (:func:`retry_forever`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

logger = logging.getLogger("hall.tasks")


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], *, patience_s: float = 5.0,
                     every_s: float = 0.2) -> list[asyncio.Task[Any]]:
    """Cancel ``tasks`` (again and again) until they are done or ``patience_s`` passed;
    returns those still running (logged). Their results and errors are consumed."""
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    give_up = loop.time() + patience_s
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_s)
        if pending and loop.time() >= give_up:
            logger.error("tasks did not stop within %.1f s: %s", patience_s,
                         ", ".join(sorted(t.get_name() for t in pending)))
            break
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: not reported as "never retrieved"
    return sorted(pending, key=lambda t: t.get_name())


async def retry_forever(work: Callable[[], Awaitable[object]], *, what: str, interval_s: float,
                        max_backoff_s: float, wake: asyncio.Event | None = None,
                        once: bool = False, log: logging.Logger = logger) -> None:
    """Run ``work`` now and then every ``interval_s`` (at once when ``wake`` is set) until
    cancelled, or with ``once`` until it succeeded once. A failure is retried with
    exponential backoff up to ``max_backoff_s``, and an outage is logged twice in all: when
    it starts (with the traceback) and when ``work`` succeeds again, not once per attempt.
    ``CancelledError`` passes through (how it stops)."""
    failures = 0
    while True:
        if wake is not None:
            wake.clear()  # what was due until now, this pass does
        try:
            await work()
        except Exception as exc:
            failures += 1
            if failures == 1:
                log.warning("%s failed (%r); retrying with backoff until it works", what, exc,
                            exc_info=True)
            await asyncio.sleep(min(max_backoff_s,
                                    max(interval_s, 0.05) * 2 ** min(failures, 30)))
            continue
        if failures:
            log.info("%s works again after %d failed attempts", what, failures)
            failures = 0
        if once:
            return
        if wake is None:
            await asyncio.sleep(interval_s)
            continue
        try:
            async with asyncio.timeout(interval_s):
                await wake.wait()
        except TimeoutError:
            pass
