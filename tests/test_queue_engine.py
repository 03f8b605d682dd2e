"""Behaviour of the queue engine: routing, fairness, offers, wrap-up, transfer, guardrails.

Every test runs once per store backend (``[memory]``, ``[redis]``: see tests/hallkit.py).
"""

from __future__ import annotations

import pytest

from rooms.catalog import ServiceHours
from rooms.clerks import ClerkState
from rooms.errors import (
    InvalidStateError,
    NoClerkOnDutyError,
    NotAllowedError,
    OutOfHoursError,
    QueueFullError,
    ValidationError,
)
from rooms.events import EventKind
from rooms.hall import Unstaffed
from rooms.notices import NoticeKind
from rooms.policy import QueuePolicy
from rooms.tickets import Channel, PriorityReason, TicketState
from tests.hallkit import RigMaker, small_catalog

WAIT = Unstaffed.WAIT


# ---------------------------------------------------------------- routing


async def test_join_is_offered_to_the_eligible_clerk_idle_longest(new_rig: RigMaker) -> None:
    """A new ticket goes to the eligible available clerk who has been idle the longest."""
    rig = await new_rig()
    await rig.hall.login("c2")
    await rig.advance(5)
    await rig.hall.login("c1")
    ticket = await rig.hall.join("residence")
    assert ticket.state == TicketState.OFFERED
    assert ticket.clerk_id == "c2"
    assert (await rig.hall.get_clerk("c2")).state == ClerkState.OFFERED
    offers = rig.of_kind(NoticeKind.OFFER)
    assert [(n.ticket_id, n.clerk_id) for n in offers] == [(ticket.id, "c2")]


async def test_ticket_is_not_offered_to_clerk_without_the_skill(new_rig: RigMaker) -> None:
    """A clerk who does not serve the matter is never offered its tickets."""
    rig = await new_rig()
    await rig.hall.login("c4")  # medical only
    ticket = await rig.hall.join("residence", when_unstaffed=WAIT)
    assert ticket.state == TicketState.WAITING
    assert (await rig.hall.get_clerk("c4")).state == ClerkState.AVAILABLE


async def test_freed_clerk_takes_lowest_order_ticket_across_all_their_matters(
    new_rig: RigMaker,
) -> None:
    """A comprehensive-window clerk gets the longest-waiting ticket over every matter served."""
    rig = await new_rig()
    first = await rig.hall.join("employment", when_unstaffed=WAIT)
    await rig.advance(1)
    await rig.hall.join("residence", when_unstaffed=WAIT)
    clerk = await rig.hall.login("c2")
    assert clerk.ticket_id == first.id


async def test_two_clerks_freeing_at_once_get_different_tickets_in_order(new_rig: RigMaker) -> None:
    """Two clerks finishing together never share a ticket; the earlier one gets the head."""
    rig = await new_rig()
    await rig.hall.login("c1")
    await rig.hall.login("c2")
    a = await rig.hall.join("residence")
    b = await rig.hall.join("residence")
    for clerk_id, t in (("c1", a), ("c2", b)):
        t = await rig.hall.get_ticket(t.id)
        await rig.hall.accept(t.clerk_id or "", t.id)
        assert t.clerk_id == clerk_id
    x = await rig.hall.join("residence")
    y = await rig.hall.join("residence")
    for clerk_id, t in (("c1", a), ("c2", b)):
        await rig.hall.end_session(clerk_id, t.id)
    await rig.hall.finish_wrapup("c2", "resolved")
    await rig.hall.finish_wrapup("c1", "resolved")
    x, y = await rig.hall.get_ticket(x.id), await rig.hall.get_ticket(y.id)
    assert x.clerk_id == "c2" and y.clerk_id == "c1"
    assert x.state == y.state == TicketState.OFFERED


async def test_widening_after_wait_reaches_secondary_clerk(new_rig: RigMaker) -> None:
    """After the matter's widen_after_s a ticket may go to a secondary-skilled clerk."""
    rig = await new_rig(QueuePolicy(priority_credit_s=0))
    await rig.hall.login("c3")  # secondary hr
    ticket = await rig.hall.join("residence", when_unstaffed=WAIT)
    assert ticket.state == TicketState.WAITING
    await rig.advance(299)
    assert (await rig.hall.get_ticket(ticket.id)).state == TicketState.WAITING
    await rig.advance(1)
    widened = await rig.hall.get_ticket(ticket.id)
    assert widened.state == TicketState.OFFERED and widened.clerk_id == "c3"
    offer = [e for e in await rig.events() if e.kind == EventKind.OFFER][-1]
    assert offer.data["widened"] is True


