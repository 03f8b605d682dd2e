"""Moves the event log from the store's outbox into the records database.

The engine writes events to the outbox in the same step as the state change they describe, so
the outbox is the source of truth until an event is in the records database. The writer
therefore works peek → append → ack: an event leaves the outbox only after the transaction
that stored it has committed. If the process dies between commit and ack, the next writer
delivers the same batch again and :meth:`RecordsDB.append` skips the seqs it already has, so
the log ends up with every event exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from rooms.aio import stop_tasks
from rooms.records import RecordsDB
from rooms.store import Store

logger = logging.getLogger("hall.records")

# Shortest retry delay, so that interval_s=0 does not turn a database outage into a busy loop.
_MIN_BACKOFF_S = 0.05


class RecordsWriter:
    """Moves events from Store outbox to RecordsDB: peek a batch, append (idempotent), then ack.
    Nothing is acked before it is in the DB, so a failed write loses nothing."""

    def __init__(
        self,
        store: Store,
        db: RecordsDB,
        *,
        batch: int = 500,
        interval_s: float = 0.2,
        max_backoff_s: float = 5.0,
    ) -> None:
        if batch <= 0:
            raise ValueError(f"batch must be positive, got {batch}")
        if interval_s < 0 or max_backoff_s < 0:
            raise ValueError("interval_s and max_backoff_s must not be negative")
        self._store = store
        self._db = db
        self._batch = batch
        self._interval_s = interval_s
        self._max_backoff_s = max_backoff_s
        self._healthy = True
        self._written = 0
        # flush() may be called (e.g. at shutdown) while run() is flushing; serialising them
        # keeps the written count exact and avoids appending the same batch twice at once.
        self._flush_lock = asyncio.Lock()
        self._holder = secrets.token_hex(8)
        self._lease_s = max(5.0, 10 * interval_s)

    @property
    def healthy(self) -> bool:
        """False while the last attempt to write failed."""
        return self._healthy

    @property
    def written(self) -> int:
        """Events this writer has inserted (re-delivered duplicates not counted)."""
        return self._written

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop ``task`` (running :meth:`run`) between batches, never inside one.

        A cancel that lands inside :meth:`RecordsDB.append` leaves that database transaction
        open on a connection nobody closes: on SQLite its write lock then stays held, the
        final flush fails with "database is locked" after the busy timeout, and in embedded
        mode every event still in the outbox is lost with the process (measured: 55,000 of
        60,000). Holding the flush lock keeps the cancel out of a batch in progress."""
        async with self._flush_lock:
            await stop_tasks([task])

    async def flush(self) -> int:
        """Move everything in the outbox to the database now; return the events inserted.

        Raises whatever the store or the database raised; the failed batch stays in the
        outbox (it was not acked) and the batches before it are already safe in the database.
        """
        async with self._flush_lock:
            inserted_total = 0
            try:
                while True:
                    events = await self._store.outbox_peek(self._batch)
                    if not events:
                        break
                    inserted = await self._db.append(events)
                    # Only now that the batch is committed may it leave the outbox.
                    await self._store.outbox_ack(events[-1].seq)
                    if inserted < len(events):
                        # Expected after a crash between commit and ack: the batch came again.
                        logger.info(
                            "records: %d of %d events (seq %d..%d) were already stored",
                            len(events) - inserted,
                            len(events),
                            events[0].seq,
                            events[-1].seq,
                        )
                    inserted_total += inserted
                    self._written += inserted
            except Exception:
                self._healthy = False
                raise
            self._healthy = True
            return inserted_total

    async def run(self) -> None:
        """Flush every ``interval_s`` until cancelled; back off and retry while writes fail."""
        failures = 0
        while True:
            try:
                # With several processes on one store, one of them moves the log at a time
                # (the others would insert every event again, skipped as duplicates: N times
                # the database work). If it dies, another takes over when the lease runs out.
                if await self._store.lease("records-writer", self._holder,
                                           self._lease_s):
                    await self.flush()
                else:
                    self._healthy = True  # the store answers; another process writes
            # Any failure (database down, table missing, a driver error type SQLAlchemy does
            # not wrap) is logged and retried: the events are safe in the outbox, and a writer
            # that died would let them pile up unseen. CancelledError is a BaseException and
            # passes through, which is how the task is stopped.
            except Exception as exc:
                self._healthy = False  # also when the lease itself could not be asked for
                failures += 1
                delay = min(
                    self._max_backoff_s,
                    max(self._interval_s, _MIN_BACKOFF_S) * 2 ** min(failures, 30),
                )
                if failures == 1:
                    logger.exception("records: writing the event log failed; retrying")
                else:
                    logger.warning(
                        "records: write failed again (%d in a row, %s: %s); retry in %.2fs",
                        failures,
                        type(exc).__name__,
                        exc,
                        delay,
                    )
                await asyncio.sleep(delay)
                continue
            if failures:
                logger.info("records: writing again after %d failed attempts", failures)
                failures = 0
            await asyncio.sleep(self._interval_s)
