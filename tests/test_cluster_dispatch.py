"""Dispatch across processes: three halls on one Redis never double-offer.

Three :class:`Hall` instances, each on its own :class:`RedisStore` (its own connections and lock
token, exactly as three hall processes), share one private redis-server, one key prefix and one
manual clock. Rounds of concurrent joins, log-ins, accepts, declines, session ends, wrap-ups and
timer ticks (offer timeouts fire) are spread over the three; after every round the shared state
is checked: no ticket is offered to or held by two clerks, no clerk holds two tickets, every
offered ticket and its clerk point at each other, and the event log has each offer once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from rooms.clerks import ClerkState
from rooms.clock import ManualClock
from rooms.errors import HallError
from rooms.events import EventKind
from rooms.hall import Hall, Unstaffed
from rooms.policy import QueuePolicy
from rooms.redis_store import RedisStore
from rooms.tickets import TicketState
from tests.hallkit import small_catalog
from tests.redisproc import RedisServer, drop_prefix, new_prefix

MATTERS = ("residence", "employment", "medical")
CLERKS = ("c1", "c2", "c3", "c4")
HELD = (ClerkState.OFFERED, ClerkState.IN_SESSION, ClerkState.WRAP_UP)


@pytest.fixture
async def halls(redis_server: RedisServer) -> AsyncIterator[list[Hall]]:
    prefix = new_prefix()
    clock = ManualClock()
    policy = QueuePolicy(offer_timeout_s=20.0, wrapup_s=30.0)
    halls = []
    for _ in range(3):
        store = RedisStore(redis_server.url, prefix=prefix)
        await store.open()
        hall = Hall(small_catalog(), store, clock=clock, policy=policy)
        await hall.start()
        halls.append(hall)
    yield halls
    for hall in halls:
        await hall.store.close()
    drop_prefix(redis_server.url, prefix)


async def _settle(calls: list[Awaitable[Any]]) -> None:
    """Run concurrently; refusals (a state moved on meanwhile) are part of the game."""
    for result in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(result, BaseException) and not isinstance(result, HallError):
            raise result


async def _check(hall: Hall) -> None:
    clerks = [await hall.get_clerk(c) for c in CLERKS]
    holders: dict[str, str] = {}
    for clerk in clerks:
        if clerk.state in HELD:
            assert clerk.ticket_id is not None, clerk
            assert clerk.ticket_id not in holders, (clerk.id, holders)
            holders[clerk.ticket_id] = clerk.id
            ticket = await hall.get_ticket(clerk.ticket_id)
            assert ticket.clerk_id == clerk.id, (ticket, clerk)
    for ticket_id in await hall.store.active_ticket_ids():
        ticket = await hall.get_ticket(ticket_id)
        if ticket.state in (TicketState.OFFERED, TicketState.IN_SESSION, TicketState.WRAP_UP):
            assert holders.get(ticket.id) == ticket.clerk_id, (ticket, holders)
    events = await hall.store.outbox_peek(1_000_000)
    offers = [(e.ticket_id, e.seq) for e in events if e.kind == EventKind.OFFER]
    assert len({seq for _, seq in offers}) == len(offers)


async def test_concurrent_commands_on_three_halls_never_double_offer(halls: list[Hall]) -> None:
    """Hundreds of concurrent commands on three processes' halls keep one truth."""
    rng = random.Random(6)
    clock = halls[0].clock
    assert isinstance(clock, ManualClock)
    await _settle([halls[i % 3].login(c) for i, c in enumerate(CLERKS)])
    await _settle([halls[(i + 1) % 3].set_available(c) for i, c in enumerate(CLERKS)])
    for _ in range(25):
        calls: list[Awaitable[Any]] = []
        for _ in range(rng.randint(2, 5)):
            calls.append(rng.choice(halls).join(rng.choice(MATTERS),
                                                 when_unstaffed=Unstaffed.WAIT))
        for clerk_id in CLERKS:
            clerk = await halls[0].get_clerk(clerk_id)
            hall = rng.choice(halls)
            if clerk.state == ClerkState.OFFERED and clerk.ticket_id is not None:
                # Sometimes two processes race to accept the same offer.
                action = rng.random()
                if action < 0.5:
                    calls += [hall.accept(clerk_id, clerk.ticket_id),
                              rng.choice(halls).accept(clerk_id, clerk.ticket_id)]
                elif action < 0.7:
                    calls.append(hall.decline(clerk_id, clerk.ticket_id))
            elif clerk.state == ClerkState.IN_SESSION and clerk.ticket_id is not None:
                calls.append(hall.end_session(clerk_id, clerk.ticket_id))
            elif clerk.state == ClerkState.WRAP_UP:
                calls.append(hall.finish_wrapup(clerk_id, "resolved"))
            elif clerk.state in (ClerkState.ON_BREAK, ClerkState.LOGGED_OUT):
                calls.append(hall.login(clerk_id))
                calls.append(rng.choice(halls).set_available(clerk_id))
        if rng.random() < 0.4:
            clock.advance(rng.choice((5.0, 21.0, 31.0)))  # offer timeouts and wrap-ups fire
            calls += [hall.tick() for hall in halls]
        rng.shuffle(calls)
        await _settle(calls)
        await _check(halls[rng.randrange(3)])
    events = await halls[0].store.outbox_peek(1_000_000)
    kinds = {e.kind for e in events}
    # The game did exercise what it is about.
    assert {EventKind.OFFER, EventKind.ACCEPT, EventKind.MISS}.issubset(kinds), kinds
