"""Issue 11, items 18 and 19: nothing the hall owes the log or a resident is lost to an outage.

* 18: an "unresolved" outcome files its 办不成事 case even while the records database is down
  (a private PostgreSQL cluster, really stopped and started again): the case is due in the
  store's follow-up outbox with the outcome, filed once the database is back, exactly once,
  and the resident is told; the notice's other effects happen during the outage.
* 19: live state lost (an empty Redis, an embedded hall restarted after a crash) closes every
  ticket the log still shows open with one terminal ``state_lost`` event, once.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from rooms.casebook import CaseBook, hall_cases
from rooms.cases import PendingCase
from rooms.clock import SystemClock
from rooms.events import EventKind, HallEvent
from rooms.hall import Hall
from rooms.lost_state import close_lost_tickets
from rooms.memory_store import MemoryStore
from rooms.records import RecordsDB, normalize_database_url
from rooms.records_writer import RecordsWriter
from rooms.redis_store import RedisStore
from server import keys
from signaling.case_desk import CaseDesk
from tests.hallkit import small_catalog
from tests.pgproc import PgCluster
from tests.redisproc import RedisServer, new_prefix, own_redis
from tests.signalkit import Client, LiveHall, clients, live_hall

MATTER = "flexible_employment_registration"  # hrss: served by clerk01
TERMINAL = frozenset({EventKind.DONE, EventKind.ABANDON, EventKind.TIMEOUT,
                      EventKind.STATE_LOST})


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster(Path(tempfile.mkdtemp(prefix="hall-pg-")))
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
        shutil.rmtree(cluster.dir, ignore_errors=True)


# -- helpers ------------------------------------------------------------------------------------
async def _serve_unresolved(clerk: Client, resident: Client, reason: str) -> str:
    """The resident takes a ticket, clerk01 serves it and records "unresolved"."""
    took = await resident.call("ticket.take", {"matter_id": MATTER})
    assert took.get("ok"), took
    ticket_id = str(took["ticket"]["id"])
    await clerk.next("offer.new", lambda d: d["ticket_id"] == ticket_id)
    assert (await clerk.call("offer.accept", {"ticket_id": ticket_id}))["ok"]
    assert (await clerk.call("session.end", {"session_id": ticket_id}))["ok"]
    finished = await clerk.call("wrapup.finish", {"outcome": "unresolved", "reason": reason})
    assert finished["ok"], finished
    return ticket_id


def _ticket_in(ticket_id: str, state: str) -> Callable[[Any], bool]:
    return lambda d: bool(d["ticket"]["id"] == ticket_id and d["ticket"]["state"] == state)


async def _until(read: Callable[[], Awaitable[object]], want: object,
                 within: float = 10.0) -> None:
    """Wait until ``read()`` gives ``want`` (polled: a state with no event to wait on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (got := await read()) != want:
        assert loop.time() < deadline, f"still {got!r}, not {want!r}, after {within} s"
        await asyncio.sleep(0.02)


async def _log_of(db: RecordsDB) -> list[HallEvent]:
    events: list[HallEvent] = []
    while True:
        batch = await db.events(since_seq=events[-1].seq if events else 0, limit=1000)
        if not batch:
            return events
        events += batch


def _terminals(events: list[HallEvent]) -> Counter[str]:
    return Counter(e.ticket_id for e in events if e.kind in TERMINAL and e.ticket_id)


async def _written(hall: LiveHall) -> RecordsDB:
    """Everything in the outbox is in the records database (the writer flushed)."""
    await hall.app[keys.WRITER].flush()
    db: RecordsDB = hall.app[keys.RECORDS]
    return db


# -- 18: 办不成事 cases survive a records-database outage ------------------------------------------
async def test_unresolved_outcomes_during_a_postgres_outage_all_become_cases_once(
        pg_cluster: PgCluster) -> None:
    """PostgreSQL stopped: three "unresolved" outcomes (two app residents, one kiosk) still
    end their tickets for everyone at once (ticket.update done, owner dropped); once the
    server is back, each becomes exactly one case and its resident gets case.update."""
    async with live_hall({"HALL_DATABASE_URL": pg_cluster.url}) as hall, \
            clients(4) as (clerk, r1, r2, kiosk):
        hub = hall.app[keys.HUB]
        store = hall.app[keys.STORE]
        await clerk.connect(hall.url, {"token": await hall.clerk_token()})
        await r1.connect(hall.url, {"id_token": await hall.resident_id_token("r1")})
        await r2.connect(hall.url, {"id_token": await hall.resident_id_token("r2")})
        await kiosk.connect(hall.url, {"token": await hall.kiosk_token("XH-001")})
        assert (await clerk.call("clerk.available"))["ok"]

        pg_cluster.stop()
        tickets = {}
        for who, name in ((r1, "r1"), (r2, "r2"), (kiosk, "kiosk")):
            ticket_id = await _serve_unresolved(clerk, who, f"材料不全 ({name})")
            tickets[ticket_id] = who
            done = await who.next("ticket.update", _ticket_in(ticket_id, "done"))
            assert done["ticket"]["outcome"] == "unresolved"
            # The notice's other effects did not wait for the database.
            await _until(functools.partial(hub.state.owner_of, ticket_id), None)
        pending = await store.followup_peek(100)
        assert sorted(PendingCase.from_dict(d).ticket_id for _, d in pending) == sorted(tickets)

        pg_cluster.start()
        for ticket_id, who in tickets.items():
            update = await who.next("case.update", within=30)
            case = update["case"]
            assert case["source"] == "clerk_outcome" and case["state"] == "open"
            assert case["id"] == PendingCase.from_dict(
                next(d for _, d in pending if d["ticket_id"] == ticket_id)).case_id
        mine = (await r1.call("case.mine"))["cases"]
        assert len(mine) == 1 and "r1" in mine[0]["description"]
        assert await store.followup_peek(100) == []

        db = await _written(hall)
        engine, _ = db.engines
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(hall_cases.c.ticket_id))).all()
        assert Counter(r.ticket_id for r in rows) == Counter({t: 1 for t in tickets})
        # The log lost nothing either: each ticket ended once.
        assert _terminals(await _log_of(db)) == Counter({t: 1 for t in tickets})


