"""Records database, schema migrations and the outbox → records writer.

Every database test runs twice: against a SQLite file in ``tmp_path`` and against a
throw-away PostgreSQL database created on the server named by ``HALL_TEST_DATABASE_URL``
(default: the local server with trust auth) and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from rooms.errors import HallError
from rooms.events import EventKind, HallEvent
from rooms.memory_store import MemoryStore
from rooms.migrations import LATEST_VERSION, MIGRATIONS, migrate
from rooms.records import RecordsDB, normalize_database_url
from rooms.records_writer import RecordsWriter


def make_event(i: int, *, kind: EventKind = EventKind.ENTER_QUEUE, **fields: Any) -> HallEvent:
    fields.setdefault("ticket_id", f"T{i:06d}")
    fields.setdefault("data", {"position": i})
    return HallEvent(kind=kind, at=1_700_000_000.0 + i, **fields)


async def stamped(store: MemoryStore, count: int, **fields: Any) -> list[HallEvent]:
    return await store.outbox_append([make_event(i, **fields) for i in range(count)])


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.01)


async def execute_ddl(url: str, sql: str) -> None:
    """Run one statement on a separate connection (to break the schema behind the DB's back)."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


# -- normalize_database_url -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, "sqlite+aiosqlite:///var/hall/records.db"),
        ("", "sqlite+aiosqlite:///var/hall/records.db"),
        ("  ", "sqlite+aiosqlite:///var/hall/records.db"),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite+aiosqlite:///y.db", "sqlite+aiosqlite:///y.db"),
        ("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db"),
    ],
)
def test_normalize_database_url(url: str | None, expected: str) -> None:
    """Empty means the default SQLite file; sync schemes get the async driver; async kept."""
    assert normalize_database_url(url, default_sqlite_path="var/hall/records.db") == expected


def test_normalize_database_url_absolute_default_path(tmp_path: Path) -> None:
    """An absolute default path yields a four-slash SQLite URL for that file."""
    url = normalize_database_url(None, default_sqlite_path=tmp_path / "r.db")
    assert url == f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    assert url.startswith("sqlite+aiosqlite:////")


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("mysql://root:secret@h/db", "'mysql'"),
        ("postgresql+psycopg2://u:secret@h/db", "'postgresql+psycopg2'"),
        ("redis://h:6379/0", "'redis'"),
        ("just-a-path.db", "no scheme"),
    ],
)
def test_normalize_database_url_rejects_other_schemes(url: str, named: str) -> None:
    """Unsupported schemes raise config_invalid naming the scheme, never echoing a password."""
    with pytest.raises(HallError) as info:
        normalize_database_url(url, default_sqlite_path="r.db")
    assert info.value.code == "config_invalid"
    assert named in info.value.message
    assert "secret" not in info.value.message


# -- migrations -------------------------------------------------------------------------------


async def test_open_creates_schema(db: RecordsDB, records_url: str) -> None:
    """open() creates hall_events with its unique seq and report indexes, at the latest version."""
    assert await db.schema_version() == LATEST_VERSION == MIGRATIONS[-1].version
    engine = create_async_engine(records_url)
    try:
        async with engine.connect() as conn:

            def inspect(
                sync_conn: Any,
            ) -> tuple[set[str], set[str], set[tuple[str, ...]], list[Any]]:
                insp = sa.inspect(sync_conn)
                columns = {c["name"] for c in insp.get_columns("hall_events")}
                indexes = {i["name"] for i in insp.get_indexes("hall_events") if i["name"]}
                uniques = {
                    tuple(u["column_names"]) for u in insp.get_unique_constraints("hall_events")
                }
                rows = list(sync_conn.execute(sa.text("SELECT version FROM schema_migrations")))
                return columns, indexes, uniques, rows

            columns, indexes, uniques, rows = await conn.run_sync(inspect)
    finally:
        await engine.dispose()
    assert columns == {
        "id",
        "seq",
        "kind",
        "at",
        "ticket_id",
        "clerk_id",
        "matter_id",
        "department_id",
        "service_point_id",
        "channel",
        "data",
    }
    assert {
        "ix_hall_events_ticket_id",
        "ix_hall_events_kind_at",
        "ix_hall_events_matter_at",
        "ix_hall_events_clerk_at",
    } <= indexes
    assert ("seq",) in uniques
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]


