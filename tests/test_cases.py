"""办不成事 cases: the lifecycle state machine and the CaseBook on SQLite and PostgreSQL.

Database tests run twice, against a SQLite file in ``tmp_path`` and against a throw-away
PostgreSQL database on the server named by ``HALL_TEST_DATABASE_URL`` (dropped afterwards).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from rooms.casebook import CaseBook
from rooms.cases import (
    CLAIM_ALPHABET,
    SYSTEM_ACTOR,
    TRANSITIONS,
    Case,
    CasePolicy,
    CaseSource,
    CaseState,
    normalize_claim_code,
)
from rooms.clock import ManualClock
from rooms.errors import HallError, InvalidStateError, NotFoundError, ValidationError
from rooms.migrations import LATEST_VERSION, MIGRATIONS, migrate, schema_migrations
from rooms.records import RecordsDB

HOUR = 3600.0
DAY = 24 * HOUR
POLICY = CasePolicy()

# -- fixtures (records_url and db come from conftest.py) ---------------------------------------


@pytest.fixture
def book(db: RecordsDB) -> CaseBook:
    return CaseBook(db)


def make_case(
    n: int = 1,
    *,
    now: float = 1_700_000_000.0,
    reporter: str | None = "P-resident-1",
    source: CaseSource = CaseSource.APP,
    **extra: Any,
) -> Case:
    return Case.new(
        id=f"case-{n}",
        number=f"BCS-20261124-{n:04d}",
        matter_id="M-户籍-01",
        department_id="公安分局",
        source=source,
        reporter=reporter,
        description="材料齐全但窗口说系统不通，办不成",
        now=now,
        **extra,
    )


def state_of(case: Case) -> CaseState:
    """The case's state, read through a call so mypy does not keep an earlier narrowing."""
    return case.state


def drive(case: Case, target: CaseState, clock: ManualClock) -> None:
    """Move a fresh case along the happy path until it reaches ``target``."""
    path: list[tuple[CaseState, Any]] = [
        (CaseState.ASSIGNED, lambda: case.assign("公安分局", actor="sup-1", now=clock.now())),
        (CaseState.IN_PROGRESS, lambda: case.start(actor="h-7", now=clock.now())),
        (CaseState.RESOLVED, lambda: case.resolve(actor="h-7", now=clock.now(), note="已办结")),
        (CaseState.CLOSED, lambda: case.confirm(actor="P-resident-1", now=clock.now())),
    ]
    for state, step in path:
        if case.state == target:
            return
        clock.advance(HOUR)
        step()
        assert case.state == state
    assert case.state == target


# -- state machine ----------------------------------------------------------------------------


def test_full_lifecycle_records_who_and_when() -> None:
    """open → assigned → in_progress → resolved → closed, each step naming actor and time."""
    clock = ManualClock()
    case = make_case(now=clock.now())
    assert case.state == CaseState.OPEN
    assert case.deadline == clock.now() + POLICY.assign_within_s
    drive(case, CaseState.CLOSED, clock)
    t0 = 1_700_000_000.0
    assert [(s.at, s.actor, s.action, s.from_state, s.to_state) for s in case.steps] == [
        (t0, "P-resident-1", "file", None, CaseState.OPEN),
        (t0 + HOUR, "sup-1", "assign", CaseState.OPEN, CaseState.ASSIGNED),
        (t0 + 2 * HOUR, "h-7", "start", CaseState.ASSIGNED, CaseState.IN_PROGRESS),
        (t0 + 3 * HOUR, "h-7", "resolve", CaseState.IN_PROGRESS, CaseState.RESOLVED),
        (t0 + 4 * HOUR, "P-resident-1", "confirm", CaseState.RESOLVED, CaseState.CLOSED),
    ]
    assert case.steps[3].note == "已办结"
    assert case.assignee == "公安分局"
    assert case.deadline is None
    assert case.closed_at == t0 + 4 * HOUR


def test_reassign_and_take_back_from_in_progress() -> None:
    """A case can be reassigned while assigned and sent back to assigned from in_progress."""
    clock = ManualClock()
    case = make_case(now=clock.now())
    drive(case, CaseState.IN_PROGRESS, clock)
    case.assign("民政局", actor="sup-1", now=clock.advance(HOUR), note="转民政")
    case.assign("民政局-张三", actor="sup-1", now=clock.advance(HOUR))
    assert case.state == CaseState.ASSIGNED
    assert case.assignee == "民政局-张三"
    assert [s.action for s in case.steps][-2:] == ["assign", "assign"]
    assert case.steps[-2].note == "转民政"


