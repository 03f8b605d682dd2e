"""The hub's shared state: one contract, kept the same in memory and in a real Redis.

Every test of the contract runs on both :class:`MemoryHubState` and :class:`RedisHubState`
(a private redis-server, a key prefix per test). The cross-process tests run two
RedisHubStates with different process ids on one prefix: what two hall processes see.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import pytest

from rooms.errors import ForbiddenError, NotFoundError
from signaling.hub_state import OUTBOX_LIMIT, HubState, MemoryHubState, ResumeError
from signaling.identity import Principal, Role
from signaling.kiosks import DeviceReport
from signaling.redis_hub_state import RedisHubState
from tests.redisproc import RedisServer, drop_prefix, new_prefix

POINTS = ("XH-001", "XH-002")
ALICE = Principal(Role.RESIDENT, "alice", "爱丽丝")
CLERK = Principal(Role.CLERK, "clerk01", "王芳")
SUP = Principal(Role.SUPERVISOR, "sup", "李主任")
KIOSK = Principal(Role.KIOSK, "XH-001", "徐家汇 1", service_point_id="XH-001")



class Maker(Protocol):
    def __call__(self, process_id: str = ...) -> Awaitable[HubState]: ...



@pytest.fixture(params=["memory", "redis"])
async def make_state(request: pytest.FixtureRequest) -> AsyncIterator[Maker]:
    """States of the test's kind; Redis ones share one fresh prefix (one hall)."""
    opened: list[HubState] = []
    prefix = new_prefix()
    server: RedisServer | None = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")

    async def make(process_id: str = "p1") -> HubState:
        state: HubState
        if server is None:
            state = MemoryHubState(POINTS, process_id)
        else:
            state = RedisHubState(server.url, POINTS, prefix=prefix, process_id=process_id)
        await state.open()
        opened.append(state)
        return state

    yield make
    for state in opened:
        await state.close()
    if server is not None:
        drop_prefix(server.url, prefix)


async def test_messages_are_numbered_kept_and_replayed_in_order(make_state: Maker) -> None:
    """send numbers each message from 1; since() returns those after a seq, in order."""
    state = await make_state("p1")
    attached = await state.attach(ALICE, "sid-1")
    assert attached.seq == 0 and attached.replaced is None and not attached.was_away
    for n in range(3):
        sent = await state.send(ALICE.participant_id, "chat.message", {"n": n, "t": "你好"})
        assert sent == (n + 1, {"seq": n + 1, "n": n, "t": "你好"})
    assert await state.send(ALICE.participant_id, "empty", {}) == (4, {"seq": 4})
    replay = await state.since(ALICE.participant_id, 1)
    assert [(s, e) for s, e, _ in replay] == [(2, "chat.message"), (3, "chat.message"),
                                              (4, "empty")]
    assert replay[0][2] == {"seq": 2, "n": 1, "t": "你好"}
    with pytest.raises(ResumeError):
        await state.since(ALICE.participant_id, 9)  # ahead of the server


async def test_a_message_to_an_unknown_participant_is_dropped(make_state: Maker) -> None:
    """Nobody by that id: send answers None and keeps nothing."""
    state = await make_state()
    assert await state.send("resident:nobody", "x", {}) is None
    assert await state.record("resident:nobody") is None


async def test_the_outbox_keeps_the_last_messages_only(make_state: Maker) -> None:
    """Beyond the outbox limit the oldest go; a resume from before them is refused."""
    state = await make_state()
    await state.attach(ALICE, "sid-1")
    for n in range(OUTBOX_LIMIT + 5):
        await state.send(ALICE.participant_id, "m", {"n": n})
    assert len(await state.since(ALICE.participant_id, 5)) == OUTBOX_LIMIT
    with pytest.raises(ResumeError, match="too many"):
        await state.since(ALICE.participant_id, 4)


async def test_detach_starts_the_grace_and_attach_ends_it(make_state: Maker) -> None:
    """Away after detach (messages kept, not delivered); back within the grace: was_away."""
    state = await make_state()
    await state.attach(ALICE, "sid-1")
    assert await state.detach(ALICE.participant_id, "sid-other", 1.0, 100.0) is None
    record = await state.detach(ALICE.participant_id, "sid-1", 1.0, 100.0)
    assert record is not None and record.owner is None and record.sid is None
    assert await state.send(ALICE.participant_id, "m", {}) is None  # kept, nobody to emit to
    assert await state.graces_due(50.0) == []
    again = await state.attach(ALICE, "sid-2")
    assert again.was_away and again.seq == 1
    assert await state.graces_due(200.0) == []  # ended by the attach