async def test_filing_a_pending_case_again_finds_the_case_already_filed(tmp_path: Path) -> None:
    """A retry after a partial success (filed, not acknowledged) does not file a second case;
    neither do two filers at once."""
    url = normalize_database_url(None, default_sqlite_path=tmp_path / "records.sqlite3")
    db = RecordsDB(url)
    await db.open()
    try:
        hall = Hall(small_catalog(), MemoryStore(), clock=SystemClock())
        desk = CaseDesk(CaseBook(db), hall)
        pending = PendingCase(ticket_id="T1", matter_id="residence", department_id="hr",
                              reason="缺证明", clerk_id="c1", resident_id="r1",
                              service_point_id=None, at=1_780_000_000.0)
        first = await desk.file_pending(pending)
        again = await desk.file_pending(pending)
        racing = await asyncio.gather(*(desk.file_pending(pending) for _ in range(3)))
        assert {c.id for c in (first, again, *racing)} == {first.id}
        assert [c.id for c in await desk.book.for_reporter("resident:r1")] == [first.id]
    finally:
        await db.close()



# -- 19: lost live state closes the lost tickets in the log, once ----------------------------------
async def _open_tickets(hall: LiveHall, clerk: Client, waiting: Client,
                        served: Client) -> tuple[str, str]:
    """One ticket waiting (no clerk serves its matter now), one in session with clerk01."""
    took = await served.call("ticket.take", {"matter_id": MATTER})
    in_session = str(took["ticket"]["id"])
    await clerk.next("offer.new", lambda d: d["ticket_id"] == in_session)
    assert (await clerk.call("offer.accept", {"ticket_id": in_session}))["ok"]
    took = await waiting.call("ticket.take", {"matter_id": MATTER, "when_unstaffed": "wait"})
    assert took.get("ok"), took
    return str(took["ticket"]["id"]), in_session