def test_transition_table_matches_operations() -> None:
    """Every state has an entry in TRANSITIONS; only closed has no deadline."""
    assert set(TRANSITIONS) == set(CaseState)
    for state in CaseState:
        has_deadline = POLICY.deadline_for(state, 0.0) is not None
        assert has_deadline == (state != CaseState.CLOSED)


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (CaseState.OPEN, "start"),
        (CaseState.OPEN, "resolve"),
        (CaseState.OPEN, "confirm"),
        (CaseState.OPEN, "reopen"),
        (CaseState.ASSIGNED, "resolve"),
        (CaseState.ASSIGNED, "confirm"),
        (CaseState.ASSIGNED, "reopen"),
        (CaseState.IN_PROGRESS, "start"),
        (CaseState.IN_PROGRESS, "confirm"),
        (CaseState.IN_PROGRESS, "reopen"),
        (CaseState.RESOLVED, "assign"),
        (CaseState.RESOLVED, "start"),
        (CaseState.RESOLVED, "resolve"),
        (CaseState.CLOSED, "assign"),
        (CaseState.CLOSED, "start"),
        (CaseState.CLOSED, "resolve"),
        (CaseState.CLOSED, "confirm"),
        (CaseState.REOPENED, "resolve"),
        (CaseState.REOPENED, "confirm"),
        (CaseState.REOPENED, "reopen"),
    ],
)
def test_illegal_transitions_name_the_state(state: CaseState, action: str) -> None:
    """Each operation not allowed in a state raises InvalidStateError naming that state."""
    clock = ManualClock()
    case = make_case(now=clock.now())
    if state == CaseState.REOPENED:
        drive(case, CaseState.RESOLVED, clock)
        case.reopen(actor="P-resident-1", now=clock.advance(HOUR), reason="没解决")
    else:
        drive(case, state, clock)
    steps_before = list(case.steps)
    now = clock.advance(HOUR)
    calls = {
        "assign": lambda: case.assign("x", actor="a", now=now),
        "start": lambda: case.start(actor="a", now=now),
        "resolve": lambda: case.resolve(actor="a", now=now, note="n"),
        "confirm": lambda: case.confirm(actor="a", now=now),
        "reopen": lambda: case.reopen(actor="a", now=now, reason="r"),
    }
    with pytest.raises(InvalidStateError) as info:
        calls[action]()
    assert f'in state "{state}"' in info.value.message
    assert case.number in info.value.message
    assert info.value.code == "invalid_state"
    assert case.state == state
    assert case.steps == steps_before


def test_set_state_rejects_transitions_outside_the_table() -> None:
    """set_state itself refuses a move not in TRANSITIONS, naming both states."""
    case = make_case()
    with pytest.raises(InvalidStateError, match='from state "open" to "closed"'):
        case.set_state(CaseState.CLOSED, 0.0)


def test_reopen_requires_a_reason() -> None:
    """Reopening without a (non-blank) reason raises ValidationError and changes nothing."""
    clock = ManualClock()
    case = make_case(now=clock.now())
    drive(case, CaseState.RESOLVED, clock)
    for reason in ("", "   "):
        with pytest.raises(ValidationError):
            case.reopen(actor="P-resident-1", now=clock.now(), reason=reason)
    assert state_of(case) == CaseState.RESOLVED
    case.reopen(actor="P-resident-1", now=clock.advance(HOUR), reason="  还是办不成  ")
    assert state_of(case) == CaseState.REOPENED
    assert case.steps[-1].note == "还是办不成"
    assert case.deadline == clock.now() + POLICY.reassign_within_s
    case.start(actor="h-7", now=clock.advance(HOUR))  # the same handler picks it up again
    assert case.state == CaseState.IN_PROGRESS


