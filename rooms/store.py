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
followup_*           work due outside the store (case filing)    hash, field = key
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rooms.clerks import Clerk
    from rooms.events import HallEvent
    from rooms.tickets import Ticket


@dataclass(frozen=True, slots=True)
class Prefetch:
    """What an engine command will read first (:meth:`Store.transaction`). A hint only: a
    read not named here is made as usual, and one named but not made costs a few bytes."""

    tickets: Sequence[str] = ()
    clerks: Sequence[str] = ()
    held: Sequence[str] = ()  # clerk ids: the ticket each holds (clerk.ticket_id)
    seqs: Sequence[str] = ()  # next_seq counters it takes a number of (unused: a gap)
    handle_times: Sequence[str] = ()  # matter ids: get_handle_time
    queue_lens: Sequence[str] = ()  # queue keys: queue_len
    duty_counts: Sequence[str] = ()  # matter ids: duty_count
    counters: Sequence[str] = ()  # incr counter names
    # (key, stop): the first ``stop`` members, for queue_range / ready_range / idle_range
    queue_heads: Sequence[tuple[str, int]] = ()
    ready_heads: Sequence[tuple[str, int]] = ()
    idle_heads: Sequence[tuple[str, int]] = ()
    # (queue key, ticket id): whether and where the ticket is in the queue (it may leave it)
    queue_scores: Sequence[tuple[str, str]] = ()


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
    def transaction(self, prefetch: Prefetch | None = None,
                    ) -> AbstractAsyncContextManager[None]:
        """Serialise one engine command against every other (across processes for Redis).
        ``prefetch``: what the command will read first, which a store may fetch together
        with the lock (Redis: one round trip instead of one per read)."""

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

    async def bump(self, name: str) -> None:
        """:meth:`incr` when the new value is not needed (the day's statistics): a store may
        then skip reading the counter."""
        await self.incr(name)

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

    # -- shown positions: what each waiting resident was last told (never rises) ---------------
    # Kept apart from the ticket records so that reading positions takes no lock: the
    # position pusher reads a whole queue's positions in one step of the store, without the
    # engine's transaction (docs/architecture.md, "Redis mode under load").
    @abc.abstractmethod
    async def shown_set(self, ticket_id: str, position: int | None) -> None:
        """In an engine transaction: the position a ticket was shown as it joined a queue;
        None forgets it (the ticket moved to another queue, or left)."""

    @abc.abstractmethod
    async def positions_shown(self, key: str, ticket_ids: Sequence[str] | None = None,
                              ) -> list[tuple[str, int, int]]:
        """Outside any transaction, as one atomic step: ``(ticket_id, shown, actual)`` of the
        given tickets of queue ``key`` that are in it (None: all of them, in queue order):
        ``actual`` is the rank + 1, ``shown`` the smaller of that and the position last shown,
        which is recorded. So a shown position never rises, whoever reads it, and no lock is
        taken."""

    # -- dispatchable tickets: per matter, and per named clerk (direct transfers) ----------------
    @abc.abstractmethod
    async def ready_add(self, key: str, ticket_id: str, score: float) -> None: ...

    @abc.abstractmethod
    async def ready_remove(self, key: str, ticket_id: str) -> None:
        """Idempotent; says nothing of whether it was there (so a store need not look)."""

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

    async def outbox_add(self, events: Sequence[HallEvent]) -> None:
        """:meth:`outbox_append` when the stamped events are not needed (the engine): a store
        may then number them as the transaction commits (Redis: no round trip of its own).
        Inside a transaction, :meth:`outbox_peek` need not show them before the commit."""
        await self.outbox_append(events)

    @abc.abstractmethod
    async def outbox_peek(self, limit: int) -> list[HallEvent]:
        """The oldest unacknowledged events, in ``seq`` order."""

    @abc.abstractmethod
    async def outbox_ack(self, upto_seq: int) -> int:
        """Drop events with ``seq <= upto_seq``; return how many were dropped."""

    @abc.abstractmethod
    async def outbox_len(self) -> int: ...

    # -- follow-up outbox -----------------------------------------------------------------------
    # Work outside the store that a command makes due (filing the 办不成事 case of an
    # "unresolved" outcome in the records database): written in the command's transaction, so
    # it survives a crash of the process that ran the command, and kept until the shell that
    # does the work acknowledges it. Keyed, so the same work is due once however often it is
    # added; the worker must be idempotent by key (it may run again after a crash before ack).
    @abc.abstractmethod
    async def followup_add(self, key: str, data: dict[str, Any]) -> None:
        """Keep ``data`` under ``key`` until :meth:`followup_ack` (replaces a pending one)."""

    @abc.abstractmethod
    async def followup_peek(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``limit`` pending follow-ups, oldest first where the store can tell."""

    @abc.abstractmethod
    async def followup_ack(self, key: str) -> None:
        """The work of ``key`` is done: forget it (no-op if it is not pending)."""