async def test_a_grace_that_runs_out_is_claimed_once(make_state: Maker) -> None:
    """graces_due hands each expired participant to one caller; forget drops everything."""
    state = await make_state()
    await state.attach(ALICE, "sid-1")
    token = await state.issue_resume(ALICE.participant_id)
    await state.detach(ALICE.participant_id, "sid-1", 1.0, 10.0)
    assert await state.graces_due(11.0) == [ALICE.participant_id]
    assert await state.graces_due(12.0) == []
    await state.forget(ALICE.participant_id)
    assert await state.record(ALICE.participant_id) is None
    assert ALICE.participant_id not in await state.participant_ids()
    with pytest.raises(ResumeError):
        await state.redeem(token, ALICE.participant_id)


async def test_a_resume_token_works_once_and_only_the_newest(make_state: Maker) -> None:
    """redeem() accepts the last issued token; an older one is refused, and so is a used one
    once its successor was redeemed (the token it was used for is then dead)."""
    state = await make_state()
    await state.attach(ALICE, "sid-1")
    old = await state.issue_resume(ALICE.participant_id)
    new = await state.issue_resume(ALICE.participant_id)
    with pytest.raises(ResumeError):
        await state.redeem(old, ALICE.participant_id)
    await state.redeem(new, ALICE.participant_id)
    newer = await state.issue_resume(ALICE.participant_id, resumed=True)
    await state.redeem(newer, ALICE.participant_id)
    with pytest.raises(ResumeError):
        await state.redeem(new, ALICE.participant_id)


async def test_a_resume_token_stays_good_until_its_successor_is_redeemed(
        make_state: Maker) -> None:
    """A connection that resumed may never have received its welcome: the token it used is
    good again, which revokes the successor issued meanwhile (never two good successors)."""
    state = await make_state()
    await state.attach(ALICE, "sid-1")
    first = await state.issue_resume(ALICE.participant_id)
    await state.redeem(first, ALICE.participant_id)
    lost = await state.issue_resume(ALICE.participant_id, resumed=True)  # welcome lost
    await state.redeem(first, ALICE.participant_id)  # the client only has this one
    with pytest.raises(ResumeError):
        await state.redeem(lost, ALICE.participant_id)
    arrived = await state.issue_resume(ALICE.participant_id, resumed=True)
    await state.redeem(arrived, ALICE.participant_id)
    with pytest.raises(ResumeError):  # its successor was used: dead for good
        await state.redeem(first, ALICE.participant_id)
    await state.forget(ALICE.participant_id)
    with pytest.raises(ResumeError):
        await state.redeem(arrived, ALICE.participant_id)


async def test_an_acknowledged_welcome_retires_the_token_resumed_with(
        make_state: Maker) -> None:
    """resume_received(newest) kills the token the connection resumed with; an ack for a
    token that is no longer the newest changes nothing."""
    state = await make_state()
    await state.attach(ALICE, "sid-1")
    first = await state.issue_resume(ALICE.participant_id)
    await state.redeem(first, ALICE.participant_id)
    second = await state.issue_resume(ALICE.participant_id, resumed=True)
    await state.resume_received(ALICE.participant_id, "stale-" + "x" * 20)
    await state.resume_received(ALICE.participant_id, second)
    with pytest.raises(ResumeError):
        await state.redeem(first, ALICE.participant_id)
    await state.redeem(second, ALICE.participant_id)


async def test_a_resume_token_is_its_participants_only(make_state: Maker) -> None:
    """Presented for another participant, a token is refused and stays good for its own."""
    state = await make_state()
    await state.attach(ALICE, "sid-1")
    await state.attach(CLERK, "sid-2")
    token = await state.issue_resume(ALICE.participant_id)
    with pytest.raises(ResumeError):
        await state.redeem(token, CLERK.participant_id)
    with pytest.raises(ResumeError):
        await state.redeem("never-issued-" + "x" * 20, ALICE.participant_id)
    await state.redeem(token, ALICE.participant_id)


async def test_a_fresh_connection_retires_every_earlier_token(make_state: Maker) -> None:
    """A welcome that is not a resume: neither the newest token nor the one resumed with
    before stays good."""
    state = await make_state()
    await state.attach(ALICE, "sid-1")
    first = await state.issue_resume(ALICE.participant_id)
    await state.redeem(first, ALICE.participant_id)
    second = await state.issue_resume(ALICE.participant_id, resumed=True)
    fresh = await state.issue_resume(ALICE.participant_id)
    for old in (first, second):
        with pytest.raises(ResumeError):
            await state.redeem(old, ALICE.participant_id)
    await state.redeem(fresh, ALICE.participant_id)


