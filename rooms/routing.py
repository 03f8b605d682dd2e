"""Skills-based routing: which clerk gets a ticket, which ticket a freed clerk gets.

Rules (see docs/queueing.md):
* a ticket goes to the eligible *available* clerk who has been idle the longest (ties: clerk
  id); eligible = serves the ticket's matter as a primary skill, or as a secondary skill once
  the ticket has waited past the matter's ``widen_after_s``, or is the ticket's named clerk;
* a freed clerk gets the lowest-score ready ticket over every queue they serve (their named
  queue, their primary matters, and the widened tickets of their secondary matters);
* a clerk who declined or missed a ticket is not offered that ticket again until the cooldown
  ends (the ticket goes to someone else meanwhile, or waits).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from rooms.catalog import Catalog
from rooms.clerks import Clerk, ClerkState
from rooms.queues import clerk_key, matter_key, wide_key
from rooms.store import Store
from rooms.tickets import Ticket

# Members read at a time from an ordered set (skips are rare: nearly always one read).
CHUNK = 8


def primary_pool(matter_id: str) -> str:
    return f"p:{matter_id}"


def secondary_pool(matter_id: str) -> str:
    return f"s:{matter_id}"


def pools_of(clerk: Clerk) -> list[str]:
    return [primary_pool(m) for m in clerk.matters] + [secondary_pool(m) for m in clerk.secondary]


def is_skipped(skips: dict[str, float], key: str, now: float) -> bool:
    until = skips.get(key)
    return until is not None and until > now


class Router:
    def __init__(self, store: Store, catalog: Catalog) -> None:
        self._store = store
        self._catalog = catalog

    async def clerk_for(self, ticket: Ticket, now: float) -> Clerk | None:
        """The clerk to offer ``ticket`` to now, or None if nobody eligible is available."""
        skips = ticket.skip_clerks
        if ticket.target_clerk_id is not None:
            clerk = await self._store.get_clerk(ticket.target_clerk_id)
            if clerk is None or clerk.state != ClerkState.AVAILABLE:
                return None
            return None if is_skipped(skips, clerk.id, now) else clerk
        pools = [primary_pool(ticket.matter_id)]
        if ticket.widened:
            pools.append(secondary_pool(ticket.matter_id))
        best: tuple[float, str] | None = None
        for pool in pools:
            found = await _first_unskipped(partial(self._store.idle_range, pool), skips, now)
            if found is not None and (best is None or (found[1], found[0]) < best):
                best = (found[1], found[0])
        if best is None:
            return None
        clerk = await self._store.get_clerk(best[1])
        if clerk is None or clerk.state != ClerkState.AVAILABLE:
            raise RuntimeError(f"idle pool out of step with clerk {best[1]}")
        return clerk

    async def ticket_for(self, clerk: Clerk, now: float) -> Ticket | None:
        """The ticket a just-available clerk should be offered, or None."""
        keys = [clerk_key(clerk.id)]
        keys += [matter_key(m) for m in clerk.matters]
        keys += [wide_key(m) for m in clerk.secondary]
        best: tuple[float, str] | None = None
        for key in keys:
            found = await _first_unskipped(
                partial(self._store.ready_range, key), clerk.skipped, now
            )
            if found is not None and (best is None or (found[1], found[0]) < best):
                best = (found[1], found[0])
        if best is None:
            return None
        ticket = await self._store.get_ticket(best[1])
        if ticket is None or not ticket.is_queued:
            raise RuntimeError(f"ready set out of step with ticket {best[1]}")
        return ticket


async def _first_unskipped(
    fetch: Callable[[int, int], Awaitable[list[tuple[str, float]]]],
    skips: dict[str, float],
    now: float,
) -> tuple[str, float] | None:
    """The first ``(member, score)`` of an ordered set whose member is not skipped now,
    fetched a few at a time (skips are rare, so this nearly always reads one chunk)."""
    start = 0
    while True:
        chunk = await fetch(start, start + CHUNK)
        for member, score in chunk:
            if not is_skipped(skips, member, now):
                return member, score
        if len(chunk) < CHUNK:
            return None
        start += CHUNK
