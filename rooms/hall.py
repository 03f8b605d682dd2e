"""The hall: the queue engine's commands, timers and event log (no I/O of its own).

Every public coroutine is one *command*: it runs inside one store transaction, checks every
precondition before its first write (so a refused command changes nothing), moves the ticket and
clerk state machines, appends one event-log line per change to the store's outbox, and hands
its notices to the subscribers once the transaction is over. Timers are deadlines in the store;
:meth:`Hall.tick` fires the due ones and :class:`rooms.runner.HallRunner` calls it on time.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from rooms.cases import PendingCase
from rooms.catalog import Catalog, Matter, ServiceKind
from rooms.clerks import ON_DUTY_STATES, Clerk, ClerkState
from rooms.clock import Clock
from rooms.errors import (
    InvalidStateError,
    NoClerkOnDutyError,
    NotAllowedError,
    NotFoundError,
    OutOfHoursError,
    QueueFullError,
    ValidationError,
)
from rooms.events import EventKind, HallEvent
from rooms.notices import Notice, NoticeKind
from rooms.outcomes import Outcome, parse_outcome
from rooms.policy import QueuePolicy
from rooms.queues import (
    PositionInfo,
    QueueBook,
    clerk_key,
    eta_s,
    matter_key,
    order_score,
    wide_key,
)
from rooms.routing import CHUNK, Router, pools_of, primary_pool
from rooms.store import Prefetch, Store
from rooms.tickets import Channel, PriorityReason, Ticket, TicketState

logger = logging.getLogger("hall.engine")

Subscriber = Callable[[Sequence[Notice]], None]

_TICKET_TIMERS = ("offer", "grace", "widen", "retry", "maxwait")
_MAX_BREAK_REASON = 100
_MAX_CONTACT = 100
_MAX_RATING_COMMENT = 500
MAX_NOTE_CHARS = 2000
_KIOSK_EVENTS = frozenset({EventKind.KIOSK_ONLINE, EventKind.KIOSK_OFFLINE, EventKind.KIOSK_HEALTH})


class Unstaffed(StrEnum):
    """What a resident chose to do when no clerk serving the matter is on duty."""

    REFUSE = "refuse"  # do not join; the error tells the resident the two other choices
    WAIT = "wait"  # join anyway and wait for a clerk to come on duty
    CALLBACK = "callback"  # leave a callback request that keeps their place


@dataclass(frozen=True, slots=True)
class SessionNote:
    """A clerk's private note on a live session (never shown to the resident)."""

    id: str
    text: str
    at: float


@dataclass(slots=True)
class _Step:
    """What one command did: its time, event-log lines, notices and the queues it moved."""

    now: float
    events: list[HallEvent] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)


