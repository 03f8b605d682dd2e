"""Fixtures shared by the test modules: a records database on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from rooms.records import RecordsDB, normalize_database_url

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


# -- fixtures ---------------------------------------------------------------------------------


async def _postgres_url() -> AsyncIterator[str]:
    """Create a database of our own on the test server, yield its URL, drop it afterwards."""
    raw_admin = os.environ.get("HALL_TEST_DATABASE_URL") or DEFAULT_ADMIN_URL
    admin_url = normalize_database_url(raw_admin, default_sqlite_path="unused.db")
    if not admin_url.startswith("postgresql+asyncpg://"):
        pytest.fail(f"HALL_TEST_DATABASE_URL must be a PostgreSQL URL, got {raw_admin[:16]}…")
    name = f"hall_test_{secrets.token_hex(6)}"
    admin = create_async_engine(
        admin_url, isolation_level="AUTOCOMMIT", connect_args={"timeout": 5}
    )
    try:
        try:
            async with admin.connect() as conn:
                await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        except (OSError, TimeoutError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            shown = make_url(admin_url).render_as_string(hide_password=True)
            pytest.skip(f"PostgreSQL test server {shown} unreachable: {exc!r}")
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            async with admin.connect() as conn:
                # FORCE (PostgreSQL >= 13) ends connections a failed test may have leaked.
                await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except (OSError, TimeoutError, sa.exc.OperationalError, sa.exc.InterfaceError):
            pass  # the server was unreachable to begin with: nothing was created
        finally:
            await admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def records_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        # A missing sub-directory: open() must create it.
        yield f"sqlite+aiosqlite:///{tmp_path / 'records' / 'hall.db'}"
        return
    async for url in _postgres_url():
        yield url


@pytest.fixture
async def db(records_url: str) -> AsyncIterator[RecordsDB]:
    records = RecordsDB(records_url)
    await records.open()
    try:
        yield records
    finally:
        await records.close()


# Real Chromium for the page tests (tests/browserkit.py).
from tests.browserkit import browser, chromium  # noqa: E402, F401

# Redis (a private redis-server) and the engine's store backends (tests/redisproc.py, hallkit.py).
from tests.hallkit import new_rig, store_factory, store_kind  # noqa: E402, F401
from tests.redisproc import redis_server  # noqa: E402, F401
