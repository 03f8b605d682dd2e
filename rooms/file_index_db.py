"""The shared-file index in the records database (``hall_files``, migration 3).

File contents live in a :class:`rooms.files.BlobStore`; which session holds which file is
recorded here, so the files survive a restart of the hall (the in-memory index would forget
them while their contents stayed on disk).
"""

from __future__ import annotations

import builtins
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from rooms.errors import ValidationError
from rooms.files import FileIndex, StoredFile
from rooms.records import RecordsDB

_metadata = sa.MetaData()

hall_files = sa.Table(
    "hall_files",
    _metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("content_type", sa.String(64), nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("uploaded_by", sa.String(128), nullable=False),
    sa.Column("uploaded_at", sa.Double, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
)


def _stored(row: sa.Row[Any]) -> StoredFile:
    return StoredFile.from_dict(dict(row._mapping))


class DatabaseFileIndex(FileIndex):
    def __init__(self, db: RecordsDB) -> None:
        self._db = db

    async def _rows(self, *where: sa.ColumnElement[bool]) -> builtins.list[StoredFile]:
        read, _ = self._db.engines
        query = sa.select(hall_files).where(*where).order_by(hall_files.c.uploaded_at,
                                                              hall_files.c.id)
        async with read.connect() as conn:
            return [_stored(row) for row in await conn.execute(query)]

    async def add(self, stored: StoredFile) -> None:
        async def insert(conn: AsyncConnection) -> None:
            await conn.execute(sa.insert(hall_files).values(**stored.to_dict()))

        try:
            await self._db.write(insert)
        except sa.exc.IntegrityError:
            raise ValidationError(f"file {stored.id} is already recorded") from None

    async def list(self, session_id: str) -> builtins.list[StoredFile]:
        return await self._rows(hall_files.c.session_id == session_id)

    async def get(self, session_id: str, file_id: str) -> StoredFile | None:
        rows = await self._rows(hall_files.c.session_id == session_id,
                                hall_files.c.id == file_id)
        return rows[0] if rows else None

    async def remove(self, session_id: str, file_id: str) -> StoredFile | None:
        stored = await self.get(session_id, file_id)
        if stored is None:
            return None
        async def delete(conn: AsyncConnection) -> None:
            await conn.execute(sa.delete(hall_files).where(hall_files.c.id == file_id))

        await self._db.write(delete)
        return stored

    async def refcount(self, digest: str) -> int:
        read, _ = self._db.engines
        async with read.connect() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(hall_files)
                                      .where(hall_files.c.digest == digest))
        return int(count or 0)

    async def usage(self, session_id: str) -> tuple[int, int]:
        read, _ = self._db.engines
        async with read.connect() as conn:
            row = (await conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(hall_files.c.size), 0))
                .where(hall_files.c.session_id == session_id)
            )).one()
        return int(row[0]), int(row[1])

    async def older_than(self, cutoff: float) -> builtins.list[StoredFile]:
        return await self._rows(hall_files.c.uploaded_at < cutoff)

    async def uploader_usage(self, uploaded_by: str, since: float) -> tuple[int, int]:
        read, _ = self._db.engines
        async with read.connect() as conn:
            row = (await conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(hall_files.c.size), 0))
                .where(hall_files.c.uploaded_by == uploaded_by,
                       hall_files.c.uploaded_at >= since)
            )).one()
        return int(row[0]), int(row[1])