async def test_secondary_clerk_prefers_own_matters_only_by_order(new_rig: RigMaker) -> None:
    """A freed secondary clerk still takes widened tickets strictly in order with its own."""
    rig = await new_rig()
    await rig.hall.login("c4")
    await rig.hall.set_break("c4", "lunch")
    hr = await rig.hall.join("residence", when_unstaffed=WAIT)
    await rig.advance(400)  # widened by now
    await rig.hall.join("medical", when_unstaffed=WAIT)
    clerk = await rig.hall.login("c3")
    assert clerk.ticket_id == hr.id


# ---------------------------------------------------------------- fairness and order


async def test_priority_credit_overtakes_recent_joiners_only(new_rig: RigMaker) -> None:
    """Elderly residents go ahead of those who joined less than the credit ago, not others."""
    rig = await new_rig(QueuePolicy(priority_credit_s=600))
    old = await rig.hall.join("residence", when_unstaffed=WAIT)
    await rig.advance(700)
    recent = await rig.hall.join("residence", when_unstaffed=WAIT)
    await rig.advance(10)
    elderly = await rig.hall.join("residence", when_unstaffed=WAIT,
                                  priority=PriorityReason.ELDERLY)
    order = [t.id for t in await rig.hall.queue_tickets("residence")]
    assert order == [old.id, elderly.id, recent.id]


async def test_equal_scores_are_ordered_by_ticket_id(new_rig: RigMaker) -> None:
    """Tickets joining at the same instant are served in the order they were created."""
    rig = await new_rig()
    ids = [(await rig.hall.join("residence", when_unstaffed=WAIT)).id for _ in range(5)]
    assert [t.id for t in await rig.hall.queue_tickets("residence")] == ids
    assert ids == sorted(ids)


async def test_shown_position_never_increases_when_priority_overtakes(new_rig: RigMaker) -> None:
    """A priority arrival may overtake, but the position shown to a resident never goes up."""
    rig = await new_rig()
    a = await rig.hall.join("residence", when_unstaffed=WAIT)
    b = await rig.hall.join("residence", when_unstaffed=WAIT)
    assert (await rig.hall.position(b.id)).position == 2
    await rig.hall.join("residence", when_unstaffed=WAIT, priority=PriorityReason.DISABLED)
    shown = await rig.hall.position(b.id)
    assert shown.position == 2
    assert [t.id for t in await rig.hall.queue_tickets("residence")][2] == b.id
    await rig.hall.leave(a.id)
    assert (await rig.hall.position(b.id)).position == 2
    await rig.hall.login("c1")  # takes the priority ticket
    assert (await rig.hall.position(b.id)).position == 2


async def test_position_and_eta_follow_handle_time_and_clerks_on_duty(new_rig: RigMaker) -> None:
    """ETA is ceil(position / clerks on duty) x the matter's live handle time."""
    rig = await new_rig()
    await rig.hall.login("c1")
    await rig.hall.set_break("c1", "meeting")
    tickets = [await rig.hall.join("residence", when_unstaffed=WAIT) for _ in range(3)]
    info = await rig.hall.position(tickets[2].id)
    assert info.position == 3 and info.eta_s is None and not info.staffed
    await rig.hall.set_available("c1")  # takes ticket 0, leaving tickets 1 and 2 waiting
    await rig.hall.login("c2")  # takes ticket 1
    info = await rig.hall.position(tickets[2].id)
    assert info.position == 3  # offered tickets ahead still count until accepted
    assert info.eta_s == pytest.approx(2 * 600)  # ceil(3 / 2) rounds of 600 s
    t0 = await rig.hall.get_ticket(tickets[0].id)
    await rig.hall.accept("c1", t0.id)
    await rig.advance(100)
    await rig.hall.end_session("c1", t0.id)
    await rig.hall.finish_wrapup("c1", "resolved")
    # 0.2 * 100 + 0.8 * 600 = 500 s learned handle time
    info = await rig.hall.position(tickets[2].id)
    assert info.position == 2
    assert info.eta_s == pytest.approx(500)


