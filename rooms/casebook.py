"""Storage of 办不成事 cases in the records database (tables from migration version 2).

A case row holds the current state; its steps are append-only rows in ``hall_case_steps``.
:meth:`CaseBook.save` uses optimistic concurrency: the row's ``version`` must still be the one
the case was read at, otherwise someone else changed the case in between and the save raises
``HallError(code="conflict")`` -- the caller re-reads and retries the operation.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from rooms.cases import (
    DEFAULT_POLICY,
    Case,
    CasePolicy,
    CaseSource,
    CaseState,
    CaseStep,
    normalize_claim_code,
)
from rooms.errors import HallError, NotFoundError
from rooms.records import RecordsDB

logger = logging.getLogger("hall.cases")

_metadata = sa.MetaData()

# Query-side descriptions matching the latest migration (see rooms.migrations).
hall_cases = sa.Table(
    "hall_cases",
    _metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("number", sa.String(64), nullable=False, unique=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("matter_id", sa.String(64), nullable=False),
    sa.Column("department_id", sa.String(64), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("reporter", sa.String(64)),
    sa.Column("claim_code", sa.String(16), unique=True),
    sa.Column("ticket_id", sa.String(64)),
    sa.Column("description", sa.String(1000), nullable=False),
    sa.Column("assignee", sa.String(64)),
    sa.Column("deadline", sa.Double),
    sa.Column("overdue", sa.Boolean, nullable=False),
    sa.Column("escalated", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
)

hall_case_steps = sa.Table(
    "hall_case_steps",
    _metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("case_id", sa.String(64), sa.ForeignKey("hall_cases.id"), nullable=False),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("from_state", sa.String(16)),
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("note", sa.Text),
)

hall_prereviews = sa.Table(
    "hall_prereviews",
    _metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("ticket_id", sa.String(64)),
    sa.Column("matter_id", sa.String(64), nullable=False),
    sa.Column("department_id", sa.String(64), nullable=False),
    sa.Column("clerk_id", sa.String(64)),
    sa.Column("result", sa.String(32), nullable=False),
    sa.Column("items", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
)


def _case_values(case: Case) -> dict[str, Any]:
    updated_at = max((s.at for s in case.steps), default=case.created_at)
    return {
        "number": case.number,
        "state": case.state.value,
        "matter_id": case.matter_id,
        "department_id": case.department_id,
        "source": case.source.value,
        "reporter": case.reporter,
        "claim_code": case.claim_code,
        "ticket_id": case.ticket_id,
        "description": case.description,
        "assignee": case.assignee,
        "deadline": case.deadline,
        "overdue": case.overdue,
        "escalated": case.escalated,
        "created_at": case.created_at,
        "updated_at": updated_at,
    }


def _step_rows(case_id: str, steps: Sequence[CaseStep]) -> list[dict[str, Any]]:
    return [
        {
            "case_id": case_id,
            "at": s.at,
            "actor": s.actor,
            "action": s.action,
            "from_state": s.from_state.value if s.from_state is not None else None,
            "to_state": s.to_state.value,
            "note": s.note,
        }
        for s in steps
    ]


def _of_departments(departments: Collection[str] | None) -> list[sa.ColumnElement[bool]]:
    """The WHERE clause of a department filter: none for ``None`` (every department)."""
    if departments is None:
        return []
    return [hall_cases.c.department_id.in_(sorted(departments))]


def _row_to_step(row: sa.Row[Any]) -> CaseStep:
    return CaseStep(
        at=float(row.at),
        actor=row.actor,
        action=row.action,
        from_state=CaseState(row.from_state) if row.from_state is not None else None,
        to_state=CaseState(row.to_state),
        note=row.note,
    )


class CaseBook:
    """The cases in the records database. The database must be open (it migrates on open)."""

    def __init__(self, db: RecordsDB, *, policy: CasePolicy = DEFAULT_POLICY) -> None:
        self._db = db
        self._policy = policy

    @property
    def policy(self) -> CasePolicy:
        """The deadlines new cases get (and loaded cases are judged by)."""
        return self._policy

    # -- writing ---------------------------------------------------------------------------------
    async def file(self, case: Case) -> None:
        """Store a new case with all its steps; sets ``case.version`` to 1.

        A case id, number or claim code already stored raises ``HallError(code="conflict")``.
        """
        if case.version != 0:
            raise HallError(f"case {case.number} ({case.id}) is already filed", code="conflict")
        async def insert(conn: AsyncConnection) -> None:
            await conn.execute(
                hall_cases.insert().values(id=case.id, version=1, **_case_values(case))
            )
            if case.steps:
                await conn.execute(hall_case_steps.insert(), _step_rows(case.id, case.steps))

        try:
            await self._db.write(insert)
        except sa.exc.IntegrityError as exc:
            raise HallError(
                f"case {case.number} ({case.id}) clashes with a stored case "
                "(same id, number or claim code)",
                code="conflict",
            ) from exc
        case.version = 1

    async def save(self, case: Case) -> None:
        """Store the case's current state and its new steps; bumps ``case.version``.

        Raises ``HallError(code="conflict")`` if the stored case changed since it was read
        (its version moved on) and :class:`NotFoundError` if it was never filed.
        """
        if case.version == 0:
            raise NotFoundError(f"case {case.number} ({case.id}) was never filed")
        async def update(conn: AsyncConnection) -> None:
            stmt = (
                hall_cases.update()
                .where(hall_cases.c.id == case.id, hall_cases.c.version == case.version)
                .values(version=case.version + 1, **_case_values(case))
                .returning(hall_cases.c.version)
            )
            updated = (await conn.execute(stmt)).first()
            if updated is None:
                exists = await conn.scalar(
                    sa.select(hall_cases.c.version).where(hall_cases.c.id == case.id)
                )
                if exists is None:
                    raise NotFoundError(f"case {case.number} ({case.id}) does not exist")
                raise HallError(
                    f"case {case.number} ({case.id}) was changed by someone else "
                    f"(version {exists}, this copy has {case.version}); read it again",
                    code="conflict",
                )
            # The version check makes us the only writer of this case: the rows stored so far
            # are a prefix of case.steps (steps are only ever appended).
            stored = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(hall_case_steps)
                .where(hall_case_steps.c.case_id == case.id)
            )
            new_steps = case.steps[int(stored or 0) :]
            if new_steps:
                await conn.execute(hall_case_steps.insert(), _step_rows(case.id, new_steps))

        await self._db.write(update)
        case.version += 1

    # -- reading ---------------------------------------------------------------------------------
    async def get(self, case_id: str) -> Case:
        """The case with this id; :class:`NotFoundError` if there is none."""
        found = await self._select(hall_cases.c.id == case_id)
        if not found:
            raise NotFoundError(f"case {case_id} does not exist")
        return found[0]

    async def by_claim(self, claim_code: str) -> Case:
        """The anonymous case with this claim code (case and dashes ignored)."""
        code = normalize_claim_code(claim_code)
        found = await self._select(hall_cases.c.claim_code == code) if code else []
        if not found:
            raise NotFoundError("no case has this claim code")
        return found[0]

    async def for_reporter(self, reporter: str) -> list[Case]:
        """The cases this participant filed, oldest first."""
        return await self._select(hall_cases.c.reporter == reporter)

    async def due(self, now: float) -> list[Case]:
        """Cases whose deadline has passed and on which :meth:`Case.expire` will act: not
        closed and not already escalated for this deadline. Oldest deadline first."""
        return await self._select(
            hall_cases.c.deadline <= now,
            hall_cases.c.state != CaseState.CLOSED.value,
            hall_cases.c.escalated.is_(False),
            order_by=[hall_cases.c.deadline],
        )

    async def overdue(self, *, departments: Collection[str] | None = None) -> list[Case]:
        """Cases currently overdue (the supervisor's follow-up list), oldest deadline first;
        only those of ``departments`` if given (a department supervisor's)."""
        return await self._select(
            hall_cases.c.overdue.is_(True),
            hall_cases.c.state != CaseState.CLOSED.value,
            *_of_departments(departments),
            order_by=[hall_cases.c.deadline],
        )

    async def listing(self, *, state: CaseState | None = None, limit: int = 200,
                      departments: Collection[str] | None = None) -> list[Case]:
        """The supervisor's list: cases not closed (or in ``state``), overdue ones first, then
        by deadline (soonest first; cases without one last), at most ``limit``; only those
        of ``departments`` if given (filtered in the query, so ``limit`` counts theirs)."""
        where = (hall_cases.c.state == state.value if state is not None
                 else hall_cases.c.state != CaseState.CLOSED.value)
        return await self._select(
            where,
            *_of_departments(departments),
            order_by=[
                hall_cases.c.overdue.desc(),
                # "IS NULL" sorts false first on both SQLite and PostgreSQL, where NULLS LAST
                # is not spelled the same way everywhere.
                hall_cases.c.deadline.is_(None),
                hall_cases.c.deadline,
            ],
            limit=limit,
        )

    async def counts(self) -> dict[str, int]:
        """``open``: cases not closed; ``overdue``: those of them past their deadline."""
        per_department = (await self.department_counts()).values()
        return {name: sum(c[name] for c in per_department) for name in ("open", "overdue")}

    async def department_counts(self) -> dict[str, dict[str, int]]:
        """:meth:`counts` per department (departments without an open case are absent): one
        read serves every supervisor's wall, each summing its own departments."""
        overdue = sa.case((hall_cases.c.overdue.is_(True), 1), else_=0)
        query = (
            sa.select(hall_cases.c.department_id, sa.func.count(),
                      sa.func.coalesce(sa.func.sum(overdue), 0))
            .where(hall_cases.c.state != CaseState.CLOSED.value)
            .group_by(hall_cases.c.department_id)
        )
        engine, _ = self._db.engines
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {str(r[0]): {"open": int(r[1]), "overdue": int(r[2])} for r in rows}

    async def _select(
        self,
        *where: sa.ColumnElement[bool],
        order_by: Sequence[Any] = (),
        limit: int | None = None,
    ) -> list[Case]:
        engine, _ = self._db.engines
        query = (
            sa.select(hall_cases)
            .where(*where)
            .order_by(*order_by, hall_cases.c.created_at, hall_cases.c.id)
            .limit(limit)
        )
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            if not rows:
                return []
            ids = [r.id for r in rows]
            steps: dict[str, list[CaseStep]] = {i: [] for i in ids}
            step_query = (
                sa.select(hall_case_steps)
                .where(hall_case_steps.c.case_id.in_(ids))
                .order_by(hall_case_steps.c.id)
            )
            for step_row in await conn.execute(step_query):
                steps[step_row.case_id].append(_row_to_step(step_row))
        return [self._row_to_case(r, steps[r.id]) for r in rows]

    def _row_to_case(self, row: sa.Row[Any], steps: list[CaseStep]) -> Case:
        return Case(
            id=row.id,
            number=row.number,
            matter_id=row.matter_id,
            department_id=row.department_id,
            source=CaseSource(row.source),
            reporter=row.reporter,
            description=row.description,
            created_at=float(row.created_at),
            claim_code=row.claim_code,
            ticket_id=row.ticket_id,
            state=CaseState(row.state),
            assignee=row.assignee,
            deadline=float(row.deadline) if row.deadline is not None else None,
            overdue=bool(row.overdue),
            escalated=bool(row.escalated),
            steps=steps,
            version=int(row.version),
            policy=self._policy,
        )


__all__ = ["CaseBook", "hall_case_steps", "hall_cases", "hall_prereviews"]
