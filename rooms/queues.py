"""Queue bookkeeping: where a ticket sits, its position and its estimated wait.

Every unserved ticket (waiting or offered) is in exactly one *queue*: its matter's
(``matter:<id>``) or, after a transfer to a named clerk, that clerk's (``clerk:<id>``). Its
rank there is its position. Waiting tickets are also in the matching *ready* set, from which
dispatch picks; tickets waiting longer than the matter's ``widen_after_s`` are also in
``wide:<matter>``, the ready set that secondary-skilled clerks look at.

The order is the ticket's ``score`` (see :func:`order_score`), ties broken by ticket id, which
is fixed-width and increases with creation: the order is total and deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rooms.catalog import Catalog
from rooms.policy import QueuePolicy
from rooms.store import Store
from rooms.tickets import PriorityReason, Ticket


def matter_key(matter_id: str) -> str:
    return f"matter:{matter_id}"


def wide_key(matter_id: str) -> str:
    return f"wide:{matter_id}"


def clerk_key(clerk_id: str) -> str:
    return f"clerk:{clerk_id}"


def order_score(joined_at: float, priority: PriorityReason | None, policy: QueuePolicy) -> float:
    """The order key of a new ticket: its join time, minus the priority credit if it has one.

    The credit is granted once, at join, and never changes afterwards. Consequences:
    * a ticket is never overtaken by a ticket that joined after it without priority;
    * a priority ticket can overtake only tickets that joined less than ``priority_credit_s``
      before it (ageing): once you have waited that long, nobody new gets ahead of you.
    """
    if priority in (PriorityReason.ELDERLY, PriorityReason.DISABLED):
        return joined_at - policy.priority_credit_s
    return joined_at


def eta_s(position: int, clerks: int, handle_s: float) -> float | None:
    """``ceil(position / clerks)`` rounds of the handle time; None with no clerk on duty."""
    return None if clerks == 0 else math.ceil(position / clerks) * handle_s


@dataclass(frozen=True, slots=True)
class PositionInfo:
    ticket_id: str
    number: str | None  # None when read queue-wide (Hall.queue_positions: the pusher)
    state: str | None
    position: int | None  # 1 = next; None once the ticket has left the queue
    eta_s: float | None  # None when no clerk serving the queue is on duty
    staffed: bool  # some clerk serving this queue is on duty


class QueueBook:
    """Keeps the queue, ready and widened sets of the store in step with ticket states."""

    def __init__(self, store: Store, catalog: Catalog, policy: QueuePolicy) -> None:
        self._store = store
        self._catalog = catalog
        self._policy = policy

    async def enqueue(self, ticket: Ticket) -> None:
        """Put a ticket (new, transferred or re-queued) in its queue and make it dispatchable."""
        await self._store.queue_add(ticket.queue_key, ticket.id, ticket.score)
        await self.make_ready(ticket)

    async def make_ready(self, ticket: Ticket) -> None:
        await self._store.ready_add(ticket.queue_key, ticket.id, ticket.score)
        if ticket.widened and ticket.target_clerk_id is None:
            await self._store.ready_add(wide_key(ticket.matter_id), ticket.id, ticket.score)

    async def unready(self, ticket: Ticket) -> None:
        """The ticket was offered: nobody else may pick it, but it keeps its place."""
        await self._store.ready_remove(ticket.queue_key, ticket.id)
        await self._store.ready_remove(wide_key(ticket.matter_id), ticket.id)

    async def remove(self, ticket: Ticket) -> None:
        """The ticket left the queue (served, abandoned, timed out, moved elsewhere)."""
        await self.unready(ticket)
        await self._store.queue_remove(ticket.queue_key, ticket.id)

    async def length(self, key: str) -> int:
        return await self._store.queue_len(key)

    async def rank(self, ticket: Ticket) -> int | None:
        return await self._store.queue_rank(ticket.queue_key, ticket.id)

    async def handle_time(self, matter_id: str) -> float:
        learned = await self._store.get_handle_time(matter_id)
        if learned is not None:
            return learned
        return float(self._catalog.matters[matter_id].typical_handle_s)

    async def learn_handle_time(self, matter_id: str, seconds: float) -> None:
        """Exponentially weighted average of session + wrap-up time, per matter."""
        old = await self.handle_time(matter_id)
        alpha = self._policy.handle_time_alpha
        await self._store.put_handle_time(matter_id, alpha * seconds + (1 - alpha) * old)

    async def staffing(self, ticket: Ticket) -> int:
        """Clerks on duty who can serve this ticket where it is queued."""
        if ticket.target_clerk_id is not None:
            clerk = await self._store.get_clerk(ticket.target_clerk_id)
            return 1 if clerk is not None and clerk.on_duty else 0
        return await self._store.duty_count(ticket.matter_id)

    async def estimate(self, ticket: Ticket, position: int) -> tuple[float | None, bool]:
        """ETA: the tickets up to and including this one, shared by the clerks on duty.

        ``ceil(position / clerks)`` rounds of the matter's live average handle time, minus
        nothing for sessions already under way (a deliberate slight over-estimate: residents
        are happier early than late).
        """
        clerks = await self.staffing(ticket)
        if clerks == 0:
            return None, False
        return eta_s(position, clerks, await self.handle_time(ticket.matter_id)), True