async def test_you_are_next_is_a_distinct_notice_sent_once(new_rig: RigMaker) -> None:
    """The resident who reaches the head of the queue gets one 'you are next' notice."""
    rig = await new_rig()
    a = await rig.hall.join("residence", when_unstaffed=WAIT)
    b = await rig.hall.join("residence", when_unstaffed=WAIT)
    assert [n.ticket_id for n in rig.of_kind(NoticeKind.YOU_ARE_NEXT)] == [a.id]
    await rig.hall.leave(a.id)
    await rig.hall.position(b.id)
    assert [n.ticket_id for n in rig.of_kind(NoticeKind.YOU_ARE_NEXT)] == [a.id, b.id]
    assert rig.of_kind(NoticeKind.QUEUE_CHANGED)


# ---------------------------------------------------------------- offers


async def test_missed_offer_goes_back_with_its_place_to_next_clerk(new_rig: RigMaker) -> None:
    """An offer not accepted in time returns the ticket to its place and offers it on."""
    rig = await new_rig(QueuePolicy(offer_timeout_s=20, max_missed_offers=3))
    await rig.hall.login("c1")
    first = await rig.hall.join("residence")
    second = await rig.hall.join("residence", when_unstaffed=WAIT)
    await rig.hall.login("c2")  # gets second: first is offered to c1
    assert (await rig.hall.get_ticket(second.id)).clerk_id == "c2"
    await rig.hall.decline("c2", second.id)  # c2 free again; second skips c2 for a while
    await rig.advance(20)  # c1 misses first: first goes to c2, the idle one
    moved = await rig.hall.get_ticket(first.id)
    assert moved.state == TicketState.OFFERED and moved.clerk_id == "c2"
    assert [t.id for t in await rig.hall.queue_tickets("residence")] == [first.id, second.id]
    c1 = await rig.hall.get_clerk("c1")
    assert c1.missed_in_row == 1
    assert c1.state == ClerkState.OFFERED and c1.ticket_id == second.id
    assert EventKind.MISS in await rig.kinds_for(first.id)


async def test_missing_k_offers_in_a_row_puts_clerk_on_break(new_rig: RigMaker) -> None:
    """A clerk who misses K offers in a row is put on break automatically."""
    rig = await new_rig(QueuePolicy(offer_timeout_s=10, max_missed_offers=2,
                                     decline_cooldown_s=1))
    await rig.hall.login("c1")
    ticket = await rig.hall.join("residence")
    await rig.advance(10)  # miss 1, re-offered after the 1 s cooldown
    await rig.advance(1)
    assert (await rig.hall.get_ticket(ticket.id)).clerk_id == "c1"
    await rig.advance(10)  # miss 2
    clerk = await rig.hall.get_clerk("c1")
    assert clerk.state == ClerkState.ON_BREAK and clerk.break_reason == "missed_offers"
    assert (await rig.hall.get_ticket(ticket.id)).state == TicketState.WAITING
    brk = [e for e in await rig.events() if e.kind == EventKind.CLERK_BREAK]
    assert brk and brk[-1].data == {"reason": "missed_offers", "auto": True}


async def test_accept_at_the_deadline_loses_to_the_timeout(new_rig: RigMaker) -> None:
    """An accept arriving as the offer times out is refused and the ticket moves on."""
    rig = await new_rig(QueuePolicy(offer_timeout_s=20, max_missed_offers=5))
    await rig.hall.login("c1")
    ticket = await rig.hall.join("residence")
    await rig.hall.login("c2")
    rig.clock.advance(20)  # deadline reached, timer not yet fired
    with pytest.raises(InvalidStateError, match="offer expired"):
        await rig.hall.accept("c1", ticket.id)
    moved = await rig.hall.get_ticket(ticket.id)
    assert moved.state == TicketState.OFFERED and moved.clerk_id == "c2"
    assert (await rig.hall.get_clerk("c1")).missed_in_row == 1
    assert await rig.hall.tick() == 0 or (await rig.hall.get_ticket(ticket.id)).clerk_id == "c2"


async def test_only_the_offered_clerk_can_accept(new_rig: RigMaker) -> None:
    """Another clerk cannot accept a ticket offered to someone else; nothing changes."""
    rig = await new_rig()
    await rig.hall.login("c1")
    await rig.hall.login("c2")
    ticket = await rig.hall.join("residence")
    other = "c2" if ticket.clerk_id == "c1" else "c1"
    await rig.hall.join("residence")  # gives the other clerk an offer of its own
    with pytest.raises(NotAllowedError):
        await rig.hall.accept(other, ticket.id)
    assert (await rig.hall.get_ticket(ticket.id)).state == TicketState.OFFERED


