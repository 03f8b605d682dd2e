"""The tasks a component spawns, kept so that closing it can cancel every one of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("kiosk.tasks")


class TaskSet:
    """Named tasks of one owner. A task that fails is logged (nobody awaits it otherwise);
    :meth:`cancel_all` cancels what is left, newest first, and waits for each to finish."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}:{name}")
        self._tasks.append(task)
        task.add_done_callback(self._done)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def _done(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def cancel(self, task: asyncio.Task[Any] | None) -> None:
        """Cancel one task and wait until it has finished."""
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def cancel_all(self) -> None:
        """Cancel every task still running, newest first (a task may rely on older ones)."""
        while self._tasks:
            task = self._tasks.pop()
            await self.cancel(task)