def test_resolve_requires_a_note_and_description_is_bounded() -> None:
    """resolve needs a note; a description must be 1..1000 characters."""
    clock = ManualClock()
    case = make_case(now=clock.now())
    drive(case, CaseState.IN_PROGRESS, clock)
    with pytest.raises(ValidationError):
        case.resolve(actor="h-7", now=clock.now(), note=" ")
    assert case.state == CaseState.IN_PROGRESS
    with pytest.raises(ValidationError):
        Case.new(
            id="c",
            number="n",
            matter_id="m",
            department_id="d",
            source=CaseSource.APP,
            reporter="p",
            description=" ",
            now=0.0,
        )
    ok = Case.new(
        id="c",
        number="n",
        matter_id="m",
        department_id="d",
        source=CaseSource.APP,
        reporter="p",
        description="字" * 1000,
        now=0.0,
    )
    assert len(ok.description) == 1000
    with pytest.raises(ValidationError):
        Case.new(
            id="c",
            number="n",
            matter_id="m",
            department_id="d",
            source=CaseSource.APP,
            reporter="p",
            description="字" * 1001,
            now=0.0,
        )


def test_closed_case_reopens_only_within_window() -> None:
    """A closed case can be reopened within reopen_window_s of closing, not after."""
    clock = ManualClock()
    case = make_case(now=clock.now())
    drive(case, CaseState.CLOSED, clock)
    late = make_case(2, now=clock.now())
    drive(late, CaseState.CLOSED, clock)
    assert case.closed_at is not None and late.closed_at is not None
    case.reopen(
        actor="P-resident-1", now=case.closed_at + POLICY.reopen_window_s, reason="又出问题"
    )
    assert case.state == CaseState.REOPENED
    with pytest.raises(InvalidStateError, match=r'state "closed".*reopen window'):
        late.reopen(
            actor="P-resident-1", now=late.closed_at + POLICY.reopen_window_s + 1, reason="太晚了"
        )
    assert late.state == CaseState.CLOSED


def test_deadlines_per_state() -> None:
    """Each transition sets the deadline from the policy, counted from the transition."""
    policy = CasePolicy(
        assign_within_s=10,
        start_within_s=20,
        resolve_within_s=30,
        confirm_within_s=40,
        reassign_within_s=50,
    )
    case = make_case(now=1000.0, policy=policy)
    assert case.deadline == 1010.0
    case.assign("d", actor="s", now=1005.0)
    assert case.deadline == 1025.0
    case.start(actor="h", now=1006.0)
    assert case.deadline == 1036.0
    case.resolve(actor="h", now=1007.0, note="ok")
    assert case.deadline == 1047.0
    case.reopen(actor="p", now=1008.0, reason="no")
    assert case.deadline == 1058.0
    with pytest.raises(ValueError):
        CasePolicy(resolve_within_s=0)


def test_expiry_marks_overdue_and_escalates_once() -> None:
    """A passed deadline makes the case overdue and escalates it once; a transition resets."""
    clock = ManualClock()
    case = make_case(now=clock.now())
    assert case.expire(clock.advance(POLICY.assign_within_s - 1)) is False
    assert not case.overdue
    assert case.expire(clock.advance(1)) is True
    assert case.overdue and case.escalated
    step = case.steps[-1]
    assert (step.actor, step.action, step.from_state, step.to_state) == (
        SYSTEM_ACTOR,
        "escalate",
        CaseState.OPEN,
        CaseState.OPEN,
    )
    assert step.at == clock.now()
    assert case.expire(clock.advance(DAY)) is False  # only once
    assert [s.action for s in case.steps].count("escalate") == 1
    assert case.state == CaseState.OPEN

    case.assign("公安分局", actor="sup-1", now=clock.advance(HOUR))
    assert not case.overdue and not case.escalated  # the new deadline is not missed yet
    case.start(actor="h-7", now=clock.advance(HOUR))
    assert case.expire(clock.advance(POLICY.resolve_within_s)) is True
    assert case.state == CaseState.IN_PROGRESS and case.overdue
    assert [s.action for s in case.steps].count("escalate") == 2


def test_resolved_case_auto_closes_after_deadline() -> None:
    """A resolved case the resident neither confirms nor reopens is closed by the system."""
    clock = ManualClock()
    case = make_case(now=clock.now())
    drive(case, CaseState.RESOLVED, clock)
    assert case.expire(clock.advance(POLICY.confirm_within_s - 1)) is False
    assert state_of(case) == CaseState.RESOLVED
    assert case.expire(clock.advance(1)) is False
    assert state_of(case) == CaseState.CLOSED
    assert not case.escalated and not case.overdue
    last = case.steps[-1]
    assert (last.actor, last.action, last.at) == (SYSTEM_ACTOR, "auto_close", clock.now())
    assert case.expire(clock.advance(DAY)) is False  # closed: nothing more happens
    assert case.steps[-1] is last