class Hall:
    def __init__(
        self,
        catalog: Catalog,
        store: Store,
        *,
        clock: Clock,
        policy: QueuePolicy | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.clock = clock
        self.policy = policy or QueuePolicy()
        self.queues = QueueBook(store, catalog, self.policy)
        self.router = Router(store, catalog)
        self._subscribers: list[Subscriber] = []
        self._committed: list[Callable[[], None]] = []
        self._tz = ZoneInfo(catalog.hours.timezone)
        self._served: set[str] = set()
        self._widenable: set[str] = set()
        for clerk_id in catalog.clerks:
            self._served |= catalog.clerk_matters(clerk_id)
            self._widenable |= catalog.clerk_secondary_matters(clerk_id)

    # ------------------------------------------------------------------ plumbing
    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Receive every batch of notices; returns a function that unsubscribes."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def on_commit(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after every command, even one that changed nothing visible (it
        may have set a timer: the timer runner must look again). Returns an unsubscriber."""
        self._committed.append(callback)
        return lambda: self._committed.remove(callback)

    async def start(self) -> None:
        """Register the catalog's clerks (logged out); keep the state of ones already known."""
        async with self.store.transaction():
            for profile in self.catalog.clerks.values():
                matters = sorted(self.catalog.clerk_matters(profile.id))
                secondary = sorted(self.catalog.clerk_secondary_matters(profile.id))
                clerk = await self.store.get_clerk(profile.id)
                if clerk is None:
                    clerk = Clerk(profile.id, profile.name, matters, secondary)
                    await self.store.put_clerk(clerk)
                elif clerk.state == ClerkState.LOGGED_OUT:
                    # Skills follow the catalog, but only while the clerk is in no pool.
                    clerk.matters, clerk.secondary, clerk.name = matters, secondary, profile.name
                    await self.store.put_clerk(clerk)

    @asynccontextmanager
    async def _step(self, prefetch: Prefetch | None = None) -> AsyncIterator[_Step]:
        """One command's transaction; ``prefetch``: what it reads first, which the store may
        fetch with the lock (Store.transaction)."""
        step = _Step(now=0.0)
        try:
            async with self.store.transaction(prefetch):
                step.now = self.clock.now()
                try:
                    yield step
                finally:
                    # Even a command that fails half-way (an accept that found its offer
                    # expired) records what it did change: the log must never miss a change.
                    await self._settle(step)
        finally:
            self._publish(step.notices)
            for callback in list(self._committed):
                callback()

    async def _settle(self, step: _Step) -> None:
        for key in sorted(step.touched):
            head = await self.store.queue_range(key, 0, 1)
            if head:
                ticket = await self._ticket(head[0])
                if ticket.is_queued and not ticket.told_next:
                    ticket.told_next = True
                    await self.store.put_ticket(ticket)
                    step.notices.append(
                        Notice(NoticeKind.YOU_ARE_NEXT, ticket_id=ticket.id, queue_key=key)
                    )
            step.notices.append(Notice(NoticeKind.QUEUE_CHANGED, queue_key=key))
        if step.events:
            await self._count_day(step.events)
            await self.store.outbox_add(step.events)

    async def _count_day(self, events: Sequence[HallEvent]) -> None:
        """Today's answered / abandoned counters, written with the events that move them so
        the wallboard's figures cannot drift from the log."""
        for event in events:
            if event.matter_id is None:
                continue
            if event.kind == EventKind.ACCEPT:
                prefix = self._day_prefix(event.at)
                await self.store.bump(f"{prefix}answered:{event.matter_id}")
                if float(event.data.get("wait_s", 0.0)) <= self.policy.service_level_s:
                    await self.store.bump(f"{prefix}answered_sl:{event.matter_id}")
            elif event.kind == EventKind.ABANDON:
                await self.store.bump(f"{self._day_prefix(event.at)}abandoned:{event.matter_id}")

    def _day_prefix(self, ts: float) -> str:
        # The hall's local date: "today" on the wallboard starts at local midnight.
        return f"day:{self._local(ts).strftime('%Y-%m-%d')}:"

    def _publish(self, notices: Sequence[Notice]) -> None:
        if not notices:
            return
        for subscriber in list(self._subscribers):
            try:
                subscriber(notices)
            except Exception:
                # One broken subscriber must not stop the others or the engine.
                logger.exception("notice subscriber %r failed", subscriber)

    def _event(
        self,
        step: _Step,
        kind: EventKind,
        ticket: Ticket | None = None,
        clerk: Clerk | None = None,
        /,
        **data: Any,
    ) -> None:
        step.events.append(
            HallEvent(
                kind=kind,
                at=step.now,
                ticket_id=ticket.id if ticket else None,
                clerk_id=clerk.id if clerk else (ticket.clerk_id if ticket else None),
                matter_id=ticket.matter_id if ticket else None,
                department_id=ticket.department_id if ticket else None,
                service_point_id=ticket.service_point_id if ticket else None,
                channel=ticket.channel.value if ticket else None,
                data=data,
            )
        )

    def _ticket_notice(self, step: _Step, ticket: Ticket, **data: Any) -> None:
        payload = {
            "state": ticket.state.value,
            "number": ticket.number,
            "matter_id": ticket.matter_id,
            "clerk_id": ticket.clerk_id,
        }
        payload.update(data)
        step.notices.append(
            Notice(NoticeKind.TICKET, ticket_id=ticket.id, clerk_id=ticket.clerk_id, data=payload)
        )

    async def _ticket(self, ticket_id: str) -> Ticket:
        ticket = await self.store.get_ticket(ticket_id)
        if ticket is None:
            raise NotFoundError(f'ticket "{ticket_id}" does not exist')
        return ticket

    async def _clerk(self, clerk_id: str) -> Clerk:
        clerk = await self.store.get_clerk(clerk_id)
        if clerk is None:
            raise NotFoundError(f'clerk "{clerk_id}" does not exist')
        return clerk

    def _matter(self, matter_id: str) -> Matter:
        matter = self.catalog.matters.get(matter_id)
        if matter is None:
            raise NotFoundError(f'matter "{matter_id}" does not exist')
        return matter

    def _freeing(self, clerk_id: str) -> Prefetch:
        """What a command that may make this clerk available reads first: the clerk, and
        the head of every ready set the router picks its next ticket from (catalog skills:
        the stored ones differ only while a logged-out clerk's skills change)."""
        matters = sorted(self.catalog.clerk_matters(clerk_id))
        keys = [clerk_key(clerk_id)] + [matter_key(m) for m in matters]
        keys += [wide_key(m) for m in sorted(self.catalog.clerk_secondary_matters(clerk_id))]
        return Prefetch(clerks=[clerk_id], held=[clerk_id], handle_times=matters,
                        ready_heads=[(k, CHUNK) for k in keys])

    def _offered_to(self, clerk_id: str, ticket_id: str) -> Prefetch:
        """What a command on an offer reads first: the clerk, the ticket, and the queues the
        ticket is likely in (the clerk's own and primary ones): its place there and their
        first two tickets (the head after it leaves)."""
        keys = [clerk_key(clerk_id)]
        keys += [matter_key(m) for m in sorted(self.catalog.clerk_matters(clerk_id))]
        return Prefetch(tickets=[ticket_id], clerks=[clerk_id],
                        queue_heads=[(k, 2) for k in keys],
                        queue_scores=[(k, ticket_id) for k in keys])

    def _local(self, ts: float) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(ts, self._tz)

    # ------------------------------------------------------------------ clerk state
    async def _set_clerk(
        self, step: _Step, clerk: Clerk, new: ClerkState, *, reason: str | None = None,
        auto: bool = False,
    ) -> None:
        """The one place a clerk changes state: keeps idle pools, duty sets and log in step."""
        old = clerk.state
        if old == new:
            return
        clerk.set_state(new, step.now)
        if old == ClerkState.AVAILABLE:
            await self.store.idle_remove(pools_of(clerk), clerk.id)
            clerk.idle_since = None
        if new == ClerkState.AVAILABLE:
            clerk.idle_since = step.now
            await self.store.idle_add(pools_of(clerk), clerk.id, step.now)
        was_on, is_on = old in ON_DUTY_STATES, new in ON_DUTY_STATES
        if was_on != is_on:
            if is_on:
                await self.store.duty_add(clerk.matters, clerk.id)
            else:
                await self.store.duty_remove(clerk.matters, clerk.id)
            # Staffing changed: every ETA in these queues moves.
            step.touched.update(matter_key(m) for m in clerk.matters)
            step.touched.add(clerk_key(clerk.id))
        clerk.break_reason = reason if new == ClerkState.ON_BREAK else None
        if old == ClerkState.LOGGED_OUT:
            self._event(step, EventKind.CLERK_LOGIN, None, clerk, state=new.value)
        if new == ClerkState.LOGGED_OUT:
            self._event(step, EventKind.CLERK_LOGOUT, None, clerk, reason=reason)
        elif new == ClerkState.ON_BREAK:
            self._event(step, EventKind.CLERK_BREAK, None, clerk, reason=reason, auto=auto)
        elif new == ClerkState.AVAILABLE and old == ClerkState.ON_BREAK:
            self._event(step, EventKind.CLERK_AVAILABLE, None, clerk)
        step.notices.append(
            Notice(
                NoticeKind.CLERK,
                clerk_id=clerk.id,
                ticket_id=clerk.ticket_id,
                # The clerk as of this change: one command may make several (available,
                # then offered), and each is shown as it was, not as the latest.
                data={"state": new.value, "since": step.now, "reason": clerk.break_reason,
                      "auto": auto, "clerk": clerk.to_dict()},
            )
        )

    async def _save_clerk(self, clerk: Clerk, now: float) -> None:
        clerk.skipped = {k: v for k, v in clerk.skipped.items() if v > now}
        await self.store.put_clerk(clerk)

    async def _save_ticket(self, ticket: Ticket, now: float) -> None:
        ticket.skip_clerks = {k: v for k, v in ticket.skip_clerks.items() if v > now}
        await self.store.put_ticket(ticket)

    # ------------------------------------------------------------------ residents
    async def join(
        self,
        matter_id: str,
        *,
        channel: Channel = Channel.APP,
        kind: ServiceKind = ServiceKind.CONSULTATION,
        service_point_id: str | None = None,
        resident_id: str | None = None,
        priority: PriorityReason | None = None,
        when_unstaffed: Unstaffed = Unstaffed.REFUSE,
        callback_contact: str | None = None,
    ) -> Ticket:
        """Take a ticket for a matter; it is offered at once if an eligible clerk is idle."""
        matter = self._matter(matter_id)
        if kind not in matter.kinds:
            raise ValidationError(f'matter "{matter_id}" does not offer {kind.value}')
        if channel == Channel.KIOSK and service_point_id not in self.catalog.service_points:
            raise ValidationError(f'unknown service point "{service_point_id}"')
        if priority == PriorityReason.REQUEUED:
            raise ValidationError("priority 'requeued' is granted by the hall, not requested")
        contact = _clean_contact(callback_contact)
        if when_unstaffed == Unstaffed.CALLBACK and contact is None:
            raise ValidationError("a callback request needs a contact (phone number)")
        department = self.catalog.department_of(matter_id)
        key = matter_key(matter_id)
        day = self._local(self.clock.now()).strftime("%Y%m%d")
        reads = Prefetch(seqs=["ticket"], queue_lens=[key], duty_counts=[matter_id],
                         counters=[f"number:{department.id}:{day}"],
                         idle_heads=[(primary_pool(matter_id), CHUNK)], queue_heads=[(key, 1)])
        async with self._step(reads) as step:
            now = step.now
            hours = self.catalog.hours_for(matter_id)
            if self.policy.enforce_hours and not hours.is_open(now):
                opens = hours.next_open(now)
                when = self._local(opens).strftime("%Y-%m-%d %H:%M") if opens else "unknown"
                raise OutOfHoursError(
                    f'matter "{matter.name}" is outside service hours; next opening {when}'
                )
            limit = matter.max_queue or self.policy.default_max_queue
            if await self.queues.length(matter_key(matter_id)) >= limit:
                raise QueueFullError(f'the queue for "{matter.name}" is full ({limit} waiting)')
            if await self.store.duty_count(matter_id) == 0:
                if matter_id not in self._served:
                    raise NoClerkOnDutyError(
                        f'no clerk serves matter "{matter.name}"', code="matter_not_served"
                    )
                if when_unstaffed == Unstaffed.REFUSE:
                    raise NoClerkOnDutyError(
                        f'no clerk serving "{matter.name}" is on duty now: join anyway '
                        "(wait) or leave a callback request that keeps your place"
                    )
            seq = await self.store.next_seq("ticket")
            day = self._local(now).strftime("%Y%m%d")
            counter = await self.store.incr(f"number:{department.id}:{day}")
            ticket = Ticket(
                id=f"T{seq:017d}",
                number=f"{department.letter}{counter:03d}",
                matter_id=matter_id,
                department_id=department.id,
                kind=kind,
                channel=channel,
                joined_at=now,
                score=order_score(now, priority, self.policy),
                service_point_id=service_point_id,
                resident_id=resident_id,
                priority=priority,
                callback_contact=contact,
                state_since=now,
            )
            await self.queues.enqueue(ticket)
            await self.store.set_ticket_active(ticket.id, True)
            await self._arm_ticket_timers(ticket, now)
            rank = await self.queues.rank(ticket)
            ticket.published_position = None if rank is None else rank + 1
            await self.store.shown_set(ticket.id, ticket.published_position)
            await self._save_ticket(ticket, now)
            step.touched.add(ticket.queue_key)
            self._event(
                step, EventKind.ENTER_QUEUE, ticket,
                position=ticket.published_position, priority=priority, service_kind=kind.value,
                callback=contact is not None, number=ticket.number,
            )
            self._ticket_notice(step, ticket, position=ticket.published_position)
            await self._dispatch_ticket(step, ticket)
            return await self._ticket(ticket.id)

    async def leave(self, ticket_id: str, *, reason: str = "left") -> Ticket:
        """The resident leaves: an abandon while queued or offered, an end while in session."""
        async with self._step(Prefetch(tickets=[ticket_id])) as step:
            ticket = await self._ticket(ticket_id)
            ticket.check("leave", TicketState.WAITING, TicketState.TRANSFERRED,
                         TicketState.OFFERED, TicketState.IN_SESSION)
            if ticket.state == TicketState.IN_SESSION:
                clerk = await self._clerk(_held_by(ticket))
                await self._end_session(step, ticket, clerk, ended_by="resident")
            else:
                await self._abandon(step, ticket, reason)
            return ticket

    async def request_callback(self, ticket_id: str, contact: str) -> Ticket:
        """Turn a waiting ticket into a callback request; it keeps its place in the queue."""
        cleaned = _clean_contact(contact)
        if cleaned is None:
            raise ValidationError("a callback request needs a contact (phone number)")
        async with self._step(Prefetch(tickets=[ticket_id])) as step:
            ticket = await self._ticket(ticket_id)
            ticket.check("request a callback for", TicketState.WAITING, TicketState.TRANSFERRED)
            ticket.callback_contact = cleaned
            ticket.disconnected_at = None
            await self.store.timer_cancel(f"grace:{ticket.id}")
            await self._save_ticket(ticket, step.now)
            # No clerk holds a waiting ticket: the clerk is the one it waits for by name
            # (a transfer to a clerk), else none.
            named = (await self._clerk(ticket.target_clerk_id)
                     if ticket.target_clerk_id is not None else None)
            self._event(step, EventKind.CALLBACK_REQUESTED, ticket, named)
            self._ticket_notice(step, ticket, callback=True)
            return ticket

    async def resident_disconnected(self, ticket_id: str) -> None:
        """Start the grace period; past it the ticket is abandoned (callbacks are exempt)."""
        async with self._step(Prefetch(tickets=[ticket_id])) as step:
            ticket = await self._ticket(ticket_id)
            if ticket.is_final or ticket.state == TicketState.WRAP_UP:
                return
            if ticket.callback_contact is not None and ticket.state != TicketState.IN_SESSION:
                return
            ticket.disconnected_at = step.now
            await self.store.timer_set(f"grace:{ticket.id}", step.now + self.policy.abandon_grace_s)
            await self._save_ticket(ticket, step.now)

    async def resident_reconnected(self, ticket_id: str) -> None:
        async with self._step(Prefetch(tickets=[ticket_id])) as step:
            ticket = await self._ticket(ticket_id)
            if ticket.disconnected_at is None:
                return
            ticket.disconnected_at = None
            await self.store.timer_cancel(f"grace:{ticket.id}")
            await self._save_ticket(ticket, step.now)

    async def positions(self, ticket_ids: Sequence[str]) -> list[PositionInfo]:
        """Position and ETA of each ticket; the position shown never increases (see docs).

        Not an engine command: it takes no lock (positions are advisory, and the store keeps
        "never increases" by itself, Store.positions_shown), reading committed state with one
        store step per queue, so a thousand residents asking cost no clerk any wait."""
        tickets = [await self._ticket(t) for t in ticket_ids]
        by_queue: dict[str, list[str]] = {}
        for ticket in tickets:
            if not ticket.is_final:
                by_queue.setdefault(ticket.queue_key, []).append(ticket.id)
        ranks: dict[str, tuple[int, int]] = {}
        for key, ids in by_queue.items():
            ranks.update((t, (shown, actual))
                         for t, shown, actual in await self.store.positions_shown(key, ids))
        return await self._position_infos(tickets, ranks)

    async def _position_infos(self, tickets: Sequence[Ticket],
                              ranks: dict[str, tuple[int, int]]) -> list[PositionInfo]:
        """Each ticket's PositionInfo from its ``(shown, actual)`` rank (final or unranked:
        no position)."""
        infos = []
        for ticket in tickets:
            found = None if ticket.is_final else ranks.get(ticket.id)
            if found is None:
                infos.append(PositionInfo(ticket.id, ticket.number, ticket.state.value,
                                          None, None, True))
                continue
            eta, staffed = await self.queues.estimate(ticket, found[1])
            infos.append(PositionInfo(ticket.id, ticket.number, ticket.state.value, found[0],
                                      eta, staffed))
        return infos

    async def position(self, ticket_id: str) -> PositionInfo:
        return (await self.positions([ticket_id]))[0]

    async def queue_positions(self, queue_key: str) -> list[PositionInfo]:
        """Every ticket of a queue with its position and ETA, in queue order, for the
        position pusher: one store step for the ranks and one or two for the ETA's inputs,
        whatever the queue's length; no lock. ``number`` and ``state`` are not read (None)."""
        kind, _, ident = queue_key.partition(":")
        ranked = await self.store.positions_shown(queue_key)
        if kind != "matter":
            # A clerk's queue of transfers (a few tickets, of any matter): ticket by ticket.
            tickets = [await self._ticket(t) for t, _, _ in ranked]
            return await self._position_infos(
                tickets, {t: (shown, actual) for t, shown, actual in ranked})
        if not ranked:
            return []
        clerks = await self.store.duty_count(ident)
        handle = await self.queues.handle_time(ident) if clerks else 0.0
        return [PositionInfo(t, None, None, shown, eta_s(actual, clerks, handle), clerks > 0)
                for t, shown, actual in ranked]

    # ------------------------------------------------------------------ clerks
    async def login(self, clerk_id: str) -> Clerk:
        """Log in and become available (idempotent for a clerk already logged in)."""
        async with self._step(self._freeing(clerk_id)) as step:
            clerk = await self._clerk(clerk_id)
            if clerk.state == ClerkState.LOGGED_OUT:
                clerk.missed_in_row = 0
                await self._set_clerk(step, clerk, ClerkState.AVAILABLE)
                await self._save_clerk(clerk, step.now)
                await self._dispatch_clerk(step, clerk)
            return await self._clerk(clerk_id)

    async def logout(self, clerk_id: str) -> Clerk:
        async with self._step(Prefetch(clerks=[clerk_id])) as step:
            clerk = await self._clerk(clerk_id)
            clerk.check("log out", ClerkState.AVAILABLE, ClerkState.ON_BREAK)
            await self._logout(step, clerk, reason="logout")
            return clerk

    async def set_break(self, clerk_id: str, reason: str) -> Clerk:
        """Go on break now, or after the current session's wrap-up if one is under way."""
        text = (reason or "").strip()
        if not text or len(text) > _MAX_BREAK_REASON:
            raise ValidationError(f"a break needs a reason of 1 to {_MAX_BREAK_REASON} characters")
        async with self._step(Prefetch(clerks=[clerk_id])) as step:
            clerk = await self._clerk(clerk_id)
            clerk.check("start a break for", ClerkState.AVAILABLE, ClerkState.OFFERED,
                        ClerkState.IN_SESSION, ClerkState.WRAP_UP, ClerkState.ON_BREAK)
            if clerk.state in (ClerkState.IN_SESSION, ClerkState.WRAP_UP):
                clerk.pending_break = text
                step.notices.append(Notice(NoticeKind.CLERK, clerk_id=clerk.id,
                                           data={"state": clerk.state.value,
                                                 "pending_break": text,
                                                 "clerk": clerk.to_dict()}))
            elif clerk.state == ClerkState.OFFERED:
                ticket = await self._ticket(_offered(clerk))
                await self._return_offer(step, ticket, clerk, missed=False,
                                         then=ClerkState.ON_BREAK, reason=text)
            else:
                await self._set_clerk(step, clerk, ClerkState.ON_BREAK, reason=text)
            await self._save_clerk(clerk, step.now)
            return clerk

    async def set_available(self, clerk_id: str) -> Clerk:
        """End a break (or cancel a pending one) and take the next ticket."""
        async with self._step(self._freeing(clerk_id)) as step:
            clerk = await self._clerk(clerk_id)
            if clerk.state == ClerkState.LOGGED_OUT:
                raise InvalidStateError(f'Cannot make clerk {clerk.id} available in state '
                                        f'"{clerk.state}": log in first')
            if clerk.state == ClerkState.ON_BREAK:
                clerk.missed_in_row = 0
                await self._set_clerk(step, clerk, ClerkState.AVAILABLE)
                await self._save_clerk(clerk, step.now)
                await self._dispatch_clerk(step, clerk)
            elif clerk.pending_break is not None:
                clerk.pending_break = None
                await self._save_clerk(clerk, step.now)
            return await self._clerk(clerk_id)

    async def accept(self, clerk_id: str, ticket_id: str) -> Ticket:
        """Accept the offer: the session starts. An offer past its deadline cannot be taken."""
        async with self._step(self._offered_to(clerk_id, ticket_id)) as step:
            clerk = await self._clerk(clerk_id)
            ticket = await self._ticket(ticket_id)
            self._check_offer(clerk, ticket, "accept")
            assert ticket.offer_deadline is not None
            if step.now >= ticket.offer_deadline:
                # The timer has not fired yet, but the offer is over: settle it as a miss first.
                await self.store.timer_cancel(f"offer:{ticket.id}")
                await self._return_offer(step, ticket, clerk, missed=True)
                raise InvalidStateError(
                    f"Cannot accept ticket {ticket.number} ({ticket.id}): the offer expired"
                )
            await self.store.timer_cancel(f"offer:{ticket.id}")
            await self.queues.remove(ticket)
            step.touched.add(ticket.queue_key)
            ticket.set_state(TicketState.IN_SESSION, step.now)
            ticket.session_started_at = step.now
            ticket.offer_deadline = None
            clerk.missed_in_row = 0
            await self._set_clerk(step, clerk, ClerkState.IN_SESSION)
            wait = step.now - ticket.joined_at
            self._event(step, EventKind.ACCEPT, ticket, clerk, wait_s=wait)
            self._event(step, EventKind.SESSION_START, ticket, clerk, wait_s=wait)
            await self._save_ticket(ticket, step.now)
            await self._save_clerk(clerk, step.now)
            self._ticket_notice(step, ticket)
            return ticket

    async def decline(self, clerk_id: str, ticket_id: str) -> Ticket:
        """Decline the offer: the ticket goes back with its place, to the next clerk."""
        offer = self._offered_to(clerk_id, ticket_id)
        pools = [(primary_pool(m), CHUNK) for m in sorted(self.catalog.clerk_matters(clerk_id))]
        reads = replace(self._freeing(clerk_id), tickets=offer.tickets, idle_heads=pools,
                        queue_heads=offer.queue_heads, queue_scores=offer.queue_scores)
        async with self._step(reads) as step:
            clerk = await self._clerk(clerk_id)
            ticket = await self._ticket(ticket_id)
            self._check_offer(clerk, ticket, "decline")
            await self.store.timer_cancel(f"offer:{ticket.id}")
            await self._return_offer(step, ticket, clerk, missed=False)
            return await self._ticket(ticket_id)

    async def end_session(self, clerk_id: str, ticket_id: str) -> Ticket:
        """The clerk ends the session: both move to wrap-up."""
        async with self._step(Prefetch(tickets=[ticket_id], clerks=[clerk_id])) as step:
            clerk = await self._clerk(clerk_id)
            ticket = await self._ticket(ticket_id)
            self._check_holds(clerk, ticket, "end the session of")
            await self._end_session(step, ticket, clerk, ended_by="clerk")
            return ticket

    async def set_outcome(self, clerk_id: str, outcome: str, reason: str | None = None) -> Clerk:
        """Record the outcome during the session or wrap-up (wrap-up may then end on time)."""
        code, text = parse_outcome(outcome, reason)
        async with self._step(self._freeing(clerk_id)) as step:
            clerk = await self._clerk(clerk_id)
            clerk.check("record an outcome for", ClerkState.IN_SESSION, ClerkState.WRAP_UP)
            clerk.outcome, clerk.outcome_reason = code.value, text
            if clerk.state == ClerkState.WRAP_UP and clerk.wrapup_overdue:
                await self._finish_wrapup(step, clerk)
            await self._save_clerk(clerk, step.now)
            return clerk

    async def finish_wrapup(
        self, clerk_id: str, outcome: str | None = None, reason: str | None = None
    ) -> Clerk:
        """Finish wrap-up early (or on time); an outcome is mandatory."""
        parsed = parse_outcome(outcome, reason) if outcome is not None else None
        async with self._step(self._freeing(clerk_id)) as step:
            clerk = await self._clerk(clerk_id)
            clerk.check("finish wrap-up for", ClerkState.WRAP_UP)
            if parsed is not None:
                clerk.outcome, clerk.outcome_reason = parsed[0].value, parsed[1]
            if clerk.outcome is None:
                raise ValidationError("an outcome code is required to finish wrap-up")
            await self._finish_wrapup(step, clerk)
            await self._save_clerk(clerk, step.now)
            return clerk

    async def extend_wrapup(self, clerk_id: str, seconds: float) -> Clerk:
        async with self._step(Prefetch(clerks=[clerk_id])) as step:
            clerk = await self._clerk(clerk_id)
            clerk.check("extend wrap-up for", ClerkState.WRAP_UP)
            if not seconds > 0:
                raise ValidationError("a wrap-up extension must be a positive number of seconds")
            budget = self.policy.wrapup_max_extension_s - clerk.wrapup_extended_s
            if seconds > budget:
                raise ValidationError(
                    f"wrap-up can be extended by at most {budget:.0f} more seconds"
                )
            base = clerk.wrapup_deadline or step.now
            if clerk.wrapup_overdue:
                base, clerk.wrapup_overdue = step.now, False
            clerk.wrapup_deadline = base + seconds
            clerk.wrapup_extended_s += seconds
            await self.store.timer_set(f"wrapup:{clerk.id}", clerk.wrapup_deadline)
            self._event(step, EventKind.WRAPUP_EXTEND, *await self._wrapup_ticket(clerk),
                        seconds=seconds, ticket=clerk.ticket_id)
            await self._save_clerk(clerk, step.now)
            return clerk

    async def _wrapup_ticket(self, clerk: Clerk) -> tuple[Ticket | None, Clerk]:
        """The ticket a clerk's wrap-up event is about, for its log columns."""
        ticket = None if clerk.ticket_id is None else await self.store.get_ticket(clerk.ticket_id)
        return ticket, clerk

    async def with_ticket_fields(self, event: HallEvent) -> HallEvent:
        """``event`` (a file event: it names only its ticket) with the columns reports group
        by, from the ticket as it is now: its clerk, matter, department, point and channel.
        Unchanged if the ticket is gone (files outlive the live state)."""
        if event.ticket_id is None:
            return event
        ticket = await self.store.get_ticket(event.ticket_id)
        if ticket is None:
            return event
        return HallEvent(event.kind, event.at, ticket.id, event.clerk_id or ticket.clerk_id,
                         ticket.matter_id, ticket.department_id, ticket.service_point_id,
                         ticket.channel.value, event.data, event.seq)

    async def transfer(
        self,
        clerk_id: str,
        ticket_id: str,
        *,
        to_matter: str | None = None,
        to_clerk: str | None = None,
        allow_wait: bool = False,
        note: str | None = None,
    ) -> Ticket:
        """Hand the resident to another matter's queue or a named clerk, keeping wait credit."""
        if to_matter is None and to_clerk is None:
            raise ValidationError("a transfer needs a target matter or clerk")
        named = [clerk_id] if to_clerk is None else [clerk_id, to_clerk]
        async with self._step(Prefetch(tickets=[ticket_id], clerks=named)) as step:
            clerk = await self._clerk(clerk_id)
            ticket = await self._ticket(ticket_id)
            self._check_holds(clerk, ticket, "transfer")
            new_matter = self._matter(to_matter or ticket.matter_id)
            target: Clerk | None = None
            if to_clerk is not None:
                target = await self._clerk(to_clerk)
                if target.id == clerk.id:
                    raise ValidationError("cannot transfer a ticket to its own clerk")
                if target.state == ClerkState.LOGGED_OUT:
                    raise NoClerkOnDutyError(f"clerk {target.id} is not logged in")
            else:
                if new_matter.id == ticket.matter_id:
                    raise ValidationError(f'the ticket is already for "{new_matter.name}"')
                if new_matter.id not in self._served:
                    raise NoClerkOnDutyError(
                        f'no clerk serves matter "{new_matter.name}"', code="matter_not_served"
                    )
                if await self.store.duty_count(new_matter.id) == 0 and not allow_wait:
                    raise NoClerkOnDutyError(
                        f'no clerk serving "{new_matter.name}" is on duty; transfer with '
                        "allow_wait to let the resident wait"
                    )
            from_matter = ticket.matter_id
            ticket.session_ended_at = step.now
            talk = step.now - (ticket.session_started_at or step.now)
            self._event(step, EventKind.SESSION_END, ticket, clerk, talk_s=talk,
                        ended_by="transfer")
            ticket.set_state(TicketState.TRANSFERRED, step.now)
            ticket.matter_id = new_matter.id
            ticket.department_id = self.catalog.department_of(new_matter.id).id
            if ticket.kind not in new_matter.kinds:
                ticket.kind = ServiceKind.CONSULTATION
            ticket.target_clerk_id = target.id if target else None
            ticket.clerk_id = None
            ticket.transfers += 1
            ticket.transfer_note = note
            ticket.widened = False
            ticket.told_next = False
            ticket.published_position = None  # a new queue: a new count, same wait credit
            await self.store.shown_set(ticket.id, None)
            # A transfer is a new request: earlier declines do not hold against it. Both sides
            # of each cooldown are cleared, so routing from either side agrees.
            for skipped_id in list(ticket.skip_clerks):
                skipper = await self.store.get_clerk(skipped_id)
                if skipper is not None and skipper.skipped.pop(ticket.id, None) is not None:
                    await self._save_clerk(skipper, step.now)
            ticket.skip_clerks = {}
            await self.queues.enqueue(ticket)
            await self._arm_ticket_timers(ticket, step.now)
            step.touched.add(ticket.queue_key)
            self._event(step, EventKind.TRANSFER, ticket, clerk, from_matter=from_matter,
                        to_matter=new_matter.id, from_clerk=clerk.id,
                        to_clerk=target.id if target else None, note=note)
            await self._save_ticket(ticket, step.now)
            clerk.outcome, clerk.outcome_reason = Outcome.TRANSFERRED.value, note
            await self._start_wrapup(step, clerk, ticket)
            self._ticket_notice(step, ticket, transferred_from=clerk.id)
            await self._dispatch_ticket(step, ticket)
            return await self._ticket(ticket.id)

    async def clerk_disconnected(self, clerk_id: str) -> Clerk:
        """The clerk's connection is gone for good: their resident goes back to the front."""
        async with self._step(Prefetch(clerks=[clerk_id])) as step:
            clerk = await self._clerk(clerk_id)
            clerk.pending_break = None  # first: every notice below shows the clerk as left
            gone = ClerkState.LOGGED_OUT
            if clerk.state == ClerkState.OFFERED:
                ticket = await self._ticket(_offered(clerk))
                await self.store.timer_cancel(f"offer:{ticket.id}")
                await self._return_offer(step, ticket, clerk, missed=False, then=gone,
                                         reason="disconnected")
            elif clerk.state == ClerkState.IN_SESSION:
                ticket = await self._ticket(_offered(clerk))
                await self._requeue(step, ticket, clerk, reason="clerk_disconnected")
                await self._set_clerk(step, clerk, gone, reason="disconnected")
            elif clerk.state == ClerkState.WRAP_UP:
                if clerk.outcome is None:
                    clerk.outcome = Outcome.NOT_RECORDED.value
                await self._finish_wrapup(step, clerk, then=gone)
            elif clerk.state != gone:
                await self._set_clerk(step, clerk, gone, reason="disconnected")
            clerk.pending_break = None
            await self._save_clerk(clerk, step.now)
            await self._retarget_named(step, clerk)
            return clerk

    # ------------------------------------------------------------------ supervisors
    async def snapshot(self) -> dict[str, Any]:
        """Every queue and clerk now, JSON-able (wallboard, /api/queues).

        Read without the hall lock: it is built once a second for views that are as of
        ``at``, and under the lock its dozens of reads made every engine command wait (each
        read sees committed state; the figures of one matter may be a command apart)."""
        now = self.clock.now()
        matters = await asyncio.gather(*(self._matter_now(m, now)
                                          for m in self.catalog.matters.values()))
        clerks = []
        for clerk_id in await self.store.clerk_ids():
            clerk = await self.store.get_clerk(clerk_id)
            if clerk is None:
                continue
            clerks.append({
                "id": clerk.id,
                "name": clerk.name,
                "state": clerk.state.value,
                "since": clerk.state_since,
                "ticket_id": clerk.ticket_id,
                "break_reason": clerk.break_reason,
                "missed_in_row": clerk.missed_in_row,
                "wrapup_overdue": clerk.wrapup_overdue,
            })
        return {"at": now, "matters": list(matters), "clerks": clerks,
                "active_tickets": len(await self.store.active_ticket_ids())}

    async def _matter_now(self, matter: Matter, now: float) -> dict[str, Any]:
        key = matter_key(matter.id)
        head = await self.store.queue_range(key, 0, 1)
        head_wait = head_joined = None
        if head:
            first = await self.store.get_ticket(head[0])
            if first is not None:
                head_joined = first.joined_at
                head_wait = now - first.joined_at
        return {
            "id": matter.id,
            "name": matter.name,
            "department_id": matter.department_id,
            "queued": await self.store.queue_len(key),
            "on_duty": await self.store.duty_count(matter.id),
            "handle_time_s": await self.queues.handle_time(matter.id),
            "head_wait_s": head_wait,
            "head_joined_at": head_joined,
        }

    async def rate(self, ticket_id: str, score: int, comment: str | None = None) -> Ticket:
        """The resident rates a session that reached a clerk: once, 1 to 5, optional comment."""
        if not 1 <= score <= 5:
            raise ValidationError("a rating is a whole number from 1 to 5")
        text = (comment or "").strip() or None
        if text is not None and len(text) > _MAX_RATING_COMMENT:
            raise ValidationError(f"a comment is at most {_MAX_RATING_COMMENT} characters")
        async with self._step(Prefetch(tickets=[ticket_id])) as step:
            ticket = await self._ticket(ticket_id)
            ticket.check("rate", TicketState.WRAP_UP, TicketState.DONE)
            if ticket.rating is not None:
                raise InvalidStateError(f"ticket {ticket.number} has already been rated")
            ticket.rating = score
            await self._save_ticket(ticket, step.now)
            self._event(step, EventKind.SESSION_RATING, ticket, None, score=score,
                        comment=text, clerk=ticket.clerk_id)
            return ticket

    async def record_monitor(self, ticket_id: str, supervisor_id: str, *, joined: bool,
                             reason: str | None = None) -> Ticket:
        """Log a supervisor silently joining (or leaving) a live session; ``reason``
        ``session_ended`` when the session ended under the monitor."""
        async with self._step(Prefetch(tickets=[ticket_id])) as step:
            ticket = await self._ticket(ticket_id)
            if joined:
                ticket.check("monitor", TicketState.IN_SESSION)
            kind = EventKind.MONITOR_JOIN if joined else EventKind.MONITOR_LEAVE
            extra = {} if reason is None else {"reason": reason}
            self._event(step, kind, ticket, None, supervisor=supervisor_id, **extra)
            return ticket

    async def record_note(self, ticket_id: str, clerk_id: str, text: str) -> SessionNote:
        """Log the clerk's note on the session they hold now (the ticket is in session)."""
        cleaned = (text or "").strip()
        if not cleaned or len(cleaned) > MAX_NOTE_CHARS:
            raise ValidationError(f"a note needs 1 to {MAX_NOTE_CHARS} characters")
        async with self._step(Prefetch(tickets=[ticket_id], clerks=[clerk_id])) as step:
            clerk = await self._clerk(clerk_id)
            ticket = await self._ticket(ticket_id)
            self._check_holds(clerk, ticket, "write a note on")
            note = SessionNote(f"N{await self.store.next_seq('note'):017d}", cleaned, step.now)
            self._event(step, EventKind.CLERK_NOTE, ticket, clerk, note_id=note.id, text=cleaned)
            return note

    async def record_call_quality(self, ticket_id: str, clerk_id: str | None,
                                  data: dict[str, Any]) -> None:
        """Log the call funnel and quality of a session that ended (signaling/call_quality.py
        builds ``data``); ``clerk_id``: that session's clerk (after a transfer the ticket
        names the next one)."""
        async with self._step(Prefetch(tickets=[ticket_id])) as step:
            ticket = await self._ticket(ticket_id)
            step.events.append(HallEvent(
                kind=EventKind.CALL_QUALITY, at=step.now, ticket_id=ticket.id,
                clerk_id=clerk_id or ticket.clerk_id, matter_id=ticket.matter_id,
                department_id=ticket.department_id, service_point_id=ticket.service_point_id,
                channel=ticket.channel.value, data=data))

    async def record_kiosk(self, service_point_id: str, kind: EventKind, **data: Any) -> None:
        """Log a kiosk's presence or health change (the hub decides what is a change)."""
        if kind not in _KIOSK_EVENTS:
            raise ValidationError(f'"{kind}" is not a kiosk event')
        if service_point_id not in self.catalog.service_points:
            raise NotFoundError(f'service point "{service_point_id}" does not exist')
        async with self._step() as step:
            step.events.append(HallEvent(kind=kind, at=step.now,
                                         service_point_id=service_point_id,
                                         channel="kiosk", data=data))

    async def day_stats(
        self, matter_ids: Iterable[str] | None = None
    ) -> dict[str, dict[str, int]]:
        """Today's (local date) answered, answered within the service level, and abandoned
        tickets per matter; every catalog matter unless ``matter_ids`` is given."""
        prefix = self._day_prefix(self.clock.now())
        ids = list(self.catalog.matters if matter_ids is None else matter_ids)
        for matter_id in ids:
            self._matter(matter_id)
        kinds = ("answered", "answered_sl", "abandoned")
        values = await self.store.counters_get(
            [f"{prefix}{kind}:{matter_id}" for matter_id in ids for kind in kinds])
        return {
            matter_id: dict(zip(("answered", "answered_in_sl", "abandoned"),
                                values[3 * i : 3 * i + 3], strict=True))
            for i, matter_id in enumerate(ids)
        }

    async def queue_tickets(self, matter_id: str, limit: int = 50) -> list[Ticket]:
        """The first ``limit`` tickets of a matter's queue, in order."""
        self._matter(matter_id)
        # No lock, like the snapshot: a ticket that left meanwhile is left out.
        ids = await self.store.queue_range(matter_key(matter_id), 0, limit)
        found = [await self.store.get_ticket(t) for t in ids]
        return [t for t in found
                if t is not None and (t.is_queued or t.state == TicketState.OFFERED)]

    async def get_ticket(self, ticket_id: str) -> Ticket:
        ticket = await self._ticket(ticket_id)
        if ticket.is_queued or ticket.state == TicketState.OFFERED:
            # The record keeps the position shown at join; the store, the lowest shown since
            # (positions are read without the engine, Store.positions_shown).
            found = await self.store.positions_shown(ticket.queue_key, [ticket.id])
            if found:
                ticket.published_position = found[0][1]
        return ticket

    async def get_clerk(self, clerk_id: str) -> Clerk:
        return await self._clerk(clerk_id)

    # ------------------------------------------------------------------ timers
    async def next_deadline(self) -> float | None:
        return await self.store.timer_next()

    async def tick(self, batch: int = 64) -> int:
        """Fire every timer that is due; returns how many fired."""
        # A look without the hall lock first: the runner calls this after every command, and
        # with several processes the lock is the one thing they all queue for.
        earliest = await self.store.timer_next()
        if earliest is None or earliest > self.clock.now():
            return 0
        fired = 0
        while True:
            async with self._step() as step:
                due = await self.store.timers_due(step.now, batch)
                for key, _ in due:
                    await self.store.timer_cancel(key)
                    await self._fire(step, key)
            fired += len(due)
            if len(due) < batch:
                return fired

    async def _fire(self, step: _Step, key: str) -> None:
        kind, _, ident = key.partition(":")
        if kind == "wrapup":
            clerk = await self.store.get_clerk(ident)
            if clerk is not None and clerk.state == ClerkState.WRAP_UP:
                await self._wrapup_due(step, clerk)
            return
        ticket = await self.store.get_ticket(ident)
        if ticket is None or ticket.is_final:
            return  # a stale timer: the ticket moved on
        if kind == "offer" and ticket.state == TicketState.OFFERED:
            clerk = await self._clerk(_held_by(ticket))
            await self._return_offer(step, ticket, clerk, missed=True)
        elif kind == "grace" and ticket.disconnected_at is not None:
            if ticket.state == TicketState.IN_SESSION:
                clerk = await self._clerk(_held_by(ticket))
                await self._end_session(step, ticket, clerk, ended_by="resident_disconnected")
            elif ticket.state != TicketState.WRAP_UP:
                await self._abandon(step, ticket, "disconnected")
        elif kind == "widen" and ticket.is_queued and ticket.target_clerk_id is None:
            ticket.widened = True
            await self.queues.make_ready(ticket)
            await self._save_ticket(ticket, step.now)
            await self._dispatch_ticket(step, ticket)
        elif kind == "retry" and ticket.is_queued:
            await self._dispatch_ticket(step, ticket)
        elif kind == "maxwait":
            if ticket.is_queued:
                await self._time_out(step, ticket)
            elif ticket.state == TicketState.OFFERED:
                # Let the offer run its course; look again just after it would expire.
                await self.store.timer_set(key, (ticket.offer_deadline or step.now) + 1)

    async def _arm_ticket_timers(self, ticket: Ticket, now: float) -> None:
        if self.policy.max_wait_s is not None:
            await self.store.timer_set(f"maxwait:{ticket.id}",
                                       ticket.joined_at + self.policy.max_wait_s)
        matter = self.catalog.matters[ticket.matter_id]
        if (
            matter.widen_after_s is not None
            and ticket.target_clerk_id is None
            and matter.id in self._widenable
        ):
            await self.store.timer_set(f"widen:{ticket.id}",
                                       max(now, ticket.joined_at + matter.widen_after_s))

    async def _cancel_ticket_timers(self, ticket: Ticket) -> None:
        for prefix in _TICKET_TIMERS:
            await self.store.timer_cancel(f"{prefix}:{ticket.id}")

    # ------------------------------------------------------------------ transitions
    def _check_offer(self, clerk: Clerk, ticket: Ticket, action: str) -> None:
        clerk.check(f"{action} an offer for", ClerkState.OFFERED)
        ticket.check(action, TicketState.OFFERED)
        if clerk.ticket_id != ticket.id or ticket.clerk_id != clerk.id:
            raise NotAllowedError(f"ticket {ticket.number} is not offered to clerk {clerk.id}")

    def _check_holds(self, clerk: Clerk, ticket: Ticket, action: str) -> None:
        clerk.check(action + " a ticket for", ClerkState.IN_SESSION)
        ticket.check(action, TicketState.IN_SESSION)
        if clerk.ticket_id != ticket.id or ticket.clerk_id != clerk.id:
            raise NotAllowedError(f"ticket {ticket.number} is not in session with {clerk.id}")

    async def _dispatch_ticket(self, step: _Step, ticket: Ticket) -> None:
        clerk = await self.router.clerk_for(ticket, step.now)
        if clerk is not None:
            await self._offer(step, ticket, clerk)

    async def _dispatch_clerk(self, step: _Step, clerk: Clerk) -> None:
        if clerk.state != ClerkState.AVAILABLE:
            return
        ticket = await self.router.ticket_for(clerk, step.now)
        if ticket is not None:
            await self._offer(step, ticket, clerk)

    async def _offer(self, step: _Step, ticket: Ticket, clerk: Clerk) -> None:
        ticket.set_state(TicketState.OFFERED, step.now)
        ticket.clerk_id = clerk.id
        ticket.offered_at = step.now
        ticket.offer_deadline = step.now + self.policy.offer_timeout_s
        if ticket.first_offer_at is None:
            ticket.first_offer_at = step.now
        await self.queues.unready(ticket)
        clerk.ticket_id = ticket.id
        await self._set_clerk(step, clerk, ClerkState.OFFERED)
        await self.store.timer_set(f"offer:{ticket.id}", ticket.offer_deadline)
        await self._save_ticket(ticket, step.now)
        await self._save_clerk(clerk, step.now)
        self._event(step, EventKind.OFFER, ticket, clerk,
                    timeout_s=self.policy.offer_timeout_s, widened=ticket.widened)
        step.notices.append(Notice(
            NoticeKind.OFFER, ticket_id=ticket.id, clerk_id=clerk.id, queue_key=ticket.queue_key,
            data={"deadline": ticket.offer_deadline, "timeout_s": self.policy.offer_timeout_s,
                  "number": ticket.number, "matter_id": ticket.matter_id,
                  "kind": ticket.kind.value, "priority": ticket.priority,
                  "callback": ticket.callback_contact is not None,
                  "callback_contact": ticket.callback_contact,
                  "transfers": ticket.transfers, "transfer_note": ticket.transfer_note,
                  "wait_s": step.now - ticket.joined_at},
        ))
        self._ticket_notice(step, ticket)

    async def _return_offer(
        self, step: _Step, ticket: Ticket, clerk: Clerk, *, missed: bool,
        then: ClerkState = ClerkState.AVAILABLE, reason: str | None = None,
    ) -> None:
        """An offer ended without accept (miss, decline, clerk gone): the ticket keeps its place
        and goes to the next clerk; this clerk is not offered it again during the cooldown."""
        until = step.now + self.policy.cooldown_s
        ticket.skip_clerks[clerk.id] = until
        clerk.skipped[ticket.id] = until
        ticket.set_state(TicketState.WAITING, step.now)
        ticket.clerk_id = None
        ticket.offer_deadline = None
        await self.queues.make_ready(ticket)
        await self.store.timer_set(f"retry:{ticket.id}", until)
        clerk.ticket_id = None
        auto_break = False
        if missed:
            clerk.missed_in_row += 1
            auto_break = clerk.missed_in_row >= self.policy.max_missed_offers
            self._event(step, EventKind.MISS, ticket, clerk, missed_in_row=clerk.missed_in_row)
        else:
            self._event(step, EventKind.DECLINE, ticket, clerk)
        step.notices.append(Notice(
            NoticeKind.OFFER_WITHDRAWN, ticket_id=ticket.id, clerk_id=clerk.id,
            data={"reason": "timeout" if missed else "declined"},
        ))
        if auto_break and then == ClerkState.AVAILABLE:
            await self._set_clerk(step, clerk, ClerkState.ON_BREAK, reason="missed_offers",
                                  auto=True)
        else:
            await self._set_clerk(step, clerk, then, reason=reason)
        await self._save_ticket(ticket, step.now)
        await self._save_clerk(clerk, step.now)
        self._ticket_notice(step, ticket)
        step.touched.add(ticket.queue_key)
        await self._dispatch_ticket(step, ticket)
        await self._dispatch_clerk(step, await self._clerk(clerk.id))

    async def _abandon(self, step: _Step, ticket: Ticket, reason: str) -> None:
        rank = await self.queues.rank(ticket)
        position = None if rank is None else rank + 1
        clerk: Clerk | None = None
        if ticket.state == TicketState.OFFERED:
            clerk = await self._clerk(_held_by(ticket))
            clerk.ticket_id = None
            step.notices.append(Notice(NoticeKind.OFFER_WITHDRAWN, ticket_id=ticket.id,
                                       clerk_id=clerk.id, data={"reason": "resident_left"}))
            await self._set_clerk(step, clerk, ClerkState.AVAILABLE)
            await self._save_clerk(clerk, step.now)
        await self.queues.remove(ticket)
        await self._cancel_ticket_timers(ticket)
        step.touched.add(ticket.queue_key)
        wait = step.now - ticket.joined_at
        self._event(step, EventKind.ABANDON, ticket, position=position, wait_s=wait,
                    reason=reason, state=ticket.state.value)
        ticket.set_state(TicketState.ABANDONED, step.now)
        ticket.clerk_id = None
        await self._close_ticket(step, ticket)
        if clerk is not None:
            await self._dispatch_clerk(step, clerk)

    async def _time_out(self, step: _Step, ticket: Ticket) -> None:
        rank = await self.queues.rank(ticket)
        await self.queues.remove(ticket)
        await self._cancel_ticket_timers(ticket)
        step.touched.add(ticket.queue_key)
        self._event(step, EventKind.TIMEOUT, ticket, position=None if rank is None else rank + 1,
                    wait_s=step.now - ticket.joined_at)
        ticket.set_state(TicketState.TIMED_OUT, step.now)
        await self._close_ticket(step, ticket)

    async def _close_ticket(self, step: _Step, ticket: Ticket) -> None:
        ticket.ended_at = step.now
        await self.store.set_ticket_active(ticket.id, False)
        await self.store.shown_set(ticket.id, None)
        await self._save_ticket(ticket, step.now)
        self._ticket_notice(step, ticket)

    async def _end_session(self, step: _Step, ticket: Ticket, clerk: Clerk, *,
                           ended_by: str) -> None:
        ticket.session_ended_at = step.now
        ticket.disconnected_at = None
        await self.store.timer_cancel(f"grace:{ticket.id}")
        talk = step.now - (ticket.session_started_at or step.now)
        self._event(step, EventKind.SESSION_END, ticket, clerk, talk_s=talk, ended_by=ended_by)
        ticket.set_state(TicketState.WRAP_UP, step.now)
        await self._save_ticket(ticket, step.now)
        await self._start_wrapup(step, clerk, ticket)
        self._ticket_notice(step, ticket, ended_by=ended_by)

    async def _start_wrapup(self, step: _Step, clerk: Clerk, ticket: Ticket) -> None:
        clerk.wrapup_deadline = step.now + self.policy.wrapup_s
        clerk.wrapup_extended_s = 0.0
        clerk.wrapup_overdue = False
        await self._set_clerk(step, clerk, ClerkState.WRAP_UP)
        await self.store.timer_set(f"wrapup:{clerk.id}", clerk.wrapup_deadline)
        self._event(step, EventKind.WRAPUP_START, ticket, clerk, deadline=clerk.wrapup_deadline)
        await self._save_clerk(clerk, step.now)

    async def _wrapup_due(self, step: _Step, clerk: Clerk) -> None:
        if clerk.outcome is not None:
            await self._finish_wrapup(step, clerk)
            await self._save_clerk(clerk, step.now)
            return
        # The outcome is mandatory: the clerk stays in wrap-up (no new offers) and the console
        # and the supervisors are told, rather than the record being closed without one.
        clerk.wrapup_overdue = True
        await self._save_clerk(clerk, step.now)
        step.notices.append(Notice(NoticeKind.WRAPUP_OVERDUE, clerk_id=clerk.id,
                                   ticket_id=clerk.ticket_id))

    async def _finish_wrapup(
        self, step: _Step, clerk: Clerk, *, then: ClerkState | None = None
    ) -> None:
        assert clerk.outcome is not None
        ticket = await self._ticket(_offered(clerk))
        await self.store.timer_cancel(f"wrapup:{clerk.id}")
        started = ticket.session_started_at or step.now
        wrapup = step.now - (ticket.session_ended_at or step.now)
        if ticket.state == TicketState.WRAP_UP and ticket.clerk_id == clerk.id:
            ticket.outcome, ticket.outcome_reason = clerk.outcome, clerk.outcome_reason
            self._event(step, EventKind.WRAPUP_END, ticket, clerk, outcome=clerk.outcome,
                        reason=clerk.outcome_reason, wrapup_s=wrapup,
                        handle_s=step.now - started)
            ticket.set_state(TicketState.DONE, step.now)
            self._event(step, EventKind.DONE, ticket, clerk, outcome=clerk.outcome)
            if clerk.outcome == Outcome.UNRESOLVED:
                # 办不成事: the case is due with the outcome, in the same transaction, so no
                # outage of the records database (where the shell files it) can lose it.
                pending = PendingCase(
                    ticket_id=ticket.id, matter_id=ticket.matter_id,
                    department_id=ticket.department_id, reason=ticket.outcome_reason,
                    clerk_id=clerk.id, resident_id=ticket.resident_id,
                    service_point_id=ticket.service_point_id, at=step.now)
                await self.store.followup_add(pending.key, pending.to_dict())
            await self._close_ticket(step, ticket)
            await self.queues.learn_handle_time(ticket.matter_id, step.now - started)
        else:
            # The ticket moved on (transferred): this closes only the clerk's part of it.
            step.events.append(HallEvent(
                kind=EventKind.WRAPUP_END, at=step.now, ticket_id=ticket.id, clerk_id=clerk.id,
                matter_id=None, department_id=None, service_point_id=ticket.service_point_id,
                channel=ticket.channel.value,
                data={"outcome": clerk.outcome, "reason": clerk.outcome_reason,
                      "wrapup_s": step.now - (clerk.state_since or step.now)},
            ))
        clerk.ticket_id = None
        clerk.outcome = clerk.outcome_reason = None
        clerk.wrapup_deadline = None
        clerk.wrapup_overdue = False
        clerk.sessions_handled += 1
        if then is not None:
            await self._set_clerk(step, clerk, then, reason="disconnected")
        elif clerk.pending_break is not None:
            reason, clerk.pending_break = clerk.pending_break, None
            await self._set_clerk(step, clerk, ClerkState.ON_BREAK, reason=reason)
        else:
            await self._set_clerk(step, clerk, ClerkState.AVAILABLE)
        await self._save_clerk(clerk, step.now)
        await self._dispatch_clerk(step, clerk)

    async def _requeue(self, step: _Step, ticket: Ticket, clerk: Clerk, *, reason: str) -> None:
        """A session dropped through no fault of the resident: back to the front of the queue."""
        ticket.session_ended_at = step.now
        self._event(step, EventKind.SESSION_END, ticket, clerk,
                    talk_s=step.now - (ticket.session_started_at or step.now), ended_by=reason)
        ticket.set_state(TicketState.WAITING, step.now)
        ticket.clerk_id = None
        ticket.priority = PriorityReason.REQUEUED
        ticket.requeues += 1
        ticket.told_next = False
        # The score is unchanged: the ticket was at the head of its queue when it was offered,
        # so it goes back ahead of everyone who was behind it then.
        await self.queues.enqueue(ticket)
        step.touched.add(ticket.queue_key)
        self._event(step, EventKind.REQUEUE, ticket, clerk, reason=reason)  # who lost it
        await self._save_ticket(ticket, step.now)
        clerk.ticket_id = None
        self._ticket_notice(step, ticket, requeued=True)
        await self._dispatch_ticket(step, ticket)

    async def _logout(self, step: _Step, clerk: Clerk, *, reason: str) -> None:
        clerk.pending_break = None  # before: the change's notice shows the clerk as left
        await self._set_clerk(step, clerk, ClerkState.LOGGED_OUT, reason=reason)
        await self._save_clerk(clerk, step.now)
        await self._retarget_named(step, clerk)

    async def _retarget_named(self, step: _Step, clerk: Clerk) -> None:
        # Tickets transferred to this clerk by name go to their matter's queue, same place.
        key = clerk_key(clerk.id)
        while True:
            ids = await self.store.queue_range(key, 0, 32)
            if not ids:
                break
            for ticket_id in ids:
                ticket = await self._ticket(ticket_id)
                await self.queues.remove(ticket)
                ticket.target_clerk_id = None
                await self.queues.enqueue(ticket)
                await self._arm_ticket_timers(ticket, step.now)
                step.touched.add(ticket.queue_key)
                await self._save_ticket(ticket, step.now)
                self._ticket_notice(step, ticket, retargeted=True)
                await self._dispatch_ticket(step, ticket)
        step.touched.add(key)


def _held_by(ticket: Ticket) -> str:
    if ticket.clerk_id is None:
        raise InvalidStateError(f'ticket {ticket.id} in state "{ticket.state}" has no clerk')
    return ticket.clerk_id


def _offered(clerk: Clerk) -> str:
    if clerk.ticket_id is None:
        raise InvalidStateError(f'clerk {clerk.id} in state "{clerk.state}" holds no ticket')
    return clerk.ticket_id


def _clean_contact(contact: str | None) -> str | None:
    text = (contact or "").strip()
    if not text:
        return None
    if len(text) > _MAX_CONTACT:
        raise ValidationError(f"a contact must be at most {_MAX_CONTACT} characters")
    return text
