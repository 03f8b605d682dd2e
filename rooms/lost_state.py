"""Closing in the log the tickets whose live state was lost.

The live store (memory, or a Redis without persistence) can lose what it held: an embedded hall
restarted after a crash starts empty by definition, and a Redis that restarted empty forgets
every ticket. The records database still shows those tickets open (an ``enter_queue`` and no
terminal event), and reports would count them as waiting or in session for ever. So when the
hall notices the loss (at start-up; in Redis mode also when its heartbeat finds Redis emptied)
it writes, for each ticket the log shows open and the store no longer knows, one terminal
``state_lost`` event (data: ``reason`` = ``state_lost``, ``last_kind``: the ticket's last
logged event, ``detected``: ``startup`` or ``store_lost``), through the store's outbox like
every other event.

Exactly once, even when several processes notice at the same time: the check and the append
run inside one store transaction (the hall lock, across processes), and the check looks first
in the outbox (a ``state_lost`` appended but not yet moved to the database) and only then in
the database (the records writer commits there before it acknowledges the outbox, so an event
that left the outbox between the two looks is found in the second).
"""

from __future__ import annotations

import logging

from rooms.events import EventKind, HallEvent
from rooms.records import RecordsDB
from rooms.store import Store

logger = logging.getLogger("hall.engine")

STATE_LOST_REASON = "state_lost"
# How far into the outbox the check for a pending state_lost looks (the outbox is short unless
# the records database is down, and then this is not reached: it needs the database).
_OUTBOX_SCAN = 100_000
# Open tickets looked at per loss (more would be closed at the next one).
_OPEN_SCAN = 100_000


async def close_lost_tickets(store: Store, db: RecordsDB, *, now: float, detected: str,
                             batch: int = 500) -> int:
    """Append one ``state_lost`` event for every ticket open in the log that ``store`` does
    not know; returns how many. Raises if the store or the database cannot be read (the
    batches closed before stay closed); safe to call again, from any process."""
    rows = await db.open_tickets(limit=_OPEN_SCAN)
    closed = 0
    for start in range(0, len(rows), batch):
        # One transaction per batch: the hall lock is held for milliseconds, not for all.
        closed += await _close(store, db, rows[start:start + batch], now=now,
                               detected=detected)
    return closed


async def _close(store: Store, db: RecordsDB, rows: list[HallEvent], *, now: float,
                 detected: str) -> int:
    async with store.transaction():
        lost = {e.ticket_id: e for e in rows
                if e.ticket_id is not None and await store.get_ticket(e.ticket_id) is None}
        if not lost:
            return 0
        for event in await store.outbox_peek(_OUTBOX_SCAN):
            if event.kind == EventKind.STATE_LOST and event.ticket_id is not None:
                lost.pop(event.ticket_id, None)  # closed already; the writer has it
        still_open = {e.ticket_id for e in await db.open_tickets(lost.keys())}
        events = [
            HallEvent(kind=EventKind.STATE_LOST, at=now, ticket_id=last.ticket_id,
                      clerk_id=last.clerk_id, matter_id=last.matter_id,
                      department_id=last.department_id,
                      service_point_id=last.service_point_id, channel=last.channel,
                      data={"reason": STATE_LOST_REASON, "last_kind": last.kind.value,
                            "detected": detected})
            for ticket_id, last in lost.items() if ticket_id in still_open
        ]
        if events:
            await store.outbox_append(events)
            logger.warning("live state lost (%s): %d tickets open in the log closed as %s",
                           detected, len(events), STATE_LOST_REASON)
        return len(events)