async def test_tickets_of_a_participant(make_state: Maker) -> None:
    """set_ticket sets current and last; clear_ticket clears only the same current one."""
    state = await make_state()
    await state.attach(KIOSK, "sid-k")
    await state.set_ticket(KIOSK.participant_id, "T1")
    await state.clear_ticket(KIOSK.participant_id, "T0")
    record = await state.record(KIOSK.participant_id)
    assert record is not None and (record.ticket_id, record.last_ticket_id) == ("T1", "T1")
    assert record.principal == KIOSK
    await state.clear_ticket(KIOSK.participant_id, "T1")
    record = await state.record(KIOSK.participant_id)
    assert record is not None and (record.ticket_id, record.last_ticket_id) == (None, "T1")


async def test_a_session_opens_once_announces_once_and_closes_once(make_state: Maker) -> None:
    """session_open is idempotent; announce and close are won by one caller only."""
    state = await make_state()
    live = await state.session_open("T1", "resident:alice", "clerk:clerk01")
    again = await state.session_open("T1", "resident:other", "clerk:other")
    assert (again.resident, again.clerk) == (live.resident, live.clerk)
    assert [await state.session_announce("T1") for _ in range(2)] == [True, False]
    assert [s.id for s in await state.sessions_of("clerk:clerk01")] == ["T1"]
    await state.chat_add("T1", {"text": "一"})
    await state.note_add("T1", {"text": "note"})
    assert await state.chat("T1") == [{"text": "一"}]
    assert await state.notes("T1") == [{"text": "note"}]
    closed = await state.session_close("T1")
    assert closed is not None and closed.clerk == "clerk:clerk01"
    assert await state.session_close("T1") is None
    assert await state.session_find("T1") is None
    assert await state.sessions_all() == []
    assert await state.sessions_of("clerk:clerk01") == []
    assert await state.session_announce("T1") is False
    with pytest.raises(NotFoundError):
        await state.chat_add("T1", {"text": "late"})


async def test_monitors_join_and_leave(make_state: Maker) -> None:
    """A monitor is listed on the session and finds it; leaving twice is refused."""
    state = await make_state()
    await state.session_open("T1", "resident:alice", "clerk:clerk01")
    live = await state.monitor_add("T1", SUP.participant_id)
    assert live.monitors == {SUP.participant_id}
    assert [s.id for s in await state.sessions_of(SUP.participant_id)] == ["T1"]
    await state.monitor_remove("T1", SUP.participant_id)
    with pytest.raises(ForbiddenError):
        await state.monitor_remove("T1", SUP.participant_id)
    with pytest.raises(NotFoundError):
        await state.monitor_add("T9", SUP.participant_id)


async def test_ticket_owners(make_state: Maker) -> None:
    """owners() answers for the tickets that have one."""
    state = await make_state()
    await state.owner_set("T1", "resident:alice")
    await state.owner_set("T2", "kiosk:XH-001")
    assert await state.owners(["T1", "T2", "T3"]) == {"T1": "resident:alice",
                                                      "T2": "kiosk:XH-001"}
    await state.owner_drop("T1")
    assert await state.owner_of("T1") is None


async def test_kiosk_presence_and_health(make_state: Maker) -> None:
    """Presence reports changes only; a report is kept while the kiosk is offline."""
    state = await make_state()
    assert await state.kiosk_online("XH-001", False, 1.0) is False  # never seen
    assert await state.kiosk_online("XH-001", True, 2.0) is True
    assert await state.kiosk_online("XH-001", True, 3.0) is False
    assert await state.kiosk_online("XH-999", True, 3.0) is False  # not in the catalog
    report = DeviceReport("ok", "ok", "failed", "absent", detail="喇叭无声", agent="a/1")
    assert await state.kiosk_changes("XH-001", report) is True
    await state.kiosk_report("XH-001", report, 4.0)
    assert await state.kiosk_changes("XH-001", report) is False
    assert await state.kiosk_online("XH-001", False, 5.0) is True
    kiosks = {k.id: k for k in await state.kiosks_all()}
    assert set(kiosks) == set(POINTS)
    one = kiosks["XH-001"]
    assert (one.online, one.since, one.health_at) == (False, 5.0, 4.0)
    assert one.health is not None and one.health.failed == ["speaker"]
    assert one.health.detail == "喇叭无声"
    assert kiosks["XH-002"].since is None


# -- two processes on one Redis ----------------------------------------------------------------