async def test_declined_ticket_returns_to_same_clerk_only_after_cooldown(new_rig: RigMaker) -> None:
    """A declining clerk is not re-offered the same ticket until the cooldown ends."""
    rig = await new_rig(QueuePolicy(offer_timeout_s=20, decline_cooldown_s=30))
    await rig.hall.login("c1")
    ticket = await rig.hall.join("residence")
    await rig.hall.decline("c1", ticket.id)
    assert (await rig.hall.get_ticket(ticket.id)).state == TicketState.WAITING
    assert (await rig.hall.get_clerk("c1")).state == ClerkState.AVAILABLE
    await rig.advance(29)
    assert (await rig.hall.get_ticket(ticket.id)).state == TicketState.WAITING
    await rig.advance(1)
    assert (await rig.hall.get_ticket(ticket.id)).clerk_id == "c1"


async def test_resident_leaving_while_offered_frees_clerk_for_next(new_rig: RigMaker) -> None:
    """A resident leaving during the offer is an abandon; the clerk gets the next ticket."""
    rig = await new_rig()
    await rig.hall.login("c1")
    a = await rig.hall.join("residence")
    await rig.advance(7)
    b = await rig.hall.join("residence", when_unstaffed=WAIT)
    await rig.hall.leave(a.id)
    assert (await rig.hall.get_ticket(a.id)).state == TicketState.ABANDONED
    assert (await rig.hall.get_ticket(b.id)).clerk_id == "c1"
    withdrawn = rig.of_kind(NoticeKind.OFFER_WITHDRAWN)
    assert withdrawn[-1].data["reason"] == "resident_left"
    abandon = next(e for e in await rig.events() if e.kind == EventKind.ABANDON)
    assert abandon.data["position"] == 1 and abandon.data["wait_s"] == pytest.approx(7)
    assert abandon.data["state"] == "offered"


async def test_disconnect_past_grace_is_an_abandon_and_reconnect_keeps_ticket(
    new_rig: RigMaker,
) -> None:
    """A disconnected resident keeps the ticket for the grace period, then abandons."""
    rig = await new_rig(QueuePolicy(abandon_grace_s=30))
    kept = await rig.hall.join("residence", when_unstaffed=WAIT)
    lost = await rig.hall.join("residence", when_unstaffed=WAIT)
    await rig.hall.resident_disconnected(kept.id)
    await rig.hall.resident_disconnected(lost.id)
    await rig.advance(20)
    await rig.hall.resident_reconnected(kept.id)
    await rig.advance(20)
    assert (await rig.hall.get_ticket(kept.id)).state == TicketState.WAITING
    gone = await rig.hall.get_ticket(lost.id)
    assert gone.state == TicketState.ABANDONED
    abandon = next(e for e in await rig.events() if e.kind == EventKind.ABANDON)
    assert abandon.data["reason"] == "disconnected" and abandon.data["position"] == 2


# ---------------------------------------------------------------- guardrails


async def test_no_clerk_on_duty_refuses_unless_wait_or_callback(new_rig: RigMaker) -> None:
    """With nobody on duty a resident is told so, and may wait or leave a callback."""
    rig = await new_rig()
    with pytest.raises(NoClerkOnDutyError) as err:
        await rig.hall.join("residence")
    assert err.value.code == "no_clerk_on_duty"
    assert await rig.hall.queues.length("matter:residence") == 0
    with pytest.raises(ValidationError):
        await rig.hall.join("residence", when_unstaffed=Unstaffed.CALLBACK)
    waiting = await rig.hall.join("residence", when_unstaffed=WAIT)
    callback = await rig.hall.join("residence", when_unstaffed=Unstaffed.CALLBACK,
                                   callback_contact="13800000000")
    assert callback.callback_contact == "13800000000"
    order = [t.id for t in await rig.hall.queue_tickets("residence")]
    assert order == [waiting.id, callback.id]
    await rig.hall.resident_disconnected(callback.id)
    await rig.advance(3600)
    assert (await rig.hall.get_ticket(callback.id)).state == TicketState.WAITING


async def test_waiting_ticket_turned_into_callback_keeps_its_place(new_rig: RigMaker) -> None:
    """A waiting resident may switch to a callback request without losing their place."""
    rig = await new_rig()
    first = await rig.hall.join("residence", when_unstaffed=WAIT)
    await rig.hall.join("residence", when_unstaffed=WAIT)
    await rig.hall.request_callback(first.id, "021-64870000")
    assert (await rig.hall.position(first.id)).position == 1
    assert EventKind.CALLBACK_REQUESTED in await rig.kinds_for(first.id)


