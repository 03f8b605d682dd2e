"""Notices: what the engine tells the outside world after a command or a timer.

The engine does no I/O. After each command it hands its notices to the subscribers registered
with :meth:`rooms.hall.Hall.subscribe`; the signaling layer turns them into socket messages.
A notice names the ticket / clerk / matter it concerns and carries the new values, so a
subscriber never has to read the store back to render it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class NoticeKind(StrEnum):
    TICKET = "ticket"  # a ticket's state changed (resident, holding clerk)
    OFFER = "offer"  # a ticket is offered to a clerk (data: deadline, timeout_s)
    OFFER_WITHDRAWN = "offer_withdrawn"  # the offer is gone (data: reason)
    YOU_ARE_NEXT = "you_are_next"  # first in line: distinct from a position update
    QUEUE_CHANGED = "queue_changed"  # ranks in this queue moved: positions/ETAs to refresh
    CLERK = "clerk"  # a clerk's state changed
    WRAPUP_OVERDUE = "wrapup_overdue"  # wrap-up timer ran out with no outcome recorded


@dataclass(frozen=True, slots=True)
class Notice:
    kind: NoticeKind
    ticket_id: str | None = None
    clerk_id: str | None = None
    queue_key: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
