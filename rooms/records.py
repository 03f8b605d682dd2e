"""The records database: the durable copy of the hall's event log.

Live state lives in the store (memory or Redis); every state change also produces a
:class:`~rooms.events.HallEvent` that the :class:`~rooms.records_writer.RecordsWriter` moves
here. Reports, audits and the department health reports are computed from this table alone.

SQLite (embedded mode, one process) and PostgreSQL (several hall processes) are supported
through SQLAlchemy's async Core; both get the same schema from :mod:`rooms.migrations`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from rooms.errors import HallError
from rooms.events import TERMINAL_KINDS, EventKind, HallEvent
from rooms.migrations import current_version, migrate

logger = logging.getLogger("hall.records")

_T = TypeVar("_T")

# How long a SQLite writer waits for another connection's write lock before failing.
_SQLITE_BUSY_TIMEOUT_MS = 5000

# Execution option marking a transaction that will write. On SQLite such a transaction starts
# with BEGIN IMMEDIATE, taking the write lock up front: a deferred transaction that read first
# and then tries to write fails at once with SQLITE_BUSY if another connection committed in
# between (busy_timeout does not help there), while an immediate one simply waits its turn.
_WRITE_OPTION = "hall_records_write"

_metadata = sa.MetaData()

# The query-side description of the table, matching the latest migration. The migrations keep
# their own frozen copies; this one is what the code reads and writes today.
hall_events = sa.Table(
    "hall_events",
    _metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("seq", sa.BigInteger, nullable=False, unique=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("ticket_id", sa.String(64)),
    sa.Column("clerk_id", sa.String(64)),
    sa.Column("matter_id", sa.String(64)),
    sa.Column("department_id", sa.String(64)),
    sa.Column("service_point_id", sa.String(64)),
    sa.Column("channel", sa.String(64)),
    sa.Column("data", sa.JSON, nullable=False),
)

_ASYNC_SCHEMES = ("sqlite+aiosqlite", "postgresql+asyncpg")


def normalize_database_url(url: str | None, *, default_sqlite_path: str | os.PathLike[str]) -> str:
    """Turn a configured database URL into one with an async driver.

    ``None`` or empty selects a SQLite file at ``default_sqlite_path``. Plain ``sqlite://`` and
    ``postgresql://`` / ``postgres://`` URLs (what operators usually write) get the async
    driver; URLs that already name ``aiosqlite`` or ``asyncpg`` are returned unchanged.
    Anything else raises :class:`HallError` with code ``config_invalid``. The message names
    only the scheme, never the URL, which may contain a password.
    """
    if url is None or not url.strip():
        return f"sqlite+aiosqlite:///{os.fspath(default_sqlite_path)}"
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise HallError(
            "records database URL has no scheme; expected sqlite:/// or postgresql://",
            code="config_invalid",
        )
    lowered = scheme.lower()
    if lowered in _ASYNC_SCHEMES:
        return url
    if lowered == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    if lowered in ("postgresql", "postgres"):
        return f"postgresql+asyncpg://{rest}"
    raise HallError(
        f"records database URL scheme {scheme!r} is not supported; "
        "use sqlite:///path, postgresql://… or their async forms "
        "sqlite+aiosqlite:// and postgresql+asyncpg://",
        code="config_invalid",
    )


def _json_dumps(value: Any) -> str:
    # Keep Chinese readable in the database. ``default=str``: one odd value in an event's data
    # (a datetime, a Decimal) must not make the batch unwritable and block the whole log.
    return json.dumps(value, ensure_ascii=False, default=str)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module (which would otherwise not BEGIN
    # before DDL or SELECT) so that SQLAlchemy's BEGIN, emitted in _sqlite_on_begin, rules.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


async def _enable_sqlite_wal(engine: AsyncEngine) -> None:
    """Switch the database file to WAL (persistent, so once per file is enough).

    WAL lets report queries read while the writer appends. ``synchronous`` stays at its default
    (FULL): events leave the outbox once committed, so a commit must survive a power cut.

    Switching needs an exclusive lock, and SQLite does not wait for it (busy_timeout is not
    consulted where waiting could deadlock) when another opener is inside a transaction, so
    this retries for as long as a writer would wait. It talks to the driver connection
    directly because the mode cannot change inside the transaction SQLAlchemy would begin.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection  # the aiosqlite connection
            try:
                async with driver.execute("PRAGMA journal_mode = WAL") as cursor:
                    row = await cursor.fetchone()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or loop.time() > deadline:
                    raise
            else:
                mode = str(row[0]).lower() if row else "?"
                if mode != "wal":
                    logger.warning("records database stays in journal mode %r, not WAL", mode)
                return
        await asyncio.sleep(0.02)


