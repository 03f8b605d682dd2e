"""Finished pre-reviews in the records database (``hall_prereviews``, migration 2).

The row id is an unguessable token: it is also the resident's link to their correction list
(shown as a link or QR code at the kiosk), so knowing a ticket id is not enough to read it.
Reports count pre-review and first-pass rates from this table.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from rooms.casebook import hall_prereviews
from rooms.errors import NotFoundError
from rooms.prereview import PreReview
from rooms.records import RecordsDB


@dataclass(frozen=True, slots=True)
class StoredPreReview:
    id: str
    department_id: str
    review: PreReview


class PreReviewBook:
    def __init__(self, db: RecordsDB) -> None:
        self._db = db

    async def save(self, review: PreReview, department_id: str) -> str:
        """Store a finished pre-review; returns its id (the correction-list token)."""
        if not review.finished or review.result is None:
            raise ValueError("only a finished pre-review is stored")
        review_id = secrets.token_urlsafe(16)
        result = review.result

        async def insert(conn: AsyncConnection) -> None:
            await conn.execute(sa.insert(hall_prereviews).values(
                id=review_id, ticket_id=review.ticket_id, matter_id=review.matter_id,
                department_id=department_id, clerk_id=review.clerk_id,
                result=result.value, items=review.to_dict(),
                created_at=review.finished_at or review.created_at,
            ))

        await self._db.write(insert)
        return review_id

    async def get(self, review_id: str) -> StoredPreReview:
        read, _ = self._db.engines
        async with read.connect() as conn:
            row = (await conn.execute(
                sa.select(hall_prereviews).where(hall_prereviews.c.id == review_id)
            )).first()
        if row is None:
            raise NotFoundError("no such pre-review")
        return StoredPreReview(row.id, row.department_id, PreReview.from_dict(row.items))