async def test_matter_nobody_serves_is_refused_even_to_wait(new_rig: RigMaker) -> None:
    """A matter no clerk serves is refused with its own code: waiting would be forever."""
    rig = await new_rig()
    with pytest.raises(NoClerkOnDutyError) as err:
        await rig.hall.join("orphan", when_unstaffed=WAIT)
    assert err.value.code == "matter_not_served"


async def test_queue_full_is_refused_and_loses_nothing(new_rig: RigMaker) -> None:
    """A full queue refuses the next ticket with queue_full; tickets already in stay."""
    rig = await new_rig()
    tickets = [await rig.hall.join("medical", when_unstaffed=WAIT) for _ in range(3)]
    with pytest.raises(QueueFullError) as err:
        await rig.hall.join("medical", when_unstaffed=WAIT)
    assert err.value.code == "queue_full"
    assert [t.id for t in await rig.hall.queue_tickets("medical")] == [t.id for t in tickets]
    assert len([e for e in await rig.events() if e.kind == EventKind.ENTER_QUEUE]) == 3


async def test_outside_service_hours_is_refused_with_next_opening(new_rig: RigMaker) -> None:
    """Outside service hours a ticket is refused and the next opening time is named."""
    hours = ServiceHours(timezone="Asia/Shanghai", weekly={0: ((540, 1020),)})
    rig = await new_rig(catalog=small_catalog(hours))
    # ManualClock starts 2023-11-14 22:13 UTC = Wednesday 06:13 in Shanghai: closed.
    with pytest.raises(OutOfHoursError, match="2023-11-20 09:00"):
        await rig.hall.join("residence", when_unstaffed=WAIT)
    relaxed = await new_rig(QueuePolicy(enforce_hours=False), small_catalog(hours))
    assert (await relaxed.hall.join("residence", when_unstaffed=WAIT)).is_queued


async def test_bad_join_input_is_refused_with_validation_error(new_rig: RigMaker) -> None:
    """A kiosk ticket needs a known service point; 'requeued' cannot be requested."""
    rig = await new_rig()
    with pytest.raises(ValidationError):
        await rig.hall.join("residence", channel=Channel.KIOSK, service_point_id="nope",
                            when_unstaffed=WAIT)
    with pytest.raises(ValidationError):
        await rig.hall.join("residence", priority=PriorityReason.REQUEUED, when_unstaffed=WAIT)
    ticket = await rig.hall.join("residence", channel=Channel.KIOSK,
                                 service_point_id="XH-001", when_unstaffed=WAIT)
    assert ticket.number == "A001"
    enter = (await rig.events())[-1]
    assert enter.service_point_id == "XH-001" and enter.channel == "kiosk"


async def test_max_wait_times_the_ticket_out(new_rig: RigMaker) -> None:
    """A ticket waiting longer than max_wait_s times out and says so in the log."""
    rig = await new_rig(QueuePolicy(max_wait_s=100))
    ticket = await rig.hall.join("residence", when_unstaffed=WAIT)
    await rig.advance(100)
    assert (await rig.hall.get_ticket(ticket.id)).state == TicketState.TIMED_OUT
    assert (await rig.kinds_for(ticket.id))[-1] == EventKind.TIMEOUT


# ---------------------------------------------------------------- sessions and wrap-up


async def _in_session(rig, matter: str = "residence", clerk: str = "c1"):  # type: ignore[no-untyped-def]
    await rig.hall.login(clerk)
    ticket = await rig.hall.join(matter)
    assert ticket.clerk_id == clerk
    return await rig.hall.accept(clerk, ticket.id)


async def test_full_session_writes_every_step_to_the_event_log(new_rig: RigMaker) -> None:
    """join, offer, accept, session, wrap-up and done are each one event-log line."""
    rig = await new_rig()
    ticket = await _in_session(rig)
    await rig.advance(300)
    await rig.hall.end_session("c1", ticket.id)
    await rig.hall.finish_wrapup("c1", "pre_review_corrections")
    assert await rig.kinds_for(ticket.id) == [
        EventKind.ENTER_QUEUE, EventKind.OFFER, EventKind.ACCEPT, EventKind.SESSION_START,
        EventKind.SESSION_END, EventKind.WRAPUP_START, EventKind.WRAPUP_END, EventKind.DONE,
    ]
    done = await rig.hall.get_ticket(ticket.id)
    assert done.state == TicketState.DONE and done.outcome == "pre_review_corrections"
    seqs = [e.seq for e in await rig.events()]
    assert seqs == sorted(set(seqs))