def _sqlite_on_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(_WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _row_to_event(row: sa.Row[Any]) -> HallEvent:
    return HallEvent(
        kind=EventKind(row.kind),
        at=float(row.at),
        ticket_id=row.ticket_id,
        clerk_id=row.clerk_id,
        matter_id=row.matter_id,
        department_id=row.department_id,
        service_point_id=row.service_point_id,
        channel=row.channel,
        data=dict(row.data),
        seq=int(row.seq),
    )


def _event_to_row(event: HallEvent) -> dict[str, Any]:
    if event.seq <= 0:
        # seq is the idempotency key; an unstamped event would collide with every other one.
        raise ValueError(f"event {event.kind.value} has no seq; stamp it via the store outbox")
    return {
        "seq": event.seq,
        "kind": event.kind.value,
        "at": event.at,
        "ticket_id": event.ticket_id,
        "clerk_id": event.clerk_id,
        "matter_id": event.matter_id,
        "department_id": event.department_id,
        "service_point_id": event.service_point_id,
        "channel": event.channel,
        "data": dict(event.data),
    }


class RecordsDB:
    """The event log table behind an async engine. ``open`` before use; ``close`` after."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._engine: AsyncEngine | None = None
        self._write_engine: AsyncEngine | None = None

    @property
    def url(self) -> str:
        """The database URL with any password masked (for logs and status pages)."""
        return make_url(self._url).render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return make_url(self._url).get_backend_name()

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the engine and bring the schema up to the latest version.

        Idempotent while open; after :meth:`close` it may be called again to reconnect.
        """
        if self._engine is not None:
            return
        parsed = make_url(self._url)
        is_sqlite = parsed.get_backend_name() == "sqlite"
        if is_sqlite:
            self._make_sqlite_parent(parsed.database)
        engine = create_async_engine(
            self._url,
            json_serializer=_json_dumps,
            json_deserializer=json.loads,
            # Connections that died while the database restarted are replaced on checkout,
            # so the writer recovers by itself once the server is back.
            pool_pre_ping=True,
        )
        if is_sqlite:
            sa.event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
            sa.event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        write_engine = engine.execution_options(**{_WRITE_OPTION: True})
        try:
            if is_sqlite and parsed.database not in (None, "", ":memory:"):
                await _enable_sqlite_wal(engine)
            async with write_engine.begin() as conn:
                version = await migrate(conn)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._write_engine = write_engine
        logger.info("records database %s open at schema version %d", self.url, version)

    @staticmethod
    def _make_sqlite_parent(database: str | None) -> None:
        if not database or database == ":memory:" or database.startswith("file:"):
            return
        Path(database).parent.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        """Dispose of the engine; idempotent."""
        engine, self._engine, self._write_engine = self._engine, None, None
        if engine is not None:
            await engine.dispose()

    @property
    def engines(self) -> tuple[AsyncEngine, AsyncEngine]:
        """``(engine, write_engine)`` for other tables of the records database (cases, ...).

        Open write transactions with ``write_engine.begin()``: on SQLite it takes the write
        lock up front (BEGIN IMMEDIATE). Raises ``records_unavailable`` unless open.
        """
        return self._engines()

    def _engines(self) -> tuple[AsyncEngine, AsyncEngine]:
        if self._engine is None or self._write_engine is None:
            raise HallError("records database is not open", code="records_unavailable")
        return self._engine, self._write_engine

    # -- writing ---------------------------------------------------------------------------------
    async def write(self, work: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        """Run ``work`` in one write transaction that a cancel of the caller cannot cut.

        Every write of the records database (events, cases, files, pre-reviews) goes through
        here. A cancel landing inside a transaction (a task stopped at shutdown) would leave
        it open on a connection nobody closes; on SQLite its write lock then stays held, and
        the next writer (the final flush of the event log) fails with "database is locked",
        losing what the outbox still held. Shielded, the transaction commits or rolls back
        on its own; only the caller stops waiting."""
        _, write_engine = self._engines()

        async def transaction() -> _T:
            async with write_engine.begin() as conn:
                return await work(conn)

        return await asyncio.shield(transaction())

    async def append(self, events: Sequence[HallEvent]) -> int:
        """Insert ``events`` in one transaction; return how many were new.

        Idempotent by ``seq``: an event whose seq is already stored is skipped, so a batch
        delivered twice (writer crashed between commit and outbox ack) is stored once.
        """
        if not events:
            return 0
        engine, _ = self._engines()
        rows = [_event_to_row(e) for e in events]
        insert: Any
        if engine.dialect.name == "postgresql":
            insert = pg_dialect.insert(hall_events)
        elif engine.dialect.name == "sqlite":
            insert = sqlite_dialect.insert(hall_events)
        else:  # normalize_database_url admits only the two dialects above
            raise HallError(
                f"records database dialect {engine.dialect.name!r} is not supported",
                code="config_invalid",
            )
        # RETURNING reports exactly the rows that were inserted, which a rowcount does not
        # reliably do for executemany on every driver.
        stmt = insert.on_conflict_do_nothing(index_elements=["seq"]).returning(hall_events.c.seq)

        async def insert_rows(conn: AsyncConnection) -> int:
            return len((await conn.execute(stmt, rows)).all())

        return await self.write(insert_rows)

    # -- reading ---------------------------------------------------------------------------------
    async def events(
        self,
        *,
        since_seq: int = 0,
        limit: int = 1000,
        ticket_id: str | None = None,
        kinds: Collection[EventKind] | None = None,
    ) -> list[HallEvent]:
        """Events with ``seq > since_seq`` in seq order, at most ``limit``, optionally filtered
        by ticket and by kind (an empty ``kinds`` matches nothing)."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        if kinds is not None and not kinds:
            return []
        engine, _ = self._engines()
        query = sa.select(hall_events).where(hall_events.c.seq > since_seq)
        if ticket_id is not None:
            query = query.where(hall_events.c.ticket_id == ticket_id)
        if kinds is not None:
            query = query.where(hall_events.c.kind.in_(sorted(k.value for k in kinds)))
        query = query.order_by(hall_events.c.seq).limit(limit)
        async with engine.connect() as conn:
            result = await conn.execute(query)
            return [_row_to_event(row) for row in result]

    async def open_tickets(self, ticket_ids: Collection[str] | None = None,
                           limit: int = 10_000) -> list[HallEvent]:
        """Tickets the log shows open: an ``enter_queue`` and no terminal event (``done``,
        ``abandon``, ``timeout``, ``state_lost``); for each, its latest event that names a
        matter (what it was doing, and where, when the log last heard of it), in seq
        order, at most ``limit``. ``ticket_ids`` limits the answer to those tickets."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        if ticket_ids is not None and not ticket_ids:
            return []
        engine, _ = self._engines()
        ended = sa.select(hall_events.c.ticket_id).where(
            hall_events.c.kind.in_(sorted(k.value for k in TERMINAL_KINDS)),
            hall_events.c.ticket_id.is_not(None))
        opened = sa.select(hall_events.c.ticket_id).where(
            hall_events.c.kind == EventKind.ENTER_QUEUE.value,
            hall_events.c.ticket_id.not_in(ended))
        if ticket_ids is not None:
            opened = opened.where(hall_events.c.ticket_id.in_(sorted(ticket_ids)))
        latest = (sa.select(sa.func.max(hall_events.c.seq))
                  .where(hall_events.c.ticket_id.in_(opened.limit(limit)),
                         hall_events.c.matter_id.is_not(None))
                  .group_by(hall_events.c.ticket_id))
        query = sa.select(hall_events).where(hall_events.c.seq.in_(latest))
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return sorted((_row_to_event(r) for r in rows), key=lambda e: e.seq)

    async def count(self) -> int:
        """Number of events stored."""
        engine, _ = self._engines()
        async with engine.connect() as conn:
            value = await conn.scalar(sa.select(sa.func.count()).select_from(hall_events))
        return int(value or 0)

    async def last_seq(self) -> int:
        """Highest stored seq, 0 if the log is empty."""
        engine, _ = self._engines()
        async with engine.connect() as conn:
            value = await conn.scalar(sa.select(sa.func.max(hall_events.c.seq)))
        return int(value or 0)

    async def schema_version(self) -> int:
        """The schema version recorded in ``schema_migrations``."""
        engine, _ = self._engines()
        async with engine.connect() as conn:
            return await current_version(conn)

    async def ping(self, *, timeout_s: float = 2.0) -> bool:
        """True if the database answers within ``timeout_s``; never raises (for /readyz)."""
        engine = self._engine
        if engine is None:
            return False
        try:
            async with asyncio.timeout(timeout_s):
                async with engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
        # Readiness must answer whatever went wrong: drivers raise their own exception types
        # for refused or dropped connections, not only SQLAlchemy's. The failure is logged.
        except Exception as exc:
            logger.warning("records database %s ping failed: %r", self.url, exc)
            return False
        return True


__all__ = ["RecordsDB", "hall_events", "normalize_database_url"]
