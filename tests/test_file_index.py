"""The shared-file index contract, on the in-memory and the records-database index."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rooms.errors import ValidationError
from rooms.file_index_db import DatabaseFileIndex
from rooms.files import FileIndex, MemoryFileIndex, StoredFile
from rooms.records import RecordsDB, normalize_database_url


@pytest.fixture(params=["memory", "database"])
async def index(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FileIndex]:
    if request.param == "memory":
        yield MemoryFileIndex()
        return
    db = RecordsDB(normalize_database_url(None, default_sqlite_path=tmp_path / "r.sqlite3"))
    await db.open()
    try:
        yield DatabaseFileIndex(db)
    finally:
        await db.close()


def _file(fid: str, session: str, digest: str, at: float, size: int = 10) -> StoredFile:
    return StoredFile(id=fid, session_id=session, digest=digest * 64, size=size,
                      content_type="image/png", filename=f"{fid}.png",
                      uploaded_by="resident:r1", uploaded_at=at)


async def test_index_keeps_files_per_session_in_order_with_references(index: FileIndex) -> None:
    """Files are listed per session oldest first; digests are reference counted."""
    await index.add(_file("b", "s1", "a", 2.0, 5))
    await index.add(_file("a", "s1", "a", 1.0, 7))
    await index.add(_file("c", "s2", "a", 3.0))
    assert [f.id for f in await index.list("s1")] == ["a", "b"]
    assert await index.refcount("a" * 64) == 3
    assert await index.usage("s1") == (2, 12)
    assert await index.get("s2", "a") is None
    assert (await index.get("s1", "a")) == _file("a", "s1", "a", 1.0, 7)
    with pytest.raises(ValidationError):
        await index.add(_file("a", "s1", "a", 1.0, 7))
    removed = await index.remove("s1", "a")
    assert removed is not None and removed.id == "a"
    assert await index.remove("s1", "a") is None
    assert await index.refcount("a" * 64) == 2
    assert [f.id for f in await index.older_than(2.5)] == ["b"]
    assert await index.usage("nobody") == (0, 0)