async def test_wrapup_requires_an_outcome_and_unresolved_requires_a_reason(
    new_rig: RigMaker,
) -> None:
    """Wrap-up cannot end without an outcome; 'unresolved' needs a reason."""
    rig = await new_rig()
    ticket = await _in_session(rig)
    await rig.hall.end_session("c1", ticket.id)
    with pytest.raises(ValidationError, match="outcome code is required"):
        await rig.hall.finish_wrapup("c1")
    with pytest.raises(ValidationError, match="needs a reason"):
        await rig.hall.finish_wrapup("c1", "unresolved")
    with pytest.raises(ValidationError, match="unknown outcome"):
        await rig.hall.finish_wrapup("c1", "shrug")
    await rig.hall.finish_wrapup("c1", "unresolved", "缺少房产证明, 需到窗口核验")
    end = next(e for e in await rig.events() if e.kind == EventKind.WRAPUP_END)
    assert end.data["outcome"] == "unresolved" and "房产" in end.data["reason"]


async def test_wrapup_timer_finishes_with_recorded_outcome_else_stays_overdue(
    new_rig: RigMaker,
) -> None:
    """The wrap-up timer ends wrap-up only if an outcome is recorded; else it is overdue."""
    rig = await new_rig(QueuePolicy(wrapup_s=60))
    ticket = await _in_session(rig)
    await rig.hall.set_outcome("c1", "resolved")
    await rig.hall.end_session("c1", ticket.id)
    await rig.advance(60)
    assert (await rig.hall.get_clerk("c1")).state == ClerkState.AVAILABLE
    second = await rig.hall.join("residence")
    await rig.hall.accept("c1", second.id)
    await rig.hall.end_session("c1", second.id)
    waiting = await rig.hall.join("residence", when_unstaffed=WAIT)
    await rig.advance(60)
    clerk = await rig.hall.get_clerk("c1")
    assert clerk.state == ClerkState.WRAP_UP and clerk.wrapup_overdue
    assert rig.of_kind(NoticeKind.WRAPUP_OVERDUE)
    assert (await rig.hall.get_ticket(waiting.id)).state == TicketState.WAITING
    await rig.hall.set_outcome("c1", "resolved")  # recording it now ends the overdue wrap-up
    assert (await rig.hall.get_ticket(waiting.id)).clerk_id == "c1"


async def test_wrapup_extension_is_capped(new_rig: RigMaker) -> None:
    """A clerk may extend wrap-up up to the configured total, and no further."""
    rig = await new_rig(QueuePolicy(wrapup_s=60, wrapup_max_extension_s=120))
    ticket = await _in_session(rig)
    await rig.hall.end_session("c1", ticket.id)
    await rig.hall.extend_wrapup("c1", 90)
    with pytest.raises(ValidationError, match="at most 30"):
        await rig.hall.extend_wrapup("c1", 60)
    await rig.hall.set_outcome("c1", "resolved")
    await rig.advance(100)
    assert (await rig.hall.get_clerk("c1")).state == ClerkState.WRAP_UP
    await rig.advance(50)
    assert (await rig.hall.get_clerk("c1")).state == ClerkState.AVAILABLE


async def test_break_requested_in_session_is_taken_after_wrapup(new_rig: RigMaker) -> None:
    """A break asked for during a session starts when the wrap-up ends."""
    rig = await new_rig()
    ticket = await _in_session(rig)
    await rig.hall.set_break("c1", "午休")
    await rig.hall.end_session("c1", ticket.id)
    await rig.hall.join("residence", when_unstaffed=WAIT)
    await rig.hall.finish_wrapup("c1", "resolved")
    clerk = await rig.hall.get_clerk("c1")
    assert clerk.state == ClerkState.ON_BREAK and clerk.break_reason == "午休"


async def test_resident_hanging_up_moves_session_to_wrapup(new_rig: RigMaker) -> None:
    """A resident leaving during the session ends it; the clerk still records the outcome."""
    rig = await new_rig()
    ticket = await _in_session(rig)
    await rig.hall.leave(ticket.id)
    assert (await rig.hall.get_ticket(ticket.id)).state == TicketState.WRAP_UP
    end = next(e for e in await rig.events() if e.kind == EventKind.SESSION_END)
    assert end.data["ended_by"] == "resident"


