"""办不成事 cases: a resident's unresolved-matter report and its closed-loop lifecycle.

::

    open ──assign──▶ assigned ──start──▶ in_progress ──resolve──▶ resolved ──confirm──▶ closed
                      │  ▲ ▲                 │                      │   (or deadline: auto-close)
                      └──┘ └──── assign ─────┘                      └─reopen─▶ reopened
     (reassign)                                                                 │
     reopened ──assign──▶ assigned     reopened ──start──▶ in_progress          │
     closed ──reopen (within CasePolicy.reopen_window_s of closing)──▶ reopened ◀┘

A case is filed by the resident (end of a session, kiosk home screen, app) or automatically
by a clerk's "could not be completed" outcome. Every step (filing, each transition, each
escalation) is recorded as a :class:`CaseStep` naming who and when. Each state except
``closed`` has a deadline from :class:`CasePolicy`; :meth:`Case.expire` marks a case whose
deadline passed as overdue and escalates it to the supervisor (once per deadline), except a
``resolved`` case, which the system closes instead (the resident neither confirmed nor
reopened in time).

Decisions:

* ``closed`` is not final: the resident may reopen within ``reopen_window_s`` (default 15
  days) of closing, measured from the step that closed the case; later, a new case is filed.
* ``overdue`` and ``escalated`` describe the *current* deadline: every transition sets a
  fresh deadline and clears both. The history of escalations stays in the steps
  (action ``"escalate"``), which is what the reports count.
* Deadlines are plain durations (a "working day" is 24 h); a calendar of working days can
  replace :meth:`CasePolicy.deadline_for` later without changing the callers.
* Anonymous kiosk reports have ``reporter=None`` and get a claim code the resident uses to
  look the case up; who may act on a case (the resident confirming, a clerk resolving) is
  checked by the protocol layer, not here.

Pure domain: no I/O, the caller passes ``now``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from rooms.errors import InvalidStateError, ValidationError

logger = logging.getLogger("hall.cases")

SYSTEM_ACTOR = "system"
MAX_DESCRIPTION = 1000
CLAIM_CODE_LENGTH = 8
# No 0/O, 1/I/L: the code is read off a kiosk screen or a receipt and typed in again.
CLAIM_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"

_HOUR = 3600.0
_DAY = 24 * _HOUR


class CaseState(StrEnum):
    OPEN = "open"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    CLOSED = "closed"
    REOPENED = "reopened"


class CaseSource(StrEnum):
    SESSION_END = "session_end"  # the resident's screen at the end of a video session
    KIOSK = "kiosk"  # the kiosk home screen (may be anonymous)
    APP = "app"  # 随申办
    CLERK_OUTCOME = "clerk_outcome"  # filed automatically by a "could not be completed" outcome


# Allowed transitions; anything else raises InvalidStateError naming the current state.
# Self-loops are explicit: assigned -> assigned is a reassignment.
TRANSITIONS: dict[CaseState, frozenset[CaseState]] = {
    CaseState.OPEN: frozenset({CaseState.ASSIGNED}),
    CaseState.ASSIGNED: frozenset({CaseState.IN_PROGRESS, CaseState.ASSIGNED}),
    CaseState.IN_PROGRESS: frozenset({CaseState.RESOLVED, CaseState.ASSIGNED}),
    CaseState.RESOLVED: frozenset({CaseState.CLOSED, CaseState.REOPENED}),
    CaseState.REOPENED: frozenset({CaseState.ASSIGNED, CaseState.IN_PROGRESS}),
    CaseState.CLOSED: frozenset({CaseState.REOPENED}),
}


@dataclass(frozen=True, slots=True)
class CasePolicy:
    """How long each state may last before the case is overdue (seconds)."""

    assign_within_s: float = _DAY  # open -> assigned: one working day
    start_within_s: float = _DAY  # assigned -> in_progress
    resolve_within_s: float = 5 * _DAY  # in_progress -> resolved
    confirm_within_s: float = 7 * _DAY  # resolved -> auto-closed unless confirmed/reopened
    reassign_within_s: float = _DAY  # reopened -> assigned / in_progress
    reopen_window_s: float = 15 * _DAY  # closed -> reopened allowed this long after closing

    def __post_init__(self) -> None:
        for name in (
            "assign_within_s",
            "start_within_s",
            "resolve_within_s",
            "confirm_within_s",
            "reassign_within_s",
            "reopen_window_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"CasePolicy.{name} must be positive")

    def deadline_for(self, state: CaseState, since: float) -> float | None:
        """The deadline of a case that entered ``state`` at ``since``; None for closed."""
        duration = {
            CaseState.OPEN: self.assign_within_s,
            CaseState.ASSIGNED: self.start_within_s,
            CaseState.IN_PROGRESS: self.resolve_within_s,
            CaseState.RESOLVED: self.confirm_within_s,
            CaseState.REOPENED: self.reassign_within_s,
        }.get(state)
        return None if duration is None else since + duration


DEFAULT_POLICY = CasePolicy()


def new_claim_code() -> str:
    """A random 8-character code from an unambiguous alphabet (about 40 bits)."""
    return "".join(secrets.choice(CLAIM_ALPHABET) for _ in range(CLAIM_CODE_LENGTH))


def normalize_claim_code(code: str) -> str:
    """What the resident typed, upper-cased, without spaces and dashes."""
    return "".join(ch for ch in code.upper() if ch not in " -")


@dataclass(frozen=True, slots=True)
class CaseStep:
    """One recorded step: who did what, when, and the state before and after."""

    at: float
    actor: str
    action: str  # file, assign, start, resolve, confirm, reopen, auto_close, escalate
    from_state: CaseState | None  # None for the filing step
    to_state: CaseState
    note: str | None = None


def _required(text: str | None, what: str) -> str:
    cleaned = (text or "").strip()
    if not cleaned:
        raise ValidationError(f"{what} is required")
    if len(cleaned) > MAX_DESCRIPTION:
        raise ValidationError(f"{what} is longer than {MAX_DESCRIPTION} characters")
    return cleaned


def _optional(text: str | None, what: str) -> str | None:
    cleaned = (text or "").strip()
    return _required(cleaned, what) if cleaned else None


@dataclass(slots=True)
class Case:
    id: str
    number: str  # what the resident sees, e.g. "BCS-20261124-0001" (given by the caller)
    matter_id: str
    department_id: str  # the matter's department
    source: CaseSource
    reporter: str | None  # participant id; None for an anonymous kiosk report
    description: str
    created_at: float
    claim_code: str | None = None  # set for anonymous reports: the resident's look-up key
    ticket_id: str | None = None
    state: CaseState = CaseState.OPEN
    assignee: str | None = None  # department id or handler id
    deadline: float | None = None
    overdue: bool = False
    escalated: bool = False
    steps: list[CaseStep] = field(default_factory=list)
    version: int = 0  # storage's optimistic-concurrency counter; 0 = not filed yet
    policy: CasePolicy = field(default=DEFAULT_POLICY, compare=False, repr=False)

    @classmethod
    def new(
        cls,
        *,
        id: str,
        number: str,
        matter_id: str,
        department_id: str,
        source: CaseSource,
        reporter: str | None,
        description: str,
        now: float,
        actor: str | None = None,
        ticket_id: str | None = None,
        policy: CasePolicy = DEFAULT_POLICY,
    ) -> Case:
        """File a new case in ``open``: sets its deadline, a claim code if anonymous, and
        records the filing step by ``actor`` (default: the reporter, else ``"kiosk"``)."""
        if not id or not number or not matter_id or not department_id:
            raise ValidationError("a case needs an id, a number, a matter and a department")
        text = _required(description, "the description of what went wrong")
        case = cls(
            id=id,
            number=number,
            matter_id=matter_id,
            department_id=department_id,
            source=source,
            reporter=reporter,
            description=text,
            created_at=now,
            claim_code=new_claim_code() if reporter is None else None,
            ticket_id=ticket_id,
            deadline=policy.deadline_for(CaseState.OPEN, now),
            policy=policy,
        )
        who = actor or reporter or str(source)
        case.steps.append(CaseStep(now, who, "file", None, CaseState.OPEN, None))
        logger.info("case %s filed by %s (%s)", case.id, who, source)
        return case

    @property
    def closed_at(self) -> float | None:
        """When the case last entered ``closed``; None unless it is closed now."""
        if self.state != CaseState.CLOSED:
            return None
        for step in reversed(self.steps):
            if step.to_state == CaseState.CLOSED:
                return step.at
        return None

    def check(self, action: str, *allowed: CaseState) -> None:
        """Raise unless the case is in one of ``allowed`` (checked before any change)."""
        if self.state not in allowed:
            raise InvalidStateError(
                f'Cannot {action} case {self.number} ({self.id}) in state "{self.state}"'
            )

    def set_state(self, new: CaseState, now: float) -> None:
        """The single setter of the state: checks the table, logs, sets the new deadline."""
        if new not in TRANSITIONS[self.state]:
            raise InvalidStateError(
                f'Cannot move case {self.number} ({self.id}) from state "{self.state}" to "{new}"'
            )
        logger.debug("case %s: %s -> %s", self.id, self.state, new)
        self.state = new
        self.deadline = self.policy.deadline_for(new, now)
        self.overdue = False
        self.escalated = False

    def _move(
        self, new: CaseState, *, action: str, actor: str, now: float, note: str | None
    ) -> None:
        old = self.state
        self.set_state(new, now)
        self.steps.append(CaseStep(now, actor, action, old, new, note))

    # -- operations ------------------------------------------------------------------------------
    def assign(self, to: str, *, actor: str, now: float, note: str | None = None) -> None:
        """Assign (or reassign) to a department / handler; also takes work back from one."""
        self.check(
            "assign",
            CaseState.OPEN,
            CaseState.ASSIGNED,
            CaseState.IN_PROGRESS,
            CaseState.REOPENED,
        )
        if not to:
            raise ValidationError("an assignment needs a department or handler")
        note = _optional(note, "the note")
        self._move(CaseState.ASSIGNED, action="assign", actor=actor, now=now, note=note)
        self.assignee = to

    def start(self, *, actor: str, now: float, note: str | None = None) -> None:
        """The handler starts working on the case."""
        self.check("start", CaseState.ASSIGNED, CaseState.REOPENED)
        if self.assignee is None:  # reopened without an assignee cannot happen, but be sure
            raise InvalidStateError(f"Cannot start case {self.number} ({self.id}): no assignee")
        note = _optional(note, "the note")
        self._move(CaseState.IN_PROGRESS, action="start", actor=actor, now=now, note=note)

    def resolve(self, *, actor: str, now: float, note: str) -> None:
        """The handler reports how the matter was resolved (the note is required)."""
        self.check("resolve", CaseState.IN_PROGRESS)
        text = _required(note, "the resolution note")
        self._move(CaseState.RESOLVED, action="resolve", actor=actor, now=now, note=text)

    def confirm(self, *, actor: str, now: float, note: str | None = None) -> None:
        """The resident confirms the resolution: the case is closed."""
        self.check("confirm", CaseState.RESOLVED)
        note = _optional(note, "the note")
        self._move(CaseState.CLOSED, action="confirm", actor=actor, now=now, note=note)

    def reopen(self, *, actor: str, now: float, reason: str) -> None:
        """The resident is not satisfied: back to work (a reason is required). A closed case
        can be reopened only within ``policy.reopen_window_s`` of closing."""
        self.check("reopen", CaseState.RESOLVED, CaseState.CLOSED)
        text = _required(reason, "the reason for reopening")
        closed_at = self.closed_at
        if closed_at is not None and now > closed_at + self.policy.reopen_window_s:
            raise InvalidStateError(
                f'Cannot reopen case {self.number} ({self.id}) in state "{self.state}": '
                "the reopen window has passed"
            )
        self._move(CaseState.REOPENED, action="reopen", actor=actor, now=now, note=text)

    def expire(self, now: float) -> bool:
        """Act on a passed deadline; return True if the case was escalated just now.

        A ``resolved`` case is closed by the system (not an escalation). Any other state with
        a passed deadline becomes overdue and is escalated to the supervisor, once per
        deadline. Nothing happens before the deadline or on a closed case.
        """
        if self.deadline is None or now < self.deadline:
            return False
        if self.state == CaseState.RESOLVED:
            self._move(
                CaseState.CLOSED,
                action="auto_close",
                actor=SYSTEM_ACTOR,
                now=now,
                note="the resident did not confirm or reopen in time",
            )
            return False
        if self.escalated:
            return False
        self.overdue = True
        self.escalated = True
        self.steps.append(
            CaseStep(
                now,
                SYSTEM_ACTOR,
                "escalate",
                self.state,
                self.state,
                f'deadline of state "{self.state}" passed; escalated to the supervisor',
            )
        )
        logger.warning("case %s overdue in state %s: escalated", self.id, self.state)
        return True


__all__ = [
    "CLAIM_ALPHABET",
    "DEFAULT_POLICY",
    "PENDING_CASE_PREFIX",
    "SYSTEM_ACTOR",
    "TRANSITIONS",
    "Case",
    "CasePolicy",
    "CaseSource",
    "CaseState",
    "CaseStep",
    "PendingCase",
    "new_claim_code",
    "normalize_claim_code",
]


# Key prefix of a pending outcome case in the store's follow-up outbox.
PENDING_CASE_PREFIX = "case:"


@dataclass(frozen=True, slots=True)
class PendingCase:
    """The 办不成事 case a clerk's "unresolved" outcome makes due, as the engine records it
    in the store's follow-up outbox in the same transaction as the outcome. The shell files
    it in the records database later (at once, or after an outage), so it carries everything
    the case needs; its case id is derived from the ticket, so filing it again after a
    partial success finds the case already there instead of filing a second one."""

    ticket_id: str
    matter_id: str
    department_id: str
    reason: str | None
    clerk_id: str | None
    resident_id: str | None  # None: a kiosk ticket (the case is then anonymous)
    service_point_id: str | None
    at: float  # when the outcome was recorded: the case's filing time

    @property
    def key(self) -> str:
        return PENDING_CASE_PREFIX + self.ticket_id

    @property
    def case_id(self) -> str:
        # The same 16 hex digits as a random case id, one per ticket (a ticket ends once).
        return hashlib.sha256(f"outcome:{self.ticket_id}".encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"ticket_id": self.ticket_id, "matter_id": self.matter_id,
                "department_id": self.department_id, "reason": self.reason,
                "clerk_id": self.clerk_id, "resident_id": self.resident_id,
                "service_point_id": self.service_point_id, "at": self.at}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PendingCase:
        def text(name: str) -> str | None:
            value = raw.get(name)
            return None if value is None else str(value)

        return cls(ticket_id=str(raw["ticket_id"]), matter_id=str(raw["matter_id"]),
                   department_id=str(raw["department_id"]), reason=text("reason"),
                   clerk_id=text("clerk_id"), resident_id=text("resident_id"),
                   service_point_id=text("service_point_id"), at=float(raw["at"]))

