"""Versioned schema migrations of the records database.

Each :class:`Migration` upgrades the schema by one version and is recorded in the
``schema_migrations`` table, so a database always says which version it is at. Migrations are
append-only: a released migration is never edited, a change to the schema is a new version.
That is why version 1 declares its own table here instead of reusing the query-side table in
:mod:`rooms.records` -- that one follows the *latest* schema, this one must stay what version 1
created forever.

:func:`migrate` is safe to run from several hall processes starting at the same time: all of
its work happens in one transaction that first takes a database-wide lock (an advisory lock on
PostgreSQL; on SQLite the single-writer lock, which the caller takes by opening the
transaction with ``BEGIN IMMEDIATE`` as :class:`rooms.records.RecordsDB` does). A second
process waits for the first, then finds nothing left to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

logger = logging.getLogger("hall.records")

# Key of the PostgreSQL advisory lock that serialises migrations. Any fixed 64-bit value works;
# this one is the first 8 bytes of sha256("virtual-hall:records:migrations") read as a signed
# big-endian integer, so it is unlikely to collide with advisory locks that other applications
# sharing the server might take.
_PG_MIGRATION_LOCK_KEY = -3062621578029667832

_migrations_metadata = sa.MetaData()

schema_migrations = sa.Table(
    "schema_migrations",
    _migrations_metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("description", sa.String(200), nullable=False),
    # POSIX seconds, like the event log's ``at``, so both dialects store the same thing.
    sa.Column("applied_at", sa.Double, nullable=False),
)


@dataclass(frozen=True)
class Migration:
    """One schema step: ``upgrade`` takes the schema from ``version - 1`` to ``version``."""

    version: int
    description: str
    upgrade: Callable[[AsyncConnection], Awaitable[None]]


def _v1_metadata() -> sa.MetaData:
    """The ``hall_events`` table exactly as version 1 creates it (frozen; see module doc)."""
    metadata = sa.MetaData()
    sa.Table(
        "hall_events",
        metadata,
        # SQLite only autoincrements an ``INTEGER PRIMARY KEY`` (the rowid alias), not BIGINT.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("ticket_id", sa.String(64), nullable=True),
        sa.Column("clerk_id", sa.String(64), nullable=True),
        sa.Column("matter_id", sa.String(64), nullable=True),
        sa.Column("department_id", sa.String(64), nullable=True),
        sa.Column("service_point_id", sa.String(64), nullable=True),
        sa.Column("channel", sa.String(64), nullable=True),
        sa.Column("data", sa.JSON, nullable=False),
        # The outbox's seq identifies an event; the unique constraint makes re-delivery of a
        # batch (writer crashed between insert and ack) a no-op instead of a duplicate line.
        sa.UniqueConstraint("seq", name="uq_hall_events_seq"),
        sa.Index("ix_hall_events_ticket_id", "ticket_id"),
        # Reports filter by time range and group by kind, matter or clerk.
        sa.Index("ix_hall_events_kind_at", "kind", "at"),
        sa.Index("ix_hall_events_matter_at", "matter_id", "at"),
        sa.Index("ix_hall_events_clerk_at", "clerk_id", "at"),
    )
    return metadata


async def _upgrade_v1(conn: AsyncConnection) -> None:
    # checkfirst=False: schema_migrations says the table is not there; if it is anyway, the
    # database was changed by hand and we would rather fail loudly than adopt it blindly.
    await conn.run_sync(_v1_metadata().create_all, checkfirst=False)


def _v2_metadata() -> sa.MetaData:
    """The 办不成事 case tables and the pre-review records, exactly as version 2 creates them."""
    metadata = sa.MetaData()
    sa.Table(
        "hall_cases",
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("number", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("matter_id", sa.String(64), nullable=False),
        sa.Column("department_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("reporter", sa.String(64), nullable=True),
        sa.Column("claim_code", sa.String(16), nullable=True),
        sa.Column("ticket_id", sa.String(64), nullable=True),
        sa.Column("description", sa.String(1000), nullable=False),
        sa.Column("assignee", sa.String(64), nullable=True),
        sa.Column("deadline", sa.Double, nullable=True),
        sa.Column("overdue", sa.Boolean, nullable=False),
        sa.Column("escalated", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("number", name="uq_hall_cases_number"),
        # NULLs do not collide in a unique constraint (both dialects): only anonymous
        # reports carry a claim code.
        sa.UniqueConstraint("claim_code", name="uq_hall_cases_claim_code"),
        sa.Index("ix_hall_cases_reporter", "reporter"),
        sa.Index("ix_hall_cases_state_deadline", "state", "deadline"),
        sa.Index("ix_hall_cases_department_created", "department_id", "created_at"),
    )
    sa.Table(
        "hall_case_steps",
        metadata,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "case_id",
            sa.String(64),
            sa.ForeignKey("hall_cases.id", name="fk_hall_case_steps_case_id"),
            nullable=False,
        ),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("note", sa.Text, nullable=True),
        sa.Index("ix_hall_case_steps_case_id", "case_id", "id"),
    )
    sa.Table(
        "hall_prereviews",
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("ticket_id", sa.String(64), nullable=True),
        sa.Column("matter_id", sa.String(64), nullable=False),
        sa.Column("department_id", sa.String(64), nullable=False),
        sa.Column("clerk_id", sa.String(64), nullable=True),
        sa.Column("result", sa.String(32), nullable=False),
        sa.Column("items", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Index("ix_hall_prereviews_ticket_id", "ticket_id"),
        # Reports count pre-reviews per matter / department over a time range.
        sa.Index("ix_hall_prereviews_matter_created", "matter_id", "created_at"),
        sa.Index("ix_hall_prereviews_department_created", "department_id", "created_at"),
    )
    return metadata


async def _upgrade_v2(conn: AsyncConnection) -> None:
    await conn.run_sync(_v2_metadata().create_all, checkfirst=False)


def _v3_metadata() -> sa.MetaData:
    # A frozen copy of what version 3 created (see _v1_metadata for why).
    metadata = sa.MetaData()
    sa.Table(
        "hall_files",
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("uploaded_by", sa.String(128), nullable=False),
        sa.Column("uploaded_at", sa.Double, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Index("ix_hall_files_session", "session_id", "uploaded_at"),
        sa.Index("ix_hall_files_digest", "digest"),
        sa.Index("ix_hall_files_uploaded_at", "uploaded_at"),
    )
    return metadata


async def _upgrade_v3(conn: AsyncConnection) -> None:
    await conn.run_sync(_v3_metadata().create_all, checkfirst=False)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create hall_events and its report indexes", _upgrade_v1),
    Migration(2, "create hall_cases, hall_case_steps and hall_prereviews", _upgrade_v2),
    Migration(3, "create hall_files (the shared-file index)", _upgrade_v3),
)

LATEST_VERSION: int = MIGRATIONS[-1].version


def _check_sequence(migrations: tuple[Migration, ...]) -> None:
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise RuntimeError(
                f"migration versions must be 1, 2, 3, ... without gaps; "
                f"found {migration.version} at position {expected}"
            )


_check_sequence(MIGRATIONS)


async def current_version(conn: AsyncConnection) -> int:
    """The highest applied version, or 0 if the database has never been migrated."""
    has_table = await conn.run_sync(
        lambda sync_conn: sa.inspect(sync_conn).has_table(schema_migrations.name)
    )
    if not has_table:
        return 0
    value = await conn.scalar(sa.select(sa.func.max(schema_migrations.c.version)))
    return int(value or 0)


async def _lock(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        # Held until the transaction ends; a second process blocks here until we commit.
        await conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY}
        )
    # SQLite: the caller's BEGIN IMMEDIATE already holds the database's single write lock.


async def _apply(conn: AsyncConnection) -> int:
    await _lock(conn)
    await conn.run_sync(_migrations_metadata.create_all, checkfirst=True)
    version = await current_version(conn)
    if version > LATEST_VERSION:
        # A newer hall version has migrated this database (a rolling upgrade is under way).
        # Migrations only add things, so this older code can keep working; say so and go on.
        logger.warning(
            "records schema is at version %d, newer than this program's %d",
            version,
            LATEST_VERSION,
        )
        return version
    for migration in MIGRATIONS[version:]:
        logger.info("records schema: applying %d (%s)", migration.version, migration.description)
        await migration.upgrade(conn)
        await conn.execute(
            schema_migrations.insert().values(
                version=migration.version,
                description=migration.description,
                applied_at=time.time(),
            )
        )
        version = migration.version
    return version


async def migrate(conn: AsyncConnection) -> int:
    """Apply pending migrations in order and return the schema version now in effect.

    If ``conn`` is already in a transaction the work joins it and the caller commits;
    otherwise one transaction is opened and committed here. Either way all pending
    migrations commit together or not at all (both PostgreSQL and SQLite have
    transactional DDL).
    """
    if conn.in_transaction():
        return await _apply(conn)
    async with conn.begin():
        return await _apply(conn)