async def test_clerk_lost_mid_session_puts_resident_back_at_the_front(new_rig: RigMaker) -> None:
    """If the clerk's connection is lost, the resident is re-queued ahead of later joiners."""
    rig = await new_rig()
    ticket = await _in_session(rig)
    later = await rig.hall.join("residence", when_unstaffed=WAIT)
    await rig.hall.clerk_disconnected("c1")
    back = await rig.hall.get_ticket(ticket.id)
    assert back.state == TicketState.WAITING and back.priority == PriorityReason.REQUEUED
    assert [t.id for t in await rig.hall.queue_tickets("residence")] == [ticket.id, later.id]
    assert (await rig.hall.get_clerk("c1")).state == ClerkState.LOGGED_OUT
    clerk = await rig.hall.login("c2")
    assert clerk.ticket_id == ticket.id


# ---------------------------------------------------------------- transfer


async def test_transfer_to_matter_keeps_wait_credit(new_rig: RigMaker) -> None:
    """A transferred resident goes ahead of everyone who joined the new matter after them."""
    rig = await new_rig()
    await rig.hall.login("c1")
    ticket = await rig.hall.join("residence")
    await rig.hall.accept("c1", ticket.id)
    await rig.advance(60)
    newcomer = await rig.hall.join("employment", when_unstaffed=WAIT)
    moved = await rig.hall.transfer("c1", ticket.id, to_matter="employment", allow_wait=True)
    assert moved.state == TicketState.TRANSFERRED and moved.department_id == "hr"
    assert [t.id for t in await rig.hall.queue_tickets("employment")] == [ticket.id, newcomer.id]
    clerk = await rig.hall.get_clerk("c1")
    assert clerk.state == ClerkState.WRAP_UP and clerk.outcome == "transferred"
    await rig.hall.finish_wrapup("c1")
    served = await rig.hall.login("c2")
    assert served.ticket_id == ticket.id
    transfer = next(e for e in await rig.events() if e.kind == EventKind.TRANSFER)
    assert transfer.data["from_matter"] == "residence"
    assert transfer.data["to_matter"] == "employment"


async def test_transfer_to_matter_nobody_serves_is_refused_and_changes_nothing(
    new_rig: RigMaker,
) -> None:
    """Transfer to an unserved matter fails; the session goes on untouched."""
    rig = await new_rig()
    ticket = await _in_session(rig)
    before = len(await rig.events())
    with pytest.raises(NoClerkOnDutyError) as err:
        await rig.hall.transfer("c1", ticket.id, to_matter="orphan", allow_wait=True)
    assert err.value.code == "matter_not_served"
    with pytest.raises(NoClerkOnDutyError) as err:
        await rig.hall.transfer("c1", ticket.id, to_matter="medical")
    assert err.value.code == "no_clerk_on_duty"
    assert (await rig.hall.get_ticket(ticket.id)).state == TicketState.IN_SESSION
    assert (await rig.hall.get_clerk("c1")).state == ClerkState.IN_SESSION
    assert len(await rig.events()) == before


async def test_transfer_to_named_clerk_waits_for_that_clerk(new_rig: RigMaker) -> None:
    """A transfer to a named clerk is offered to that clerk alone, when they are free."""
    rig = await new_rig()
    await rig.hall.login("c2")
    busy = await rig.hall.join("residence")
    await rig.hall.accept("c2", busy.id)
    ticket = await _in_session(rig)  # c1
    await rig.hall.login("c3")
    moved = await rig.hall.transfer("c1", ticket.id, to_clerk="c2")
    assert moved.state == TicketState.TRANSFERRED and moved.target_clerk_id == "c2"
    assert (await rig.hall.position(ticket.id)).position == 1
    await rig.hall.end_session("c2", busy.id)
    await rig.hall.finish_wrapup("c2", "resolved")
    assert (await rig.hall.get_ticket(ticket.id)).clerk_id == "c2"


async def test_named_clerk_logging_out_returns_transfer_to_matter_queue(new_rig: RigMaker) -> None:
    """If the named clerk logs out, the transferred ticket goes to its matter's queue."""
    rig = await new_rig()
    await rig.hall.login("c2")
    await rig.hall.set_break("c2", "meeting")
    ticket = await _in_session(rig)
    await rig.hall.transfer("c1", ticket.id, to_clerk="c2")
    await rig.hall.logout("c2")
    moved = await rig.hall.get_ticket(ticket.id)
    assert moved.target_clerk_id is None and moved.queue_key == "matter:residence"
    await rig.hall.finish_wrapup("c1")
    assert (await rig.hall.get_ticket(ticket.id)).clerk_id == "c1"


