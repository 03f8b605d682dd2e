"""The 办不成事 desk: who may file, see and move unresolved-matter cases (closed loop).

The case lifecycle itself is :mod:`rooms.cases`; storage is :class:`rooms.casebook.CaseBook`.
This module holds the rules about people:

* residents (app) file cases under their own identity and see only their own; a kiosk files
  anonymously and the resident gets a claim code to look the case up later;
* a clerk's "unresolved" outcome files a case for the resident automatically;
* supervisors assign cases to a department or handler, and see the overdue list (a
  department supervisor: the cases of its departments only, :mod:`signaling.scope`);
* a clerk may start and resolve cases assigned to them or to a department they serve;
* the reporter confirms (closes) or reopens with a reason.
"""

from __future__ import annotations

import datetime
import secrets
from typing import Any
from zoneinfo import ZoneInfo

from rooms.casebook import CaseBook
from rooms.cases import Case, CaseSource, PendingCase
from rooms.errors import ForbiddenError, HallError, NotFoundError, ValidationError
from rooms.hall import Hall
from rooms.tickets import Ticket
from signaling.identity import Principal, Role
from signaling.scope import scope_of

STAFF_ACTIONS = frozenset({"assign", "start", "resolve"})
REPORTER_ACTIONS = frozenset({"confirm", "reopen"})


def case_view(case: Case) -> dict[str, Any]:
    """What a resident (and staff) see of a case: no internal handler ids in the steps."""
    return {
        "id": case.id,
        "number": case.number,
        "matter_id": case.matter_id,
        "department_id": case.department_id,
        "source": case.source.value,
        "state": case.state.value,
        "description": case.description,
        "claim_code": case.claim_code,
        "deadline": case.deadline,
        "overdue": case.overdue,
        "escalated": case.escalated,
        "created_at": case.created_at,
        "steps": [{"at": s.at, "action": s.action, "to_state": s.to_state, "note": s.note}
                  for s in case.steps],
    }


class CaseDesk:
    def __init__(self, book: CaseBook, hall: Hall) -> None:
        self.book = book
        self.hall = hall
        self._tz = ZoneInfo(hall.catalog.hours.timezone)

    async def _new_number(self, now: float) -> str:
        day = datetime.datetime.fromtimestamp(now, self._tz).strftime("%Y%m%d")
        return f"BCS-{day}-{await self.hall.store.incr(f'case:{day}'):04d}"

    async def file(self, principal: Principal, matter_id: str, description: str,
                   ticket: Ticket | None, now: float) -> Case:
        matter = self.hall.catalog.matters.get(matter_id)
        if matter is None:
            raise NotFoundError(f'matter "{matter_id}" does not exist')
        kiosk = principal.role == Role.KIOSK
        if ticket is not None:
            source = CaseSource.SESSION_END
        else:
            source = CaseSource.KIOSK if kiosk else CaseSource.APP
        case = Case.new(
            id=secrets.token_hex(8), number=await self._new_number(now), matter_id=matter.id,
            department_id=matter.department_id, source=source,
            reporter=None if kiosk else principal.participant_id, description=description,
            now=now, actor=principal.participant_id,
            ticket_id=ticket.id if ticket is not None else None, policy=self.book.policy,
        )
        await self.book.file(case)
        return case

    async def file_from_outcome(self, ticket: Ticket, reporter: str | None, now: float) -> Case:
        """A clerk closed a ticket as "unresolved": the case is filed for the resident
        (once: see :meth:`file_pending`)."""
        resident = reporter.partition(":")[2] if reporter else None
        return await self.file_pending(PendingCase(
            ticket_id=ticket.id, matter_id=ticket.matter_id,
            department_id=ticket.department_id, reason=ticket.outcome_reason,
            clerk_id=ticket.clerk_id, resident_id=resident,
            service_point_id=ticket.service_point_id, at=now))

    async def file_pending(self, pending: PendingCase) -> Case:
        """File the case an "unresolved" outcome made due, exactly once: its id comes from
        the ticket, so a second attempt (the first one committed, then its outbox entry was
        not acknowledged; or two processes at once) returns the case already filed."""
        try:
            return await self.book.get(pending.case_id)
        except NotFoundError:
            pass
        reporter = f"{Role.RESIDENT}:{pending.resident_id}" if pending.resident_id else None
        case = Case.new(
            id=pending.case_id, number=await self._new_number(pending.at),
            matter_id=pending.matter_id, department_id=pending.department_id,
            source=CaseSource.CLERK_OUTCOME, reporter=reporter,
            description=pending.reason or "办理未完成", now=pending.at,
            actor=f"clerk:{pending.clerk_id}" if pending.clerk_id else "hall",
            ticket_id=pending.ticket_id, policy=self.book.policy,
        )
        try:
            await self.book.file(case)
        except HallError as exc:
            if exc.code != "conflict":
                raise
            return await self.book.get(pending.case_id)  # filed meanwhile by someone else
        return case

    async def act(self, principal: Principal, case_id: str, action: str, *,
                  to: str | None, note: str | None, now: float) -> Case:
        case = await self.book.get(case_id)
        actor = principal.participant_id
        if action in STAFF_ACTIONS:
            self._check_staff(principal, case, action)
            if action == "assign":
                if not to:
                    raise ValidationError("assign needs a department or handler (to)")
                case.assign(to, actor=actor, now=now, note=note)
            elif action == "start":
                case.start(actor=actor, now=now, note=note)
            else:
                case.resolve(actor=actor, now=now, note=note or "")
        elif action in REPORTER_ACTIONS:
            if case.reporter is None or case.reporter != principal.participant_id:
                raise ForbiddenError("only the resident who reported it may do that")
            if action == "confirm":
                case.confirm(actor=actor, now=now, note=note)
            else:
                case.reopen(actor=actor, now=now, reason=note or "")
        else:
            raise ValidationError(f'unknown case action "{action}"')
        await self.book.save(case)
        return case

    def _check_staff(self, principal: Principal, case: Case, action: str) -> None:
        if principal.role == Role.SUPERVISOR:
            # A department supervisor acts on its departments' cases only (signaling.scope).
            scope_of(self.hall.catalog, principal).check_department(case.department_id,
                                                                    "this case")
            return
        if principal.role == Role.CLERK and action != "assign":
            profile = self.hall.catalog.clerks.get(principal.subject)
            mine = {principal.subject} | (set(profile.departments) if profile else set())
            if case.assignee in mine:
                return
        raise ForbiddenError(f'a {principal.role} may not {action} this case')

    async def mine(self, principal: Principal) -> list[Case]:
        return await self.book.for_reporter(principal.participant_id)

    async def sweep(self, now: float) -> list[Case]:
        """Apply every passed deadline; returns the cases escalated just now."""
        escalated = []
        for case in await self.book.due(now):
            if case.expire(now):
                escalated.append(case)
            await self.book.save(case)
        return escalated