async def _state_lost_in_log(hall: LiveHall, want: int) -> list[HallEvent]:
    """Wait until the records database holds ``want`` state_lost events; return the log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        db = await _written(hall)
        events = await _log_of(db)
        lost = [e for e in events if e.kind == EventKind.STATE_LOST]
        if len(lost) >= want:
            return events
        assert loop.time() < deadline, f"only {len(lost)} state_lost events, not {want}"
        await asyncio.sleep(0.05)


def _entered(events: list[HallEvent]) -> set[str]:
    return {e.ticket_id for e in events if e.kind == EventKind.ENTER_QUEUE and e.ticket_id}


async def _check_closed_once(hall: LiveHall, lost: set[str], kept: set[str]) -> None:
    """The lost tickets end with one state_lost each; asked once more (the fence: it is
    what a second process noticing the same loss does), the hall closes nothing again."""
    events = await _state_lost_in_log(hall, len(lost))
    closing = hall.app[keys.HUB].on_state_lost
    assert closing is not None
    await closing()
    events = await _log_of(await _written(hall))
    lost_events = [e for e in events if e.kind == EventKind.STATE_LOST]
    assert sorted(e.ticket_id or "" for e in lost_events) == sorted(lost)
    for event in lost_events:
        assert event.data["reason"] == "state_lost"
        assert event.matter_id == MATTER and event.department_id is not None
    assert not kept & {e.ticket_id for e in lost_events}
    # The contract: every ticket that entered the queue has exactly one terminal event.
    assert _terminals(events) == Counter({t: 1 for t in _entered(events) if t not in kept}), \
        "a ticket without, or with two, terminal events"


async def test_redis_emptied_closes_its_open_tickets_in_the_log_once(tmp_path: Path) -> None:
    """A Redis without persistence restarts empty under a running hall: the two tickets it
    held open (one waiting, one in session) get one state_lost each in the records database,
    and the tickets taken after the loss are not touched."""
    with own_redis() as server:
        env = {"HALL_REDIS_URL": server.url, "HALL_REDIS_PREFIX": new_prefix(),
               "HALL_SECRET_KEY": "durability-test-secret-" + "x" * 16}
        async with live_hall(env) as hall, clients(3) as (clerk, waiting, served):
            await clerk.connect(hall.url, {"token": await hall.clerk_token()})
            await waiting.connect(hall.url, {"id_token": await hall.resident_id_token("r1")})
            await served.connect(hall.url, {"id_token": await hall.resident_id_token("r2")})
            assert (await clerk.call("clerk.available"))["ok"]
            lost = set(await _open_tickets(hall, clerk, waiting, served))
            db = await _written(hall)
            assert _entered(await _log_of(db)) == lost

            server.stop()
            server.start()  # no persistence: empty
            await _check_closed_once(hall, lost, kept=set())

            # Life goes on, and a ticket of the new state is not a ghost.
            again = Client()
            try:
                await again.connect(hall.url, {"id_token": await hall.resident_id_token("r3")})
                took = await again.call("ticket.take", {"matter_id": MATTER,
                                                        "when_unstaffed": "wait"})
                assert took.get("ok"), took
                await _check_closed_once(hall, lost, kept={str(took["ticket"]["id"])})
            finally:
                await again.close()


async def test_embedded_hall_restarted_closes_the_previous_runs_open_tickets(
        tmp_path: Path) -> None:
    """An embedded hall stops with a ticket waiting and one in session (its live state is in
    memory: gone); the next start on the same SQLite log closes both as state_lost, once,
    and leaves the finished ticket alone."""
    env = {"HALL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'records.sqlite3'}"}
    async with live_hall(env) as hall, clients(4) as (clerk, waiting, served, finished):
        await clerk.connect(hall.url, {"token": await hall.clerk_token()})
        for who, name in ((waiting, "r1"), (served, "r2"), (finished, "r3")):
            await who.connect(hall.url, {"id_token": await hall.resident_id_token(name)})
        assert (await clerk.call("clerk.available"))["ok"]
        done = await _serve_unresolved(clerk, finished, "材料不全")
        assert (await clerk.call("clerk.available"))["ok"]
        lost = set(await _open_tickets(hall, clerk, waiting, served))
    async with live_hall(env) as hall:
        await _check_closed_once(hall, lost, kept=set())
        events = await _log_of(await _written(hall))
        assert [e.kind for e in events if e.ticket_id == done][-1] == EventKind.DONE
        for event in (e for e in events if e.kind == EventKind.STATE_LOST):
            assert event.data["detected"] == "startup"


async def test_two_processes_noticing_one_loss_close_each_ticket_once(tmp_path: Path) -> None:
    """Two stores on one Redis (two processes) close the same lost tickets at the same time,
    and again later: one state_lost per ticket, whatever the lease says."""
    url = normalize_database_url(None, default_sqlite_path=tmp_path / "records.sqlite3")
    db = RecordsDB(url)
    await db.open()
    opened = [HallEvent(EventKind.ENTER_QUEUE, 1_780_000_000.0 + i, ticket_id=f"T{i}",
                        matter_id=MATTER, department_id="hrss", channel="app", seq=10 + i)
              for i in range(5)]
    ended = HallEvent(EventKind.ABANDON, 1_780_000_010.0, ticket_id="T0", matter_id=MATTER,
                      department_id="hrss", channel="app", seq=100)
    await db.append([*opened, ended])
    with own_redis() as server:
        prefix = new_prefix()
        stores = [RedisStore(server.url, prefix=prefix) for _ in range(2)]
        try:
            for store in stores:
                await store.open()
            counts = await asyncio.gather(*(
                close_lost_tickets(s, db, now=1_780_000_100.0, detected="store_lost")
                for s in stores))
            assert sum(counts) == 4
            await RecordsWriter(stores[0], db).flush()
            again = await asyncio.gather(*(
                close_lost_tickets(s, db, now=1_780_000_200.0, detected="store_lost")
                for s in stores))
            assert again == [0, 0]
            events = await _log_of(db)
            assert _terminals(events) == Counter({f"T{i}": 1 for i in range(5)})
            assert await db.open_tickets() == []
        finally:
            for store in stores:
                await store.close()
            await db.close()


async def test_a_pending_case_outlives_the_process_that_recorded_the_outcome(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """Redis mode: the pending case is committed to Redis with the outcome, so another
    process files it if the one that ran the command died before it could."""

    prefix = new_prefix()
    dying, survivor = (RedisStore(redis_server.url, prefix=prefix) for _ in range(2))
    db = RecordsDB(normalize_database_url(None,
                                          default_sqlite_path=tmp_path / "records.sqlite3"))
    await db.open()
    try:
        await dying.open()
        hall = Hall(small_catalog(), dying, clock=SystemClock())
        await hall.start()
        await hall.login("c1")
        ticket = await hall.join("residence", resident_id="r9")
        await hall.accept("c1", ticket.id)
        await hall.end_session("c1", ticket.id)
        await hall.finish_wrapup("c1", "unresolved", "需到窗口核验")
        await dying.close()  # the process is gone; nothing of it filed the case

        await survivor.open()
        [(key, raw)] = await survivor.followup_peek(10)
        pending = PendingCase.from_dict(raw)
        assert (pending.ticket_id, pending.resident_id, pending.reason) == (
            ticket.id, "r9", "需到窗口核验")
        desk = CaseDesk(CaseBook(db), Hall(small_catalog(), survivor, clock=SystemClock()))
        case = await desk.file_pending(pending)
        await survivor.followup_ack(key)
        assert case.reporter == "resident:r9" and case.ticket_id == ticket.id
        assert await survivor.followup_peek(10) == []
    finally:
        await survivor.close()
        await db.close()