# ---------------------------------------------------------------- clerk states


async def test_clerk_state_rules_name_the_state(new_rig: RigMaker) -> None:
    """Illegal clerk operations raise errors that name the clerk's current state."""
    rig = await new_rig()
    with pytest.raises(InvalidStateError, match='state "logged_out"'):
        await rig.hall.set_break("c1", "tea")
    await rig.hall.login("c1")
    with pytest.raises(InvalidStateError, match='state "available"'):
        await rig.hall.finish_wrapup("c1", "resolved")
    await rig.hall.set_break("c1", "tea")
    assert (await rig.hall.get_clerk("c1")).state == ClerkState.ON_BREAK
    await rig.hall.logout("c1")
    clerk = await rig.hall.get_clerk("c1")
    assert clerk.state == ClerkState.LOGGED_OUT
    kinds = [e.kind for e in await rig.events() if e.clerk_id == "c1"]
    assert kinds == [EventKind.CLERK_LOGIN, EventKind.CLERK_BREAK, EventKind.CLERK_LOGOUT]


async def test_break_while_offered_declines_then_breaks(new_rig: RigMaker) -> None:
    """Going on break during an offer gives the ticket back first."""
    rig = await new_rig()
    await rig.hall.login("c1")
    ticket = await rig.hall.join("residence")
    await rig.hall.set_break("c1", "urgent call")
    assert (await rig.hall.get_clerk("c1")).state == ClerkState.ON_BREAK
    assert (await rig.hall.get_ticket(ticket.id)).state == TicketState.WAITING
    assert EventKind.DECLINE in await rig.kinds_for(ticket.id)


async def test_on_break_clerk_is_not_counted_on_duty(new_rig: RigMaker) -> None:
    """Clerks on break do not count for ETA or for 'no clerk on duty'."""
    rig = await new_rig()
    await rig.hall.login("c1")
    await rig.hall.set_break("c1", "tea")
    await rig.hall.login("c2")
    await rig.hall.set_break("c2", "tea")
    with pytest.raises(NoClerkOnDutyError):
        await rig.hall.join("residence")
    snapshot = await rig.hall.snapshot()
    residence = next(m for m in snapshot["matters"] if m["id"] == "residence")
    assert residence["on_duty"] == 0


async def test_transfer_lifts_earlier_decline_cooldowns_on_both_sides(new_rig: RigMaker) -> None:
    """A clerk who declined a ticket may be offered it again once it is transferred."""
    rig = await new_rig(QueuePolicy(decline_cooldown_s=600))
    await rig.hall.login("c2")
    ticket = await rig.hall.join("residence")
    await rig.hall.decline("c2", ticket.id)  # c2 skips this ticket for 600 s
    await rig.hall.login("c1")  # takes it instead
    await rig.hall.accept("c1", ticket.id)
    assert ticket.id in (await rig.hall.get_clerk("c2")).skipped
    await rig.hall.set_break("c2", "meeting")
    moved = await rig.hall.transfer("c1", ticket.id, to_matter="employment", allow_wait=True)
    assert moved.skip_clerks == {}
    assert ticket.id not in (await rig.hall.get_clerk("c2")).skipped
    clerk = await rig.hall.set_available("c2")
    assert clerk.ticket_id == ticket.id


async def test_resident_rates_a_finished_session_once(new_rig: RigMaker) -> None:
    """A session that reached a clerk can be rated 1-5 once; the rating is in the log."""
    rig = await new_rig()
    waiting = await rig.hall.join("employment", when_unstaffed=WAIT)
    with pytest.raises(InvalidStateError, match='state "waiting"'):
        await rig.hall.rate(waiting.id, 5)
    ticket = await _in_session(rig)
    await rig.hall.end_session("c1", ticket.id)
    with pytest.raises(ValidationError):
        await rig.hall.rate(ticket.id, 6)
    rated = await rig.hall.rate(ticket.id, 4, "  很耐心  ")
    assert rated.rating == 4
    with pytest.raises(InvalidStateError, match="already been rated"):
        await rig.hall.rate(ticket.id, 5)
    line = next(e for e in await rig.events() if e.kind == EventKind.SESSION_RATING)
    assert line.data == {"score": 4, "comment": "很耐心", "clerk": "c1"}
    assert line.clerk_id == "c1"