def test_anonymous_kiosk_case_gets_claim_code() -> None:
    """An anonymous kiosk report gets an 8-character claim code; a named one does not."""
    anon = make_case(reporter=None, source=CaseSource.KIOSK)
    assert anon.claim_code is not None and len(anon.claim_code) == 8
    assert set(anon.claim_code) <= set(CLAIM_ALPHABET)
    assert anon.steps[0].actor == "kiosk"
    assert make_case().claim_code is None
    clerk = make_case(2, source=CaseSource.CLERK_OUTCOME, actor="C0007", ticket_id="T1")
    assert clerk.steps[0].actor == "C0007" and clerk.ticket_id == "T1"
    assert normalize_claim_code(" ab-cd 2345 ") == "ABCD2345"


# -- storage ----------------------------------------------------------------------------------


async def test_casebook_round_trip(book: CaseBook) -> None:
    """A filed and updated case, steps and Chinese text included, reads back exactly."""
    clock = ManualClock()
    case = make_case(now=clock.now(), ticket_id="T000042")
    await book.file(case)
    assert case.version == 1
    assert await book.get(case.id) == case
    drive(case, CaseState.RESOLVED, clock)
    await book.save(case)
    case.reopen(actor="P-resident-1", now=clock.advance(HOUR), reason="证明还是开不出来")
    await book.save(case)
    back = await book.get(case.id)
    assert back == case
    assert back.version == 3
    assert [s.action for s in back.steps] == ["file", "assign", "start", "resolve", "reopen"]
    with pytest.raises(NotFoundError):
        await book.get("nope")


async def test_file_twice_or_same_number_conflicts(book: CaseBook) -> None:
    """Filing a case id or number already stored raises conflict."""
    await book.file(make_case(1))
    with pytest.raises(HallError) as info:
        await book.file(make_case(1))
    assert info.value.code == "conflict"
    other = make_case(2)
    other.number = make_case(1).number
    with pytest.raises(HallError) as info:
        await book.file(other)
    assert info.value.code == "conflict"


async def test_stale_save_conflicts(book: CaseBook) -> None:
    """Two copies read at the same version: the second save raises conflict, nothing lost."""
    clock = ManualClock()
    await book.file(make_case(now=clock.now()))
    a = await book.get("case-1")
    b = await book.get("case-1")
    a.assign("公安分局", actor="sup-1", now=clock.advance(HOUR))
    await book.save(a)
    b.assign("民政局", actor="sup-2", now=clock.advance(HOUR))
    with pytest.raises(HallError) as info:
        await book.save(b)
    assert info.value.code == "conflict"
    stored = await book.get("case-1")
    assert stored.assignee == "公安分局"
    assert [s.actor for s in stored.steps] == ["P-resident-1", "sup-1"]
    fresh = await book.get("case-1")  # re-read and retry works
    fresh.assign("民政局", actor="sup-2", now=clock.advance(HOUR))
    await book.save(fresh)
    assert (await book.get("case-1")).assignee == "民政局"


async def test_concurrent_saves_one_wins(book: CaseBook) -> None:
    """Racing saves of the same version: exactly one succeeds, the others conflict."""
    await book.file(make_case())
    copies = [await book.get("case-1") for _ in range(4)]
    for i, c in enumerate(copies):
        c.assign(f"dept-{i}", actor=f"sup-{i}", now=1_700_000_100.0 + i)
    results = await asyncio.gather(*(book.save(c) for c in copies), return_exceptions=True)
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, HallError) and r.code == "conflict" for r in results if r)
    assert len((await book.get("case-1")).steps) == 2


async def test_resident_sees_only_own_cases(book: CaseBook) -> None:
    """for_reporter returns one's own cases only; a claim code finds just that anonymous case."""
    mine = [make_case(1, now=1.0), make_case(2, now=2.0)]
    theirs = make_case(3, reporter="P-other")
    anon = make_case(4, reporter=None, source=CaseSource.KIOSK)
    for c in [*mine, theirs, anon]:
        await book.file(c)
    assert [c.id for c in await book.for_reporter("P-resident-1")] == ["case-1", "case-2"]
    assert [c.id for c in await book.for_reporter("P-other")] == ["case-3"]
    assert await book.for_reporter("P-nobody") == []
    assert anon.claim_code is not None
    found = await book.by_claim(anon.claim_code.lower())
    assert found == anon
    assert found.reporter is None
    with pytest.raises(NotFoundError):
        await book.by_claim("ZZZZZZZZ" if anon.claim_code != "ZZZZZZZZ" else "YYYYYYYY")
    with pytest.raises(NotFoundError):
        await book.by_claim("")


