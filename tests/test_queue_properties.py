"""Property-based tests: random sequences of every command and timer keep the queue sound.

Run once per store backend (``[memory]``, ``[redis]``). On Redis every store call is a round trip
and each example opens a store of its own, so it runs fewer examples (see SETTINGS).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from rooms.clerks import ON_DUTY_STATES, ClerkState
from rooms.errors import HallError
from rooms.events import EventKind
from rooms.hall import Unstaffed
from rooms.policy import QueuePolicy
from rooms.tickets import PriorityReason, TicketState
from tests.hallkit import Rig, StoreFactory, make_rig

T = TypeVar("T")

MATTERS = ["residence", "employment", "medical"]
CLERKS = ["c1", "c2", "c3", "c4"]
OUTCOMES = ["resolved", "pre_review_passed", "unresolved"]
FINAL_EVENT = {
    TicketState.DONE: EventKind.DONE,
    TicketState.ABANDONED: EventKind.ABANDON,
    TicketState.TIMED_OUT: EventKind.TIMEOUT,
}


class QueueMachine(RuleBasedStateMachine):
    def __init__(self, store_factory: StoreFactory) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        policy = QueuePolicy(offer_timeout_s=15, max_missed_offers=2, wrapup_s=30,
                             abandon_grace_s=20, priority_credit_s=120, max_wait_s=900,
                             decline_cooldown_s=10)
        self.rig: Rig = self.run(make_rig(policy, store_factory=store_factory))
        self.tickets: list[str] = []
        self.order: dict[str, list[str]] = {}  # queue key -> ticket ids in order, last step
        self.shown: dict[str, int] = {}  # ticket id -> position shown last
        self.actual: dict[str, int] = {}  # ticket id -> actual rank + 1, last step

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.rig.store.close())
        finally:
            self.loop.close()

    def attempt(self, coro: Coroutine[Any, Any, object]) -> None:
        """Run a command; refusals (HallError) are legal outcomes of random input."""
        with contextlib.suppress(HallError):
            self.run(coro)

    def pick(self, index: int) -> str | None:
        return self.tickets[index % len(self.tickets)] if self.tickets else None

    # ------------------------------------------------------------------ rules
    @rule(matter=st.sampled_from(MATTERS),
          priority=st.sampled_from([None, None, PriorityReason.ELDERLY,
                                    PriorityReason.DISABLED]),
          callback=st.booleans())
    def join(self, matter: str, priority: PriorityReason | None, callback: bool) -> None:
        try:
            ticket = self.run(self.rig.hall.join(
                matter, priority=priority,
                when_unstaffed=Unstaffed.CALLBACK if callback else Unstaffed.WAIT,
                callback_contact="13900000000" if callback else None,
            ))
        except HallError as err:
            assert err.code == "queue_full"
            return
        self.tickets.append(ticket.id)

    @rule(index=st.integers(0, 10_000))
    def leave(self, index: int) -> None:
        if (tid := self.pick(index)) is not None:
            self.attempt(self.rig.hall.leave(tid))

    @rule(index=st.integers(0, 10_000), back=st.booleans())
    def disconnect(self, index: int, back: bool) -> None:
        if (tid := self.pick(index)) is not None:
            self.attempt(self.rig.hall.resident_disconnected(tid))
            if back:
                self.attempt(self.rig.hall.resident_reconnected(tid))

    @rule(clerk=st.sampled_from(CLERKS))
    def login(self, clerk: str) -> None:
        self.attempt(self.rig.hall.login(clerk))

    @rule(clerk=st.sampled_from(CLERKS))
    def logout(self, clerk: str) -> None:
        self.attempt(self.rig.hall.logout(clerk))

    @rule(clerk=st.sampled_from(CLERKS), back=st.booleans())
    def take_break(self, clerk: str, back: bool) -> None:
        self.attempt(self.rig.hall.set_break(clerk, "tea"))
        if back:
            self.attempt(self.rig.hall.set_available(clerk))

    @rule(clerk=st.sampled_from(CLERKS))
    def back_from_break(self, clerk: str) -> None:
        self.attempt(self.rig.hall.set_available(clerk))

    @rule(clerk=st.sampled_from(CLERKS), index=st.integers(0, 10_000))
    def accept(self, clerk: str, index: int) -> None:
        held = self.run(self.rig.hall.get_clerk(clerk)).ticket_id
        target = held if held is not None and index % 4 else self.pick(index)
        if target is not None:
            self.attempt(self.rig.hall.accept(clerk, target))

    @rule(clerk=st.sampled_from(CLERKS))
    def decline(self, clerk: str) -> None:
        held = self.run(self.rig.hall.get_clerk(clerk)).ticket_id
        if held is not None:
            self.attempt(self.rig.hall.decline(clerk, held))

    @rule(clerk=st.sampled_from(CLERKS))
    def end_session(self, clerk: str) -> None:
        held = self.run(self.rig.hall.get_clerk(clerk)).ticket_id
        if held is not None:
            self.attempt(self.rig.hall.end_session(clerk, held))

    @rule(clerk=st.sampled_from(CLERKS), outcome=st.sampled_from(OUTCOMES))
    def finish(self, clerk: str, outcome: str) -> None:
        self.attempt(self.rig.hall.finish_wrapup(clerk, outcome, "原因"))

    @rule(clerk=st.sampled_from(CLERKS), to=st.sampled_from([*MATTERS, "c1", "c2", "c4"]))
    def transfer(self, clerk: str, to: str) -> None:
        held = self.run(self.rig.hall.get_clerk(clerk)).ticket_id
        if held is None:
            return
        if to in MATTERS:
            self.attempt(self.rig.hall.transfer(clerk, held, to_matter=to, allow_wait=True))
        else:
            self.attempt(self.rig.hall.transfer(clerk, held, to_clerk=to))

    @rule(clerk=st.sampled_from(CLERKS))
    def clerk_lost(self, clerk: str) -> None:
        self.attempt(self.rig.hall.clerk_disconnected(clerk))

    @rule(seconds=st.sampled_from([1, 5, 10, 15, 20, 30, 120, 400]))
    def time_passes(self, seconds: int) -> None:
        self.run(self.rig.advance(seconds))

    # ------------------------------------------------------------------ invariants
    @invariant()
    def nobody_is_double_assigned(self) -> None:
        """A ticket is held by at most one clerk, a clerk holds at most one ticket, and
        both sides agree."""
        hall = self.rig.hall
        holders: dict[str, str] = {}
        for clerk_id in CLERKS:
            clerk = self.run(hall.get_clerk(clerk_id))
            if clerk.state in (ClerkState.OFFERED, ClerkState.IN_SESSION):
                assert clerk.ticket_id is not None
                assert clerk.ticket_id not in holders, "ticket held by two clerks"
                holders[clerk.ticket_id] = clerk_id
                ticket = self.run(hall.get_ticket(clerk.ticket_id))
                want = (TicketState.OFFERED if clerk.state == ClerkState.OFFERED
                        else TicketState.IN_SESSION)
                assert ticket.state == want and ticket.clerk_id == clerk_id
        for tid in self.tickets:
            ticket = self.run(hall.get_ticket(tid))
            if ticket.state in (TicketState.OFFERED, TicketState.IN_SESSION):
                assert holders.get(tid) == ticket.clerk_id

    @invariant()
    def nobody_moves_backwards(self) -> None:
        """Order never flips between two queued tickets; a resident's actual position grows
        only by arrivals placed ahead (priority, re-queue, transfer); the shown one never."""
        hall, store = self.rig.hall, self.rig.store
        now_order: dict[str, list[str]] = {}
        for tid in self.tickets:
            ticket = self.run(hall.get_ticket(tid))
            if ticket.state in (TicketState.WAITING, TicketState.TRANSFERRED,
                                TicketState.OFFERED):
                now_order.setdefault(ticket.queue_key, [])
        for key in now_order:
            now_order[key] = self.run(store.queue_range(key, 0, 10_000))
        for key, ids in now_order.items():
            before = [t for t in self.order.get(key, []) if t in ids]
            kept = [t for t in ids if t in before]
            assert kept == before, f"order flipped in {key}"
            seen_before = set(self.order.get(key, []))
            for rank, tid in enumerate(ids):
                if tid in self.actual and tid in seen_before:
                    arrivals = sum(1 for t in ids[:rank] if t not in seen_before)
                    assert rank + 1 <= self.actual[tid] + arrivals
        infos = self.run(hall.positions([t for ids in now_order.values() for t in ids]))
        self.actual = {}
        for ids in now_order.values():
            for rank, tid in enumerate(ids):
                self.actual[tid] = rank + 1
        for info in infos:
            assert info.position is not None
            if info.ticket_id in self.shown:
                assert info.position <= self.shown[info.ticket_id], "shown position went up"
            self.shown[info.ticket_id] = info.position
        self.order = now_order

    @invariant()
    def no_available_clerk_has_work(self) -> None:
        """Work-conserving: an available clerk never has an eligible ticket waiting."""
        hall = self.rig.hall
        now = self.rig.clock.now()
        for clerk_id in CLERKS:
            clerk = self.run(hall.get_clerk(clerk_id))
            if clerk.state == ClerkState.AVAILABLE:
                assert self.run(hall.router.ticket_for(clerk, now)) is None

    @invariant()
    def duty_counts_match_clerks(self) -> None:
        """The on-duty count per matter equals the clerks on duty who serve it."""
        hall = self.rig.hall
        clerks = [self.run(hall.get_clerk(c)) for c in CLERKS]
        for matter in MATTERS:
            expected = sum(1 for c in clerks if c.state in ON_DUTY_STATES and matter in c.matters)
            assert self.run(self.rig.store.duty_count(matter)) == expected

    @invariant()
    def event_log_accounts_for_every_ticket(self) -> None:
        """Every ticket entered the log, every final one ends in its final event, and every
        offer was accepted, missed, declined or withdrawn (or is still open)."""
        events = self.run(self.rig.events())
        seqs = [e.seq for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        by_ticket: dict[str, list[Any]] = {}
        for event in events:
            if event.ticket_id is not None:
                by_ticket.setdefault(event.ticket_id, []).append(event)
        for tid in self.tickets:
            ticket = self.run(self.rig.hall.get_ticket(tid))
            lines = by_ticket.get(tid, [])
            kinds = [e.kind for e in lines]
            assert kinds[0] == EventKind.ENTER_QUEUE and kinds.count(EventKind.ENTER_QUEUE) == 1
            if ticket.state in FINAL_EVENT:
                assert kinds[-1] == FINAL_EVENT[ticket.state]
            offers = kinds.count(EventKind.OFFER)
            settled = (kinds.count(EventKind.ACCEPT) + kinds.count(EventKind.MISS)
                       + kinds.count(EventKind.DECLINE)
                       + sum(1 for e in lines if e.kind == EventKind.ABANDON
                             and e.data.get("state") == "offered")
                       + (1 if ticket.state == TicketState.OFFERED else 0))
            assert offers == settled
            assert kinds.count(EventKind.ACCEPT) == kinds.count(EventKind.SESSION_START)


SETTINGS = {
    "memory": settings(max_examples=120, stateful_step_count=40, deadline=None,
                       suppress_health_check=[HealthCheck.too_slow]),
    # The same 40 steps per example but a third of the examples: every store call is a round
    # trip, so one example costs ~8x the memory one (~0.27 s against ~0.03 s here).
    "redis": settings(max_examples=40, stateful_step_count=40, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow]),
}


def test_queue_properties(store_kind: str, store_factory: StoreFactory) -> None:
    """Random command sequences keep every invariant above after every step."""

    class Machine(QueueMachine):
        def __init__(self) -> None:
            super().__init__(store_factory)

    run_state_machine_as_test(Machine, settings=SETTINGS[store_kind])
