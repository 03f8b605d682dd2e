"""Tickets (取号): one resident's request for one matter, and its lifecycle state machine.

::

    waiting ──offer──▶ offered ──accept──▶ in_session ──end──▶ wrap_up ──outcome──▶ done
       ▲  │              │  │                  │   │
       │  │   miss/decline  └─ resident leaves ─┐ │   └─transfer──▶ transferred ──offer──▶ offered …
       └──┼──────────────┘                      │ └─requeue (clerk dropped)──▶ waiting
          ├── leave / disconnect past grace ──▶ abandoned
          └── max wait / callback expired ────▶ timed_out

``transferred`` behaves like ``waiting`` (the ticket is dispatchable, in its new matter's queue
or a named clerk's) but tells the resident, the clerk console and the reports that the ticket
arrived by transfer. ``done``, ``abandoned`` and ``timed_out`` are final.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from rooms.catalog import ServiceKind
from rooms.errors import InvalidStateError

logger = logging.getLogger("hall.tickets")


class TicketState(StrEnum):
    WAITING = "waiting"
    OFFERED = "offered"
    IN_SESSION = "in_session"
    WRAP_UP = "wrap_up"
    DONE = "done"
    ABANDONED = "abandoned"
    TRANSFERRED = "transferred"
    TIMED_OUT = "timed_out"


class Channel(StrEnum):
    KIOSK = "kiosk"  # 远程帮办服务点
    APP = "app"  # 随申办


class PriorityReason(StrEnum):
    ELDERLY = "elderly"
    DISABLED = "disabled"
    REQUEUED = "requeued"  # back in the queue after a dropped session


QUEUED_STATES = frozenset({TicketState.WAITING, TicketState.TRANSFERRED})
FINAL_STATES = frozenset({TicketState.DONE, TicketState.ABANDONED, TicketState.TIMED_OUT})

# Allowed transitions; anything else raises InvalidStateError naming the current state.
TRANSITIONS: dict[TicketState, frozenset[TicketState]] = {
    TicketState.WAITING: frozenset(
        {TicketState.OFFERED, TicketState.ABANDONED, TicketState.TIMED_OUT,
         TicketState.TRANSFERRED}
    ),
    TicketState.TRANSFERRED: frozenset(
        {TicketState.OFFERED, TicketState.WAITING, TicketState.ABANDONED, TicketState.TIMED_OUT}
    ),
    TicketState.OFFERED: frozenset(
        {TicketState.IN_SESSION, TicketState.WAITING, TicketState.TRANSFERRED,
         TicketState.ABANDONED}
    ),
    TicketState.IN_SESSION: frozenset(
        {TicketState.WRAP_UP, TicketState.TRANSFERRED, TicketState.WAITING,
         TicketState.ABANDONED}
    ),
    TicketState.WRAP_UP: frozenset({TicketState.DONE}),
    TicketState.DONE: frozenset(),
    TicketState.ABANDONED: frozenset(),
    TicketState.TIMED_OUT: frozenset(),
}


@dataclass(slots=True)
class Ticket:
    id: str
    number: str  # what the resident sees and the kiosk prints, e.g. "A023"
    matter_id: str
    department_id: str
    kind: ServiceKind
    channel: Channel
    joined_at: float
    # Order key: lower is served first. Fixed at join (joined_at minus any priority credit) and
    # carried unchanged through offers, misses, re-queues and transfers: nobody who was behind
    # a ticket can ever get ahead of it.
    score: float
    state: TicketState = TicketState.WAITING
    service_point_id: str | None = None
    resident_id: str | None = None
    priority: PriorityReason | None = None
    callback_contact: str | None = None  # set: resident asked to be called back, keeps place
    clerk_id: str | None = None  # offered to / in session with / wrapping up
    target_clerk_id: str | None = None  # named-clerk transfer
    offer_deadline: float | None = None
    offered_at: float | None = None
    session_started_at: float | None = None
    session_ended_at: float | None = None
    first_offer_at: float | None = None
    # clerk id -> until when that clerk is not offered this ticket again (declined / missed)
    skip_clerks: dict[str, float] = field(default_factory=dict)
    published_position: int | None = None  # never increases (what the resident was told)
    told_next: bool = False
    widened: bool = False
    transfers: int = 0
    transfer_note: str | None = None  # the last transferring clerk's note, for the next
    requeues: int = 0
    disconnected_at: float | None = None
    outcome: str | None = None
    outcome_reason: str | None = None
    rating: int | None = None  # the resident's 1-5 after the session, once
    ended_at: float | None = None
    state_since: float = 0.0

    @property
    def queue_key(self) -> str:
        """The ready set this ticket is dispatched from: a named clerk's, or its matter's."""
        if self.target_clerk_id is not None:
            return f"clerk:{self.target_clerk_id}"
        return f"matter:{self.matter_id}"

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def is_queued(self) -> bool:
        return self.state in QUEUED_STATES

    def check(self, action: str, *allowed: TicketState) -> None:
        """Raise unless the ticket is in one of ``allowed`` (checked before any write)."""
        if self.state not in allowed:
            raise InvalidStateError(
                f'Cannot {action} ticket {self.number} ({self.id}) in state "{self.state}"'
            )

    def set_state(self, new: TicketState, now: float) -> None:
        """The single setter of the state: checks the transition table and logs the change."""
        if new == self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise InvalidStateError(
                f'Cannot move ticket {self.number} ({self.id}) from state "{self.state}" '
                f'to "{new}"'
            )
        logger.debug("ticket %s: %s -> %s", self.id, self.state, new)
        self.state = new
        self.state_since = now

    def to_dict(self) -> dict[str, Any]:
        # A flat copy (dataclasses.asdict deep-copies and dominated dispatch time); the
        # mutable fields are copied so the store never shares them with the caller.
        data = {name: getattr(self, name) for name in _FIELDS}
        data["skip_clerks"] = dict(data["skip_clerks"])
        return data

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Ticket:
        data = dict(raw)
        data["kind"] = ServiceKind(data["kind"])
        data["channel"] = Channel(data["channel"])
        data["state"] = TicketState(data["state"])
        if data.get("priority") is not None:
            data["priority"] = PriorityReason(data["priority"])
        data["skip_clerks"] = dict(data.get("skip_clerks") or {})
        return cls(**data)


_FIELDS = tuple(f.name for f in fields(Ticket))
