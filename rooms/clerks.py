"""Clerks (帮办/坐席): one state per clerk across every matter they serve.

::

    logged_out ──login──▶ available ◀──────────── outcome recorded ──┐
                          │  ▲   ▲                                    │
                 offer ◀──┘  │   └── break ends ── on_break          wrap_up
                   │  └ miss/decline/withdrawn ┘     ▲                 ▲
                   ▼                                 │ (K misses)      │
                offered ──accept──▶ in_session ──────┴──── end ────────┘
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from rooms.errors import InvalidStateError

logger = logging.getLogger("hall.clerks")


class ClerkState(StrEnum):
    LOGGED_OUT = "logged_out"
    AVAILABLE = "available"
    ON_BREAK = "on_break"
    OFFERED = "offered"  # reserved for one ticket, waiting for accept
    IN_SESSION = "in_session"
    WRAP_UP = "wrap_up"


ON_DUTY_STATES = frozenset(
    {ClerkState.AVAILABLE, ClerkState.OFFERED, ClerkState.IN_SESSION, ClerkState.WRAP_UP}
)

TRANSITIONS: dict[ClerkState, frozenset[ClerkState]] = {
    ClerkState.LOGGED_OUT: frozenset({ClerkState.AVAILABLE, ClerkState.ON_BREAK}),
    ClerkState.AVAILABLE: frozenset(
        {ClerkState.OFFERED, ClerkState.ON_BREAK, ClerkState.LOGGED_OUT}
    ),
    ClerkState.ON_BREAK: frozenset({ClerkState.AVAILABLE, ClerkState.LOGGED_OUT}),
    ClerkState.OFFERED: frozenset(
        {ClerkState.IN_SESSION, ClerkState.AVAILABLE, ClerkState.ON_BREAK, ClerkState.LOGGED_OUT}
    ),
    ClerkState.IN_SESSION: frozenset({ClerkState.WRAP_UP, ClerkState.LOGGED_OUT}),
    ClerkState.WRAP_UP: frozenset(
        {ClerkState.AVAILABLE, ClerkState.ON_BREAK, ClerkState.LOGGED_OUT}
    ),
}


@dataclass(slots=True)
class Clerk:
    id: str
    name: str
    matters: list[str]  # primary skills (sorted)
    secondary: list[str] = field(default_factory=list)  # widened pool only (sorted)
    state: ClerkState = ClerkState.LOGGED_OUT
    state_since: float = 0.0
    idle_since: float | None = None  # set while available: "idle longest" routing
    break_reason: str | None = None
    pending_break: str | None = None  # break requested during a session, taken after wrap-up
    ticket_id: str | None = None  # offered / in session / wrapping up
    missed_in_row: int = 0
    wrapup_deadline: float | None = None
    wrapup_extended_s: float = 0.0
    wrapup_overdue: bool = False
    outcome: str | None = None  # outcome recorded for the current ticket
    outcome_reason: str | None = None
    sessions_handled: int = 0
    # ticket id -> until when this clerk is not offered it again (declined / missed)
    skipped: dict[str, float] = field(default_factory=dict)

    @property
    def on_duty(self) -> bool:
        return self.state in ON_DUTY_STATES

    def check(self, action: str, *allowed: ClerkState) -> None:
        if self.state not in allowed:
            raise InvalidStateError(f'Cannot {action} clerk {self.id} in state "{self.state}"')

    def set_state(self, new: ClerkState, now: float) -> None:
        if new == self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise InvalidStateError(
                f'Cannot move clerk {self.id} from state "{self.state}" to "{new}"'
            )
        logger.debug("clerk %s: %s -> %s", self.id, self.state, new)
        self.state = new
        self.state_since = now

    def to_dict(self) -> dict[str, Any]:
        # A flat copy (dataclasses.asdict deep-copies and dominated dispatch time); the
        # mutable fields are copied so the store never shares them with the caller.
        data = {name: getattr(self, name) for name in _FIELDS}
        data["matters"] = list(data["matters"])
        data["secondary"] = list(data["secondary"])
        data["skipped"] = dict(data["skipped"])
        return data

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Clerk:
        data = dict(raw)
        data["state"] = ClerkState(data["state"])
        data["matters"] = list(data["matters"])
        data["secondary"] = list(data.get("secondary") or [])
        data["skipped"] = dict(data.get("skipped") or {})
        return cls(**data)


_FIELDS = tuple(f.name for f in fields(Clerk))