async def test_migrate_is_idempotent(db: RecordsDB, records_url: str) -> None:
    """Running migrate again, and reopening, applies nothing and keeps one row per version."""
    await db.append([make_event(1, seq=1)])
    engine = create_async_engine(records_url)
    try:
        async with engine.connect() as conn:
            assert await migrate(conn) == LATEST_VERSION
            assert await migrate(conn) == LATEST_VERSION
        again = RecordsDB(records_url)
        await again.open()
        try:
            assert await again.schema_version() == LATEST_VERSION
            assert await again.count() == 1  # data untouched
        finally:
            await again.close()
        async with engine.connect() as conn:
            versions = (await conn.execute(sa.text("SELECT version FROM schema_migrations"))).all()
    finally:
        await engine.dispose()
    assert sorted(v[0] for v in versions) == [m.version for m in MIGRATIONS]


async def test_concurrent_opens_migrate_once(records_url: str) -> None:
    """Several processes opening a fresh database at once all succeed; each version applied once."""
    dbs = [RecordsDB(records_url) for _ in range(4)]
    try:
        await asyncio.gather(*(d.open() for d in dbs))
        assert [await d.schema_version() for d in dbs] == [LATEST_VERSION] * 4
    finally:
        for d in dbs:
            await d.close()
    engine = create_async_engine(records_url)
    try:
        async with engine.connect() as conn:
            count = await conn.scalar(sa.text("SELECT count(*) FROM schema_migrations"))
    finally:
        await engine.dispose()
    assert count == len(MIGRATIONS)


