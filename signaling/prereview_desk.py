"""The pre-review (预审) desk: reviews under way in live sessions, and finishing them.

The checklist rules are :mod:`rooms.prereview`; finished reviews are stored by
:class:`rooms.prereview_book.PreReviewBook`. Who may act (the session's clerk) is checked by
the hub before it calls in here.
"""

from __future__ import annotations

import time
from typing import Any

from rooms.errors import InvalidStateError, NotFoundError
from rooms.files import SessionFiles
from rooms.hall import Hall
from rooms.prereview import PreReview
from rooms.prereview_book import PreReviewBook


class PreReviewDesk:
    def __init__(self, hall: Hall, book: PreReviewBook, files: SessionFiles | None) -> None:
        self.hall = hall
        self.book = book
        self.files = files
        self._open: dict[str, PreReview] = {}  # session id -> pre-review under way

    async def start(self, session_id: str, clerk_id: str) -> PreReview:
        """The matter's checklist; starting twice returns the review under way."""
        review = self._open.get(session_id)
        if review is None:
            ticket = await self.hall.get_ticket(session_id)
            matter = self.hall.catalog.matters[ticket.matter_id]
            review = PreReview(session_id, matter, clerk_id, time.time())
            self._open[session_id] = review
        return review

    def _under_way(self, session_id: str) -> PreReview:
        review = self._open.get(session_id)
        if review is None:
            raise InvalidStateError(f"no pre-review under way in session {session_id}")
        return review

    async def mark(self, session_id: str, material_id: str, mark: str, note: str | None,
                   file_ids: list[str] | None) -> PreReview:
        review = self._under_way(session_id)
        if file_ids and self.files is not None:
            # A material may only point at files of this very session.
            known = {f.id for f in await self.files.list(session_id)}
            unknown = sorted(set(file_ids) - known)
            if unknown:
                raise NotFoundError(f"no file {unknown[0]} in this session")
        review.mark(material_id, mark, note, file_ids, now=time.time())
        return review

    async def finish(self, session_id: str) -> tuple[PreReview, dict[str, Any]]:
        """Close the review, store it, and return it with the resident's result message."""
        review = self._under_way(session_id)
        result = review.finish(time.time())
        ticket = await self.hall.get_ticket(session_id)
        review_id = await self.book.save(review, ticket.department_id)
        del self._open[session_id]
        return review, {
            "session_id": session_id,
            "result": result.value,
            "corrections": [
                {"material_id": c.material_id, "name": c.name, "action": c.action,
                 "text": c.text_zh} for c in review.corrections()
            ],
            "url": f"/corrections/{review_id}",
        }