async def test_due_and_overdue_queries(book: CaseBook) -> None:
    """due() lists passed deadlines not yet acted on; after expiry overdue() lists them."""
    clock = ManualClock()
    t0 = clock.now()
    late = make_case(1, now=t0)
    resolved = make_case(2, now=t0)
    drive(resolved, CaseState.RESOLVED, clock)
    closed = make_case(3, now=t0)
    drive(closed, CaseState.CLOSED, clock)
    fresh = make_case(4, now=t0 + 5 * DAY)
    for c in (late, resolved, closed, fresh):
        await book.file(c)
    assert await book.due(t0 + HOUR) == []
    now = t0 + 10 * DAY
    due = await book.due(now)
    assert [c.id for c in due] == ["case-1", "case-4", "case-2"]  # by deadline
    escalated = []
    for c in due:
        if c.expire(now):
            escalated.append(c.id)
        await book.save(c)
    assert escalated == ["case-1", "case-4"]
    assert await book.due(now) == []
    assert [c.id for c in await book.overdue()] == ["case-1", "case-4"]
    assert (await book.get("case-2")).state == CaseState.CLOSED
    back = await book.get("case-1")
    assert back.overdue and back.escalated and back.steps[-1].action == "escalate"


# -- migrations -------------------------------------------------------------------------------


def _tables(sync_conn: Any) -> set[str]:
    return set(sa.inspect(sync_conn).get_table_names())


async def test_migration_v2_creates_tables_and_is_idempotent(
    db: RecordsDB, records_url: str
) -> None:
    """open() reaches version 2 with the case and pre-review tables; migrating again is a no-op."""
    assert LATEST_VERSION >= 2
    assert await db.schema_version() == LATEST_VERSION
    await CaseBook(db).file(make_case())
    engine = create_async_engine(records_url)
    try:
        async with engine.connect() as conn:
            assert await migrate(conn) == LATEST_VERSION
            assert await migrate(conn) == LATEST_VERSION
            tables = await conn.run_sync(_tables)
            versions = (await conn.execute(sa.select(schema_migrations.c.version))).all()
            await conn.execute(
                sa.text(
                    "INSERT INTO hall_prereviews "
                    "(id, ticket_id, matter_id, department_id, clerk_id, result, items, "
                    "created_at) VALUES ('pr1', 'T1', 'M1', 'D1', 'C1', 'passed', '[]', 1.0)"
                )
            )
            await conn.commit()
        again = RecordsDB(records_url)
        await again.open()
        try:
            assert await again.schema_version() == LATEST_VERSION
            assert (await CaseBook(again).get("case-1")).number == "BCS-20261124-0001"
        finally:
            await again.close()
    finally:
        await engine.dispose()
    assert {"hall_events", "hall_cases", "hall_case_steps", "hall_prereviews"} <= tables
    assert sorted(v[0] for v in versions) == [m.version for m in MIGRATIONS]


async def test_upgrade_from_version_1_keeps_events(records_url: str) -> None:
    """A database left at version 1 is upgraded to 2 on open, its event log untouched."""
    parsed = make_url(records_url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(records_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(schema_migrations.metadata.create_all)
            await MIGRATIONS[0].upgrade(conn)
            await conn.execute(
                schema_migrations.insert().values(version=1, description="v1", applied_at=0.0)
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO hall_events (seq, kind, at, data) "
                    "VALUES (1, 'enter_queue', 1.0, '{}')"
                )
            )
            assert "hall_cases" not in await conn.run_sync(_tables)
    finally:
        await engine.dispose()
    records = RecordsDB(records_url)
    await records.open()
    try:
        assert await records.schema_version() == LATEST_VERSION
        assert await records.count() == 1
        book = CaseBook(records)
        await book.file(make_case())
        assert (await book.get("case-1")).state == CaseState.OPEN
    finally:
        await records.close()
