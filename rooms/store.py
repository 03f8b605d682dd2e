"""The live-state store interface.

Everything the queue engine knows lives behind this interface, so that a Redis implementation
(several hall processes, one truth) can replace the in-memory one without touching callers.
Every method is async, even in memory, and each maps onto one Redis structure:

===================  ==========================================  ===========================
method group         meaning                                     Redis shape (later issue)
===================  ==========================================  ===========================
tickets / clerks     whole records by id                         hash per record
queue_*              unserved tickets (waiting+offered) per queue  sorted set, score = order key
ready_*              the dispatchable subset of a queue          sorted set, score = order key
idle_*               available clerks per matter, by idle-since  sorted set, score = idle since
timer_*              deadlines (offer timeout, wrap-up, grace…)  sorted set, score = deadline
outbox_*             event-log lines not yet in the records DB   stream / list
next_seq, incr       monotonic and plain counters                INCR / GET
===================  ==========================================  ===========================

Sorted sets order by ``(score, member)`` exactly as Redis does (ties broken by the member's
bytes), so members are fixed-width ids that sort in creation order.

Engine commands run inside :meth:`Store.transaction`; the store guarantees that no two
transactions interleave (an asyncio lock in memory; a lock or script in Redis). Callers check
every precondition before the first write, so a refused command changes nothing.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rooms.clerks import Clerk
    from rooms.events import HallEvent
    from rooms.tickets import Ticket


class Store(abc.ABC):
    """Abstract live-state store. See the module docstring for the data model."""

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect (no-op in memory)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect; idempotent."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True if the store answers now; never raises (for /readyz)."""

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[None]:
        """Serialise one engine command against every other (across processes for Redis)."""

    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Whether ``holder`` holds (took or renewed) the lease ``name`` for ``ttl_s``: work
        that one process must do for all (moving the event log), not each. One process: yes."""
        return True

    # -- counters ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def next_seq(self, name: str) -> int:
        """Return the next value of a monotonic counter, unique across restarts."""

    @abc.abstractmethod
    async def incr(self, name: str) -> int:
        """Return the next value of a plain counter starting at 1 (display numbers)."""

    @abc.abstractmethod
    async def counter_get(self, name: str) -> int:
        """The current value of an :meth:`incr` counter; 0 if it was never incremented."""

    async def counters_get(self, names: Sequence[str]) -> list[int]:
        """Several :meth:`counter_get` at once (the wallboard reads three per matter every
        second); a store with a bulk read (Redis MGET) should override this."""
        return [await self.counter_get(name) for name in names]

    # -- records -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_ticket(self, ticket_id: str) -> Ticket | None: ...

    @abc.abstractmethod
    async def put_ticket(self, ticket: Ticket) -> None: ...

    @abc.abstractmethod
    async def get_clerk(self, clerk_id: str) -> Clerk | None: ...

    @abc.abstractmethod
    async def put_clerk(self, clerk: Clerk) -> None: ...

    @abc.abstractmethod
    async def clerk_ids(self) -> list[str]: ...

    @abc.abstractmethod
    async def active_ticket_ids(self) -> list[str]:
        """Ids of tickets not yet in a final state (for supervisors and recovery)."""

    @abc.abstractmethod
    async def set_ticket_active(self, ticket_id: str, active: bool) -> None: ...

    # -- matter queues: all unserved tickets (positions are ranks here) ------------------------
    @abc.abstractmethod
    async def queue_add(self, key: str, ticket_id: str, score: float) -> None: ...

    @abc.abstractmethod
    async def queue_remove(self, key: str, ticket_id: str) -> bool: ...

    @abc.abstractmethod
    async def queue_rank(self, key: str, ticket_id: str) -> int | None:
        """0-based rank of the ticket in the matter's queue, or None."""

    @abc.abstractmethod
    async def queue_len(self, key: str) -> int: ...

    @abc.abstractmethod
    async def queue_range(self, key: str, start: int, stop: int) -> list[str]:
        """Ticket ids ranked ``start`` (inclusive) to ``stop`` (exclusive)."""

    # -- dispatchable tickets: per matter, and per named clerk (direct transfers) ----------------
    @abc.abstractmethod
    async def ready_add(self, key: str, ticket_id: str, score: float) -> None: ...

    @abc.abstractmethod
    async def ready_remove(self, key: str, ticket_id: str) -> bool: ...

    @abc.abstractmethod
    async def ready_range(self, key: str, start: int, stop: int) -> list[tuple[str, float]]:
        """``(ticket_id, score)`` pairs in order."""

    # -- available clerks per matter (primary and widened pools) -------------------------------
    @abc.abstractmethod
    async def idle_add(self, pools: Iterable[str], clerk_id: str, since: float) -> None: ...

    @abc.abstractmethod
    async def idle_remove(self, pools: Iterable[str], clerk_id: str) -> None: ...

    @abc.abstractmethod
    async def idle_range(self, pool: str, start: int, stop: int) -> list[tuple[str, float]]:
        """``(clerk_id, idle_since)`` pairs, idle longest first."""

    # -- on-duty clerk counts per matter (for ETA and "no clerk on duty") ----------------------
    @abc.abstractmethod
    async def duty_add(self, matter_ids: Iterable[str], clerk_id: str) -> None: ...

    @abc.abstractmethod
    async def duty_remove(self, matter_ids: Iterable[str], clerk_id: str) -> None: ...

    @abc.abstractmethod
    async def duty_count(self, matter_id: str) -> int: ...

    # -- per-matter handle-time statistics ------------------------------------------------------
    @abc.abstractmethod
    async def get_handle_time(self, matter_id: str) -> float | None: ...

    @abc.abstractmethod
    async def put_handle_time(self, matter_id: str, seconds: float) -> None: ...

    # -- timers ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def timer_set(self, key: str, at: float) -> None:
        """Set (or move) the deadline named ``key``."""

    @abc.abstractmethod
    async def timer_cancel(self, key: str) -> None: ...

    @abc.abstractmethod
    async def timers_due(self, now: float, limit: int = 100) -> list[tuple[str, float]]:
        """Deadlines at or before ``now``, earliest first (not removed)."""

    @abc.abstractmethod
    async def timer_next(self) -> float | None:
        """The earliest deadline, or None."""

    # -- event-log outbox -----------------------------------------------------------------------
    @abc.abstractmethod
    async def outbox_append(self, events: Sequence[HallEvent]) -> list[HallEvent]:
        """Assign each event its ``seq`` (monotonic) and keep it until acknowledged."""

    @abc.abstractmethod
    async def outbox_peek(self, limit: int) -> list[HallEvent]:
        """The oldest unacknowledged events, in ``seq`` order."""

    @abc.abstractmethod
    async def outbox_ack(self, upto_seq: int) -> int:
        """Drop events with ``seq <= upto_seq``; return how many were dropped."""

    @abc.abstractmethod
    async def outbox_len(self) -> int: ...