async def test_sqlite_file_is_switched_to_wal(tmp_path: Path) -> None:
    """open() puts a SQLite file in WAL mode so report reads do not block the writer."""
    path = tmp_path / "wal" / "hall.db"
    records = RecordsDB(f"sqlite+aiosqlite:///{path}")
    await records.open()
    await records.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_open_failure_leaves_db_closed(tmp_path: Path) -> None:
    """open() on an unusable SQLite path raises and leaves the db closed (ping False)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    records = RecordsDB(f"sqlite+aiosqlite:///{blocker / 'hall.db'}")
    with pytest.raises(OSError):
        await records.open()
    assert await records.ping() is False
    with pytest.raises(HallError) as info:
        await records.count()
    assert info.value.code == "records_unavailable"


# -- append and query -------------------------------------------------------------------------


async def test_append_and_query_since_seq(db: RecordsDB) -> None:
    """Appended events come back in seq order, after since_seq, at most limit of them."""
    events = await stamped(MemoryStore(), 10)
    assert await db.append(events) == 10
    got = await db.events()
    assert got == events
    seqs = [e.seq for e in events]
    assert [e.seq for e in await db.events(since_seq=seqs[3])] == seqs[4:]
    assert [e.seq for e in await db.events(since_seq=seqs[3], limit=2)] == seqs[4:6]
    assert await db.events(since_seq=seqs[-1]) == []


async def test_query_by_ticket_and_kinds(db: RecordsDB) -> None:
    """events() filters by ticket_id and by a set of kinds; an empty kinds set matches nothing."""
    store = MemoryStore()
    events = await store.outbox_append(
        [
            make_event(1, ticket_id="A"),
            make_event(2, ticket_id="B"),
            make_event(3, ticket_id="A", kind=EventKind.OFFER, clerk_id="c1"),
            make_event(4, ticket_id="A", kind=EventKind.ACCEPT, clerk_id="c1"),
            make_event(5, ticket_id=None, kind=EventKind.CLERK_BREAK, clerk_id="c1"),
        ]
    )
    await db.append(events)
    assert [e.seq for e in await db.events(ticket_id="A")] == [
        events[0].seq,
        events[2].seq,
        events[3].seq,
    ]
    assert await db.events(kinds={EventKind.OFFER, EventKind.CLERK_BREAK}) == [
        events[2],
        events[4],
    ]
    assert await db.events(ticket_id="A", kinds=[EventKind.ENTER_QUEUE]) == [events[0]]
    assert await db.events(kinds=set()) == []
    assert await db.events(ticket_id="nobody") == []


async def test_round_trip_all_fields_and_chinese_text(db: RecordsDB) -> None:
    """Every field, and nested JSON data with Chinese text, reads back exactly as written."""
    data = {
        "reason": "材料不全，请补充户口簿复印件",
        "outcome": "预审通过",
        "wait_s": 12.5,
        "position": 3,
        "widened": True,
        "nothing": None,
        "materials": ["身份证", "营业执照"],
        "nested": {"街镇": "徐家汇街道", "n": [1, 2, 3]},
    }
    [event] = await MemoryStore().outbox_append(
        [
            HallEvent(
                kind=EventKind.WRAPUP_END,
                at=1_731_234_567.123456,
                ticket_id="T000042",
                clerk_id="C0007",
                matter_id="M-户籍-01",
                department_id="公安分局",
                service_point_id="SP-徐家汇-03",
                channel="kiosk",
                data=data,
            )
        ]
    )
    await db.append([event])
    [back] = await db.events()
    assert back == event
    assert back.data == data
    assert back.kind is EventKind.WRAPUP_END
    assert back.at == pytest.approx(1_731_234_567.123456, abs=1e-6)


async def test_reappend_is_idempotent(db: RecordsDB) -> None:
    """Re-appending seqs already stored inserts nothing; an overlapping batch adds only the new."""
    events = await stamped(MemoryStore(), 6)
    assert await db.append(events[:4]) == 4
    assert await db.append(events[:4]) == 0
    assert await db.append(events[2:]) == 2
    assert await db.append([events[5], events[5]]) == 0
    assert await db.count() == 6
    assert await db.events() == events


async def test_count_and_last_seq(db: RecordsDB) -> None:
    """count() and last_seq() are 0 on an empty log and follow appends."""
    assert await db.count() == 0
    assert await db.last_seq() == 0
    assert await db.append([]) == 0
    events = await stamped(MemoryStore(), 3)
    await db.append(events)
    assert await db.count() == 3
    assert await db.last_seq() == events[-1].seq


async def test_append_rejects_unstamped_events(db: RecordsDB) -> None:
    """An event without a seq (not from the outbox) is refused rather than silently collapsed."""
    with pytest.raises(ValueError, match="seq"):
        await db.append([make_event(1)])
    assert await db.count() == 0


async def test_ping_and_close(records_url: str) -> None:
    """ping() is True while open and False once closed; close is idempotent; reopen works."""
    records = RecordsDB(records_url)
    assert await records.ping() is False
    await records.open()
    assert await records.ping() is True
    await records.close()
    await records.close()
    assert await records.ping() is False
    with pytest.raises(HallError) as info:
        await records.append(await stamped(MemoryStore(), 1))
    assert info.value.code == "records_unavailable"
    await records.open()
    try:
        assert await records.ping() is True
    finally:
        await records.close()


# -- writer -----------------------------------------------------------------------------------


async def test_writer_flush_moves_and_acks(db: RecordsDB) -> None:
    """flush() writes the whole outbox in order, acks it, and counts what it wrote."""
    store = MemoryStore()
    events = await stamped(store, 7)
    writer = RecordsWriter(store, db, batch=3)
    assert await writer.flush() == 7
    assert await store.outbox_len() == 0
    assert await db.events() == events
    assert writer.written == 7
    assert writer.healthy
    assert await writer.flush() == 0


async def test_writer_redelivery_after_crash_is_not_duplicated(db: RecordsDB) -> None:
    """A batch stored but not acked (crash in between) is delivered again without duplicates."""
    store = MemoryStore()
    events = await stamped(store, 5)
    await db.append(events[:3])  # committed, then the process "died" before outbox_ack
    writer = RecordsWriter(store, db)
    assert await writer.flush() == 2
    assert await store.outbox_len() == 0
    assert await db.events() == events


async def test_writer_keeps_events_while_db_closed(db: RecordsDB) -> None:
    """With the DB closed flush raises, acks nothing, turns unhealthy; after reopen all arrive."""
    store = MemoryStore()
    events = await stamped(store, 4)
    writer = RecordsWriter(store, db)
    await db.close()
    with pytest.raises(HallError):
        await writer.flush()
    assert not writer.healthy
    assert await store.outbox_len() == 4
    assert writer.written == 0
    await db.open()
    assert await writer.flush() == 4
    assert writer.healthy
    assert await store.outbox_len() == 0
    assert await db.events() == events


async def test_writer_keeps_events_on_database_error(db: RecordsDB, records_url: str) -> None:
    """A real database error (table gone) acks nothing; once the table is back, all arrive."""
    store = MemoryStore()
    first = await stamped(store, 2)
    writer = RecordsWriter(store, db)
    assert await writer.flush() == 2
    second = await stamped(store, 3)
    await execute_ddl(records_url, "ALTER TABLE hall_events RENAME TO hall_events_away")
    with pytest.raises(sa.exc.SQLAlchemyError):
        await writer.flush()
    assert not writer.healthy
    assert await store.outbox_len() == 3
    await execute_ddl(records_url, "ALTER TABLE hall_events_away RENAME TO hall_events")
    assert await writer.flush() == 3
    assert writer.healthy
    assert await db.events() == first + second


async def test_writer_run_backs_off_recovers_and_cancels(
    db: RecordsDB, caplog: pytest.LogCaptureFixture
) -> None:
    """run() logs failures and retries with the DB down, delivers once it is back, and cancels."""
    caplog.set_level(logging.INFO, logger="hall.records")
    store = MemoryStore()
    events = await stamped(store, 3)
    writer = RecordsWriter(store, db, interval_s=0.01, max_backoff_s=0.05)
    await db.close()
    task = asyncio.create_task(writer.run())
    try:
        await eventually(lambda: _false(writer.healthy))
        await eventually(lambda: _logged_failures(caplog, at_least=3))  # it keeps retrying
        assert await store.outbox_len() == 3
        failures = [r for r in caplog.records if r.name == "hall.records" and r.levelno >= 30]
        assert failures[0].exc_info is not None  # first failure logged with its traceback

        await db.open()
        await eventually(lambda: _outbox_empty(store))
        assert writer.healthy
        assert await db.events() == events

        more = await stamped(store, 2)  # the loop keeps going after recovery
        await eventually(lambda: _outbox_empty(store))
        assert await db.events(since_seq=events[-1].seq) == more
        assert writer.written == 5
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled()


async def test_writer_large_batch_in_order(db: RecordsDB) -> None:
    """5,000 events written in batches all arrive, in seq order, and the outbox ends empty."""
    store = MemoryStore()
    events = await stamped(store, 5000, data={"说明": "排队", "n": 1})
    writer = RecordsWriter(store, db, batch=500)
    assert await writer.flush() == 5000
    assert await store.outbox_len() == 0
    got = await db.events(limit=10_000)
    assert [e.seq for e in got] == [e.seq for e in events]
    assert got == events
    assert await db.count() == 5000
    assert await db.last_seq() == events[-1].seq


async def test_two_writers_on_one_outbox_store_each_event_once(db: RecordsDB) -> None:
    """Concurrent flushes (run loop plus a shutdown flush) never store an event twice."""
    store = MemoryStore()
    events = await stamped(store, 1200)
    writer_a = RecordsWriter(store, db, batch=100)
    writer_b = RecordsWriter(store, db, batch=70)
    written = await asyncio.gather(writer_a.flush(), writer_b.flush(), writer_a.flush())
    assert sum(written) == 1200
    assert await db.count() == 1200
    assert await db.events(limit=2000) == events


async def _logged_failures(caplog: pytest.LogCaptureFixture, *, at_least: int) -> bool:
    failures = [r for r in caplog.records if r.name == "hall.records" and r.levelno >= 30]
    return len(failures) >= at_least


async def _false(value: bool) -> bool:
    return not value


async def _outbox_empty(store: MemoryStore) -> bool:
    return await store.outbox_len() == 0


async def test_stopping_the_writer_mid_batch_leaves_the_final_flush_able_to_write(
        tmp_path: Path) -> None:
    """The shutdown path (stop the writer, then flush what is left) on a SQLite file, with the
    stop arriving while a batch is being written: every event ends up in the database. A
    cancel inside the batch's transaction used to leave SQLite's write lock held, and the
    final flush failed with "database is locked" (55,000 of 60,000 events lost)."""
    db = RecordsDB(f"sqlite+aiosqlite:///{tmp_path}/records.sqlite3")
    await db.open()
    store = MemoryStore()
    total = 60_000
    await store.outbox_append([HallEvent(EventKind.ENTER_QUEUE, at=1.0, ticket_id=f"t{i}")
                               for i in range(total)])
    writer = RecordsWriter(store, db, batch=5_000, interval_s=0.05)
    task = asyncio.create_task(writer.run())
    try:
        async with asyncio.timeout(60):
            while writer.written == 0:  # noqa: ASYNC110 - the fence: batches are being written (no event for it)
                await asyncio.sleep(0.001)
        # Into the next batch (5,000 rows take well over 20 ms here): where a cancel hurts.
        await asyncio.sleep(0.02)
        await writer.stop(task)
        await writer.flush()
        assert await store.outbox_len() == 0
        assert await db.count() == total
    finally:
        task.cancel()
        await db.close()
