"""In-memory implementation of :class:`rooms.store.Store` (embedded mode, tests, benchmarks).

Records are kept serialised (JSON bytes, as Redis will hold them), not as the objects handed
in, so that a caller which mutates a ticket without ``put_ticket`` fails here exactly as it
would against Redis. Bytes are also invisible to the garbage collector: with 100,000 tickets
held as dicts, one full collection paused dispatch for ~100 ms (bench/dispatch.py).
Sorted sets use ``sortedcontainers`` (O(log n) insert, remove and rank), ordered by
``(score, member)`` like Redis sorted sets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from sortedcontainers import SortedList

from rooms.clerks import Clerk
from rooms.events import HallEvent
from rooms.store import Prefetch, Store
from rooms.tickets import Ticket


def _kept(raw: bytes) -> bytes:
    """A copy of exactly its length: orjson's bytes sit in a 16 KiB allocation whatever
    their size, so 10,000 stored tickets held 160 MiB instead of 7 (a copy costs ~0.2 µs)."""
    return bytes(memoryview(raw))


class SortedSet:
    """A Redis-like sorted set: members ordered by (score, member), O(log n) everything."""

    __slots__ = ("_order", "_scores")

    def __init__(self) -> None:
        self._scores: dict[str, float] = {}
        self._order: SortedList = SortedList()

    def add(self, member: str, score: float) -> None:
        old = self._scores.get(member)
        if old is not None:
            if old == score:
                return
            self._order.remove((old, member))
        self._scores[member] = score
        self._order.add((score, member))

    def remove(self, member: str) -> bool:
        old = self._scores.pop(member, None)
        if old is None:
            return False
        self._order.remove((old, member))
        return True

    def rank(self, member: str) -> int | None:
        score = self._scores.get(member)
        if score is None:
            return None
        return int(self._order.index((score, member)))

    def range(self, start: int, stop: int) -> list[tuple[str, float]]:
        return [(m, s) for s, m in self._order[start:stop]]

    def upto(self, max_score: float, limit: int) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for score, member in self._order.irange(maximum=(max_score, "\uffff")):
            out.append((member, score))
            if len(out) >= limit:
                break
        return out

    def __len__(self) -> int:
        return len(self._scores)


class MemoryStore(Store):
    """Live state of one hall process, in memory. Not shared: embedded mode only."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        # Counters start at the current time in microseconds so ids stay unique across restarts
        # of an embedded hall (the records database outlives the process).
        self._counter_base = int(time.time() * 1_000_000)
        self._counters: dict[str, int] = {}
        self._plain: dict[str, int] = {}
        self._tickets: dict[str, bytes] = {}
        self._clerks: dict[str, bytes] = {}
        self._active: set[str] = set()
        self._queues: dict[str, SortedSet] = {}
        self._ready: dict[str, SortedSet] = {}
        self._idle: dict[str, SortedSet] = {}
        self._duty: dict[str, set[str]] = {}
        self._handle: dict[str, float] = {}
        self._timers = SortedSet()
        self._outbox: list[HallEvent] = []
        self._outbox_start = 0  # index of the first unacknowledged event
        self._followups: dict[str, bytes] = {}  # key -> data, in the order they were added
        self._shown: dict[str, int] = {}  # ticket id -> position last shown (Store.shown_set)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        async with self._lock:
            yield

    def transaction(self, prefetch: Prefetch | None = None) -> Any:
        return self._transaction()  # every read is in memory: nothing to fetch ahead

    async def ping(self) -> bool:
        return True  # in-process: always there

    async def next_seq(self, name: str) -> int:
        value = self._counters.get(name, self._counter_base) + 1
        self._counters[name] = value
        return value

    async def incr(self, name: str) -> int:
        value = self._plain.get(name, 0) + 1
        self._plain[name] = value
        return value

    async def counter_get(self, name: str) -> int:
        return self._plain.get(name, 0)

    async def shown_set(self, ticket_id: str, position: int | None) -> None:
        if position is None:
            self._shown.pop(ticket_id, None)
        else:
            self._shown[ticket_id] = position

    async def positions_shown(self, key: str, ticket_ids: Sequence[str] | None = None,
                              ) -> list[tuple[str, int, int]]:
        # No await inside: atomic against every command, as the Redis script is.
        queue = self._queues.get(key)
        if queue is None:
            return []
        if ticket_ids is None:
            ranked = [(m, i) for i, (m, _) in enumerate(queue.range(0, len(queue)))]
        else:
            ranks = ((t, queue.rank(t)) for t in ticket_ids)
            ranked = [(t, r) for t, r in ranks if r is not None]
        out = []
        for ticket_id, rank in ranked:
            shown = min(rank + 1, self._shown.get(ticket_id, rank + 1))
            self._shown[ticket_id] = shown
            out.append((ticket_id, shown, rank + 1))
        return out

    async def get_ticket(self, ticket_id: str) -> Ticket | None:
        raw = self._tickets.get(ticket_id)
        return None if raw is None else Ticket.from_dict(orjson.loads(raw))

    async def put_ticket(self, ticket: Ticket) -> None:
        self._tickets[ticket.id] = _kept(orjson.dumps(ticket.to_dict()))

    async def get_clerk(self, clerk_id: str) -> Clerk | None:
        raw = self._clerks.get(clerk_id)
        return None if raw is None else Clerk.from_dict(orjson.loads(raw))

    async def put_clerk(self, clerk: Clerk) -> None:
        self._clerks[clerk.id] = _kept(orjson.dumps(clerk.to_dict()))

    async def clerk_ids(self) -> list[str]:
        return sorted(self._clerks)

    async def active_ticket_ids(self) -> list[str]:
        return sorted(self._active)

    async def set_ticket_active(self, ticket_id: str, active: bool) -> None:
        if active:
            self._active.add(ticket_id)
        else:
            self._active.discard(ticket_id)

    @staticmethod
    def _zset(table: dict[str, SortedSet], key: str) -> SortedSet:
        zset = table.get(key)
        if zset is None:
            zset = table[key] = SortedSet()
        return zset

    async def queue_add(self, key: str, ticket_id: str, score: float) -> None:
        self._zset(self._queues, key).add(ticket_id, score)

    async def queue_remove(self, key: str, ticket_id: str) -> bool:
        zset = self._queues.get(key)
        return zset.remove(ticket_id) if zset is not None else False

    async def queue_rank(self, key: str, ticket_id: str) -> int | None:
        zset = self._queues.get(key)
        return zset.rank(ticket_id) if zset is not None else None

    async def queue_len(self, key: str) -> int:
        zset = self._queues.get(key)
        return len(zset) if zset is not None else 0

    async def queue_range(self, key: str, start: int, stop: int) -> list[str]:
        zset = self._queues.get(key)
        return [m for m, _ in zset.range(start, stop)] if zset is not None else []

    async def ready_add(self, key: str, ticket_id: str, score: float) -> None:
        self._zset(self._ready, key).add(ticket_id, score)

    async def ready_remove(self, key: str, ticket_id: str) -> None:
        zset = self._ready.get(key)
        if zset is not None:
            zset.remove(ticket_id)

    async def ready_range(self, key: str, start: int, stop: int) -> list[tuple[str, float]]:
        zset = self._ready.get(key)
        return zset.range(start, stop) if zset is not None else []

    async def idle_add(self, pools: Iterable[str], clerk_id: str, since: float) -> None:
        for pool in pools:
            self._zset(self._idle, pool).add(clerk_id, since)

    async def idle_remove(self, pools: Iterable[str], clerk_id: str) -> None:
        for pool in pools:
            zset = self._idle.get(pool)
            if zset is not None:
                zset.remove(clerk_id)

    async def idle_range(self, pool: str, start: int, stop: int) -> list[tuple[str, float]]:
        zset = self._idle.get(pool)
        return zset.range(start, stop) if zset is not None else []

    async def duty_add(self, matter_ids: Iterable[str], clerk_id: str) -> None:
        for matter_id in matter_ids:
            self._duty.setdefault(matter_id, set()).add(clerk_id)

    async def duty_remove(self, matter_ids: Iterable[str], clerk_id: str) -> None:
        for matter_id in matter_ids:
            self._duty.get(matter_id, set()).discard(clerk_id)

    async def duty_count(self, matter_id: str) -> int:
        return len(self._duty.get(matter_id, ()))

    async def get_handle_time(self, matter_id: str) -> float | None:
        return self._handle.get(matter_id)

    async def put_handle_time(self, matter_id: str, seconds: float) -> None:
        self._handle[matter_id] = seconds

    async def timer_set(self, key: str, at: float) -> None:
        self._timers.add(key, at)

    async def timer_cancel(self, key: str) -> None:
        self._timers.remove(key)

    async def timers_due(self, now: float, limit: int = 100) -> list[tuple[str, float]]:
        return self._timers.upto(now, limit)

    async def timer_next(self) -> float | None:
        first = self._timers.range(0, 1)
        return first[0][1] if first else None

    async def outbox_append(self, events: Sequence[HallEvent]) -> list[HallEvent]:
        stamped = [e.with_seq(await self.next_seq("event")) for e in events]
        self._outbox.extend(stamped)
        return stamped

    async def outbox_peek(self, limit: int) -> list[HallEvent]:
        return self._outbox[self._outbox_start : self._outbox_start + limit]

    async def outbox_ack(self, upto_seq: int) -> int:
        start = self._outbox_start
        end = start
        while end < len(self._outbox) and self._outbox[end].seq <= upto_seq:
            end += 1
        self._outbox_start = end
        # Compact now and then so the list does not grow without bound.
        if self._outbox_start > 4096 and self._outbox_start * 2 > len(self._outbox):
            del self._outbox[: self._outbox_start]
            self._outbox_start = 0
        return end - start

    async def outbox_len(self) -> int:
        return len(self._outbox) - self._outbox_start

    async def followup_add(self, key: str, data: dict[str, Any]) -> None:
        self._followups.pop(key, None)  # re-added: it is the newest
        self._followups[key] = _kept(orjson.dumps(data))

    async def followup_peek(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        keys = list(self._followups)[: max(0, limit)]
        return [(key, orjson.loads(self._followups[key])) for key in keys]

    async def followup_ack(self, key: str) -> None:
        self._followups.pop(key, None)