class _Inbox:
    def __init__(self, state: HubState) -> None:
        self.messages: list[tuple[str, int, str, dict[str, Any]]] = []
        self.kicks: list[tuple[str, str]] = []
        self.arrived = asyncio.Event()
        state.on_remote = self._message
        state.on_kick = self._kick

    async def _message(self, pid: str, seq: int, event: str, payload: dict[str, Any]) -> None:
        self.messages.append((pid, seq, event, payload))
        self.arrived.set()

    async def _kick(self, pid: str, sid: str) -> None:
        self.kicks.append((pid, sid))
        self.arrived.set()

    async def wait(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not done():
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def two(redis_server: RedisServer) -> AsyncIterator[tuple[RedisHubState, RedisHubState]]:
    prefix = new_prefix()
    a = RedisHubState(redis_server.url, POINTS, prefix=prefix, process_id="hall-a")
    b = RedisHubState(redis_server.url, POINTS, prefix=prefix, process_id="hall-b")
    for state in (a, b):
        await state.open()
        await state.heartbeat(5.0, 0.0)
    await asyncio.sleep(0.2)  # both subscribed to their channels
    yield a, b
    for state in (a, b):
        await state.close()
    drop_prefix(redis_server.url, prefix)


async def test_a_message_goes_to_the_owning_process_only(
        two: tuple[RedisHubState, RedisHubState]) -> None:
    """Sent from process A to a participant held by B: A gets None, B's channel the message."""
    a, b = two
    inbox_a, inbox_b = _Inbox(a), _Inbox(b)
    await b.attach(ALICE, "sid-b")
    assert await a.send(ALICE.participant_id, "chat.message", {"text": "hi"}) is None
    await inbox_b.wait(lambda: len(inbox_b.messages) == 1)
    assert inbox_b.messages == [(ALICE.participant_id, 1, "chat.message",
                                 {"seq": 1, "text": "hi"})]
    assert await b.send(ALICE.participant_id, "x", {}) == (2, {"seq": 2})  # local: no publish
    await asyncio.sleep(0.1)
    assert inbox_a.messages == [] and len(inbox_b.messages) == 1


async def test_connecting_elsewhere_kicks_the_old_socket(
        two: tuple[RedisHubState, RedisHubState]) -> None:
    """The participant attaches on B while A holds it: A is asked to drop that socket."""
    a, b = two
    inbox_a = _Inbox(a)
    await a.attach(CLERK, "sid-a")
    attached = await b.attach(CLERK, "sid-b")
    assert attached.replaced == ("hall-a", "sid-a")
    await inbox_a.wait(lambda: bool(inbox_a.kicks))
    assert inbox_a.kicks == [(CLERK.participant_id, "sid-a")]
    # A's late disconnect of its old socket changes nothing: B holds the participant.
    assert await a.detach(CLERK.participant_id, "sid-a", 1.0, 99.0) is None
    record = await b.record(CLERK.participant_id)
    assert record is not None and (record.owner, record.sid) == ("hall-b", "sid-b")


async def test_participants_of_a_dead_process_are_claimed_once(
        two: tuple[RedisHubState, RedisHubState]) -> None:
    """A process whose heartbeat expired: its participants go away, grace started, once."""
    a, b = two
    await a.attach(ALICE, "sid-a")
    await a.attach(KIOSK, "sid-k")
    await b.attach(CLERK, "sid-b")
    await a.heartbeat(5.0, 100.0)   # alive until 105
    await b.heartbeat(5.0, 1000.0)
    assert await b.orphans(104.0, 200.0) == []
    claimed = await b.orphans(106.0, 200.0)
    assert sorted(r.id for r in claimed) == [KIOSK.participant_id, ALICE.participant_id]
    assert all(r.owner is None for r in claimed)
    assert await a.orphans(107.0, 200.0) == [] and await b.orphans(108.0, 200.0) == []
    assert sorted(await b.graces_due(201.0)) == [KIOSK.participant_id, ALICE.participant_id]
    # A comes back: it learns it was declared dead.
    assert await a.heartbeat(5.0, 300.0) is False
    assert await a.heartbeat(5.0, 301.0) is True


async def test_a_restarted_process_with_the_same_id_releases_its_predecessors_participants(
        two: tuple[RedisHubState, RedisHubState]) -> None:
    """What a dead process with this id held is handed to the resume grace at start."""
    a, b = two
    await a.attach(ALICE, "sid-a")
    await b.attach(CLERK, "sid-b")
    released = await a.release_own(10.0, 40.0)
    assert [r.id for r in released] == [ALICE.participant_id]
    record = await a.record(ALICE.participant_id)
    assert record is not None and record.owner is None
    assert await a.graces_due(41.0) == [ALICE.participant_id]
    clerk = await b.record(CLERK.participant_id)
    assert clerk is not None and clerk.owner == "hall-b"
