"""The engine running for real: timers on the system clock, events reaching the records DB."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rooms.clerks import ClerkState
from rooms.clock import SystemClock
from rooms.events import EventKind
from rooms.hall import Hall, Unstaffed
from rooms.memory_store import MemoryStore
from rooms.policy import QueuePolicy
from rooms.records import RecordsDB, normalize_database_url
from rooms.records_writer import RecordsWriter
from rooms.runner import HallRunner
from rooms.tickets import TicketState
from tests.hallkit import small_catalog


async def _until(predicate, limit_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_runner_fires_offer_timeout_and_wrapup_on_the_real_clock() -> None:
    """With the runner started, an unanswered offer times out and wrap-up ends on time."""
    policy = QueuePolicy(offer_timeout_s=0.2, wrapup_s=0.2, max_missed_offers=1)
    hall = Hall(small_catalog(), MemoryStore(), clock=SystemClock(), policy=policy)
    await hall.start()
    runner = HallRunner(hall)
    await runner.start()
    try:
        await hall.login("c1")
        ticket = await hall.join("residence")
        assert ticket.state == TicketState.OFFERED

        async def on_break() -> bool:
            return (await hall.get_clerk("c1")).state == ClerkState.ON_BREAK

        await _until(on_break)
        assert (await hall.get_ticket(ticket.id)).state == TicketState.WAITING
        await hall.login("c2")
        await hall.accept("c2", ticket.id)
        await hall.set_outcome("c2", "resolved")
        await hall.end_session("c2", ticket.id)

        async def done() -> bool:
            return (await hall.get_ticket(ticket.id)).state == TicketState.DONE

        await _until(done)
    finally:
        await runner.close()
        await runner.close()  # idempotent


async def test_every_event_reaches_the_records_db_and_survives_restart(tmp_path: Path) -> None:
    """A whole session's events are in the SQLite records after the writer stops and the
    database is reopened, in order, none missing and none doubled."""
    url = normalize_database_url(None, default_sqlite_path=tmp_path / "records.sqlite3")
    store = MemoryStore()
    hall = Hall(small_catalog(), store, clock=SystemClock(), policy=QueuePolicy())
    await hall.start()
    db = RecordsDB(url)
    await db.open()
    writer = RecordsWriter(store, db, interval_s=0.01)
    task = asyncio.create_task(writer.run())
    await hall.login("c1")
    ticket = await hall.join("residence")
    await hall.accept("c1", ticket.id)
    await hall.end_session("c1", ticket.id)
    await hall.finish_wrapup("c1", "unresolved", "材料不全")
    waiting = await hall.join("employment", when_unstaffed=Unstaffed.WAIT)
    await hall.leave(waiting.id)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await writer.flush()
    assert await store.outbox_len() == 0
    await db.close()

    reopened = RecordsDB(url)
    await reopened.open()
    try:
        kinds = [e.kind for e in await reopened.events(ticket_id=ticket.id)]
        assert kinds == [
            EventKind.ENTER_QUEUE, EventKind.OFFER, EventKind.ACCEPT, EventKind.SESSION_START,
            EventKind.SESSION_END, EventKind.WRAPUP_START, EventKind.WRAPUP_END, EventKind.DONE,
        ]
        end = next(e for e in await reopened.events(ticket_id=ticket.id)
               if e.kind == EventKind.WRAPUP_END)
        assert end.data["reason"] == "材料不全" and end.department_id == "hr"
        abandon = await reopened.events(ticket_id=waiting.id, kinds=[EventKind.ABANDON])
        assert abandon[0].data["position"] == 1
        everything = await reopened.events(limit=10_000)
        assert [e.seq for e in everything] == sorted({e.seq for e in everything})
        assert {e.kind for e in everything} >= {EventKind.CLERK_LOGIN}
    finally:
        await reopened.close()
