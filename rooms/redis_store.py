"""Redis implementation of :class:`rooms.store.Store`: several hall processes, one truth.

No hall process keeps queue state of its own: all of it lives in one Redis (6.2 or later: ZMSCORE,
SMISMEMBER), and the engine reads and writes it through this store exactly as it does
:class:`~rooms.memory_store.MemoryStore` (the same engine test suite runs on both).

Keys
----
All keys start with a configurable prefix (default ``hall:``), so several halls (or test runs)
can share one server. A prefix holding a hash tag (``{hall}:``) keeps every key in one Redis
Cluster slot, which the commit script needs there.

=========================  ==========  ===========================================================
key (after the prefix)     type        contents
=========================  ==========  ===========================================================
``tickets``, ``clerks``    hash        field = id, value = the record as JSON bytes (orjson of
                                       ``to_dict()``, as MemoryStore keeps them)
``active``                 set         ids of tickets not in a final state
``queue:<key>``            sorted set  unserved tickets of a queue, score = order key
``ready:<key>``            sorted set  the dispatchable subset, score = order key
``idle:<pool>``            sorted set  available clerks of a pool, score = idle since
``duty:<matter>``          set         clerks on duty who serve the matter
``handle``                 hash        matter -> learned handle time (float as text)
``timers``                 sorted set  timer name -> deadline
``outbox``                 sorted set  score = seq, member = the event as JSON (carries its seq)
``followups``              hash        follow-up key -> its data as JSON (``Store.followup_add``)
``shown``                  hash        ticket -> position last shown to its resident (written by
                                       the engine at join, lowered lock-free by ``_POSITIONS``)
``seq:<name>``             string      ``next_seq`` counter, first set to the time in µs
``count:<name>``           string      ``incr`` counter (display numbers, day statistics)
``lock``                   string      the hall lock: holder's token, with a lease (PX)
``committed``              hash        store instance -> token of its last commit (retries)
``lockq``                  sorted set  stores waiting for the lock -> when they began (ms)
``lease:<name>``           string      holder of a once-per-hall job (records writer, case sweep)
=========================  ==========  ===========================================================

Records sit in one hash per kind rather than one key per record: ``clerk_ids`` is one HKEYS
instead of a SCAN over the keyspace, a hall's state is a handful of keys however many tickets it
has, and nothing needs a per-record TTL yet (finished tickets stay, as they do in memory; their
retention is an open question for both stores). The outbox is a sorted set keyed by seq rather
than a stream or a list: acknowledging is one ZREMRANGEBYSCORE up to a seq, peeking is one range,
and adding can never fail (XADD with explicit ids refuses an id that is not increasing, and a
failing command half-way through the commit script would leave half a commit, see below).

Transactions
------------
One engine command at a time, across every process. ``transaction()`` first takes an asyncio lock
(a process's own tasks queue there, so only one of them contends in Redis), then the hall lock:
``SET <prefix>lock <token> NX PX <lease>`` (a script, so that a retried request finds the lock
already its own). A busy lock is retried after 0.5 ms, doubling to 20 ms. A store that finds the
lock taken also joins ``<prefix>lockq`` (a sorted set by the time it first waited; entries older
than the acquire timeout are dropped), and the release (inside the commit script) PUBLISHes a
wake-up to the first waiting store only, on ``<prefix>wake:<store>``, which retries at once.
An earlier version published every release to every store: measured on a 2-core test machine,
that cut the longest wait with two processes from 150-250 ms to 20-50 ms but cost a third of the
throughput, and with N processes it is N-1 futile lock attempts per command, a cost per
operation that grows with the number of processes (bench/cluster.py). The targeted wake-up keeps
the bounded wait at one message per release. A waiter that died stays first in the queue until
its entry expires; meanwhile the others fall back to polling. The wake-ups are an optimisation;
polling alone is correct (the listener reconnects by itself after an outage).
Taking the lock gives up after ``acquire_timeout_s`` (default twice the lease) with
:class:`StoreUnavailableError`.

The lease (default 5 s) is not renewed: engine commands take milliseconds (a tick fires at most
64 timers per transaction). If one ever outlives its lease, the fence below refuses its commit,
so the cost of a too-short lease is a failed command, never a corrupted queue. The lease is what
frees the lock when a holder dies (a killed process), at most ``lease_s`` later.

Inside a transaction **writes are buffered** and **reads see the buffered writes**: records come
from a pending dict; each sorted set and set read combines one Redis query with the pending adds
and removes of that key (with the Redis scores of the changed members, fetched once: nobody else
writes while we hold the lock). A rank or range costs one or two queries bounded by the range
asked for plus the number of changed members; no read loads a whole queue, which may hold
100,000 tickets. At the end, ONE Lua script applies every buffered write, after checking that the
lock still holds our token (**fencing**: if the lease ran out and another process took the lock,
the commit is refused with :class:`StoreLockLostError` and nothing is written); the same script
releases the lock and publishes the wake-up. Redis runs a script without interleaving any other
client, so other processes see a command's changes all at once or not at all, and a process
killed mid-command leaves no partial state. Redis does not roll a script back when a command in it
fails, so the script only issues commands that cannot fail on keys of the right type, and scores
are checked (finite or infinite, never NaN) before they are buffered.

**Round trips.** Each request is a round trip that costs the hall process CPU (measured: about
0.1-0.2 ms each on the development machine, more than the engine's own work) and, while the lock
is held, every other process's wait. So a command names what it will read first
(:class:`~rooms.store.Prefetch`: its clerk and ticket, the ticket a clerk holds, queue lengths,
on-duty counts, counters, the heads of the queues, ready and idle sets it looks at, with the
records of their first tickets, a ticket's place in a queue, a ``next_seq`` number) and the
acquire script makes those reads as soon as the lock is taken, in the same round trip; reads
then look there first (valid for the whole transaction: nobody else writes while we hold the
lock). Removing a ticket from a ready set is blind (its score is fetched only if a later read
needs it), increments nobody reads (the day's statistics, ``Store.bump``) skip their GET, and
the engine's events are numbered by the commit script itself (``Store.outbox_add``). Both
scripts take their many arguments as one (netstrings): redis-py spends more CPU encoding an
argument than Lua spends cutting it out. A command is now two or three round trips (acquire
with its reads, at most one more read, the commit) instead of five to twelve
(``bench/engine_cost.py`` prints them).

The commit happens when the transaction exits, whether or not the body raised, because the
engine relies on MemoryStore's semantics (writes are applied at once there, so what a failing
command wrote before failing stays: ``Hall._step`` settles and logs it in a ``finally``).

Sequence numbers are not buffered: ``next_seq`` and the seqs ``outbox_append`` stamps are INCRBYs
applied at once (a missing counter is first SET to the time in µs, like MemoryStore, so ids stay
unique even if Redis loses its data); the events of ``outbox_add`` (the engine's) are numbered by
the commit script, under the lock, so a refused command takes no seq at all. A number taken by
a command whose commit is then refused, or by a crashed process (or reserved with the lock by
``Prefetch.seqs`` and then not used), is simply never used: ids and seqs may have gaps, never
duplicates.
``incr`` counters, on the other hand, are buffered like every other write, because the day's
statistics are counted with the events that move them and must not drift from the log (a
refused command must not count an answered call, nor take a display number): the first
``incr`` of a counter in a transaction reads it (GET; the lock keeps it still), the commit
applies INCRBY. ``counter_get`` / ``counters_get`` add the pending increments to one MGET.

Outside a transaction, reads go straight to Redis (and see committed state only). A write outside
a transaction runs as a transaction of its own (the engine never does this; the files module's
``outbox_append`` and tests do), so outbox seqs become visible in seq order and the records
writer cannot acknowledge past an event not yet committed. ``outbox_ack`` is the one exception:
it only drops events up to a seq that are already in the records database, so it goes straight to
Redis without queueing behind engine commands.

Failures
--------
Connection errors and timeouts (socket timeouts: ``timeout_s``, default 2 s) surface as
:class:`StoreUnavailableError`; the client retries a failed request once, at once, on a fresh
connection (a pooled connection goes stale when Redis restarts), and never longer. The commit
script records the token of the store's last commit and checks it before writing anything, so a
commit retried after its reply was lost is recognised as done: neither refused nor applied twice
(its INCRBYs would count twice). A retried INCRBY of ``next_seq`` only leaves a gap. A commit
whose outcome is unknown (Redis gone mid-reply) raises
:class:`StoreUnavailableError`; if it did not happen, the lock frees itself after the lease.
A task cancelled while its lock request is in flight hands the lock back at once (Redis may have
granted it before the cancel arrived); one cancelled during its commit has either committed,
lock released, or left the lock to its lease. ``ping()`` answers False instead of raising, for
/readyz. Lua scripts are reloaded on demand after a Redis restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from rooms.clerks import Clerk
from rooms.errors import StoreLockLostError, StoreUnavailableError
from rooms.events import HallEvent
from rooms.redis_link import RedisLink
from rooms.store import Prefetch, Store
from rooms.tickets import Ticket

logger = logging.getLogger("hall.store")

P = ParamSpec("P")
T = TypeVar("T")

# Many arguments as ONE (netstrings: "<length>:<bytes>" each): redis-py spends more CPU on
# encoding an argument than Lua does on cutting it out, and a commit has dozens.
_UNBLOB = """
local function unblob(blob)
  local items, pos = {}, 1
  while pos <= #blob do
    local colon = string.find(blob, ':', pos, true)
    local len = tonumber(string.sub(blob, pos, colon - 1))
    items[#items + 1] = string.sub(blob, colon + 1, colon + len)
    pos = colon + len + 1
  end
  return items
end
"""

# Take the lock, or find that it is already ours (a retried request whose reply was lost);
# once taken, make the reads the command said it will make first (Prefetch), encoded in
# ARGV[6] like the commit's ops (command, index into KEYS, n, n arguments; read-only
# commands only): the lock and the command's first reads in one round trip.
# Reply: 0 (busy), 1 (taken), or {1, the reply of each read in order} (taken).
_ACQUIRE = _UNBLOB + """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
   or redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('zrem', KEYS[2], ARGV[3])
  if not ARGV[6] then return 1 end
  local A = unblob(ARGV[6])
  local out, i = {1}, 1
  while i <= #A do
    local cmd, key, n = A[i], KEYS[tonumber(A[i + 1])], tonumber(A[i + 2])
    if cmd == 'heads' then
      -- A sorted set's first members (ARGV: stop, how many of their ticket records, the
      -- tickets hash's index in KEYS): {members with scores, records}.
      local flat = redis.call('zrange', key, 0, tonumber(A[i + 3]) - 1, 'WITHSCORES')
      local ids = {}
      for k = 1, math.min(#flat / 2, tonumber(A[i + 4])) do ids[k] = flat[2 * k - 1] end
      local records = {}
      if #ids > 0 then records = redis.call('hmget', KEYS[tonumber(A[i + 5])], unpack(ids)) end
      out[#out + 1] = {flat, records}
    elseif cmd == 'reserve' then
      -- A number of a next_seq counter (ARGV: its base, as _NEXT_SEQ), for the command to
      -- use: taken even if the command then refuses (a gap, as with any refused command).
      if redis.call('exists', key) == 0 then redis.call('set', key, A[i + 3]) end
      out[#out + 1] = redis.call('incrby', key, 1)
    elseif cmd == 'held' then
      -- The ticket record a clerk holds (ARGV: clerk id, the tickets hash's index in KEYS;
      -- key: the clerks hash): {ticket id, record}, or {} when it holds none.
      local raw = redis.call('hget', key, A[i + 3])
      local held = raw and cjson.decode(raw)['ticket_id']
      if type(held) == 'string' then
        out[#out + 1] = {held, redis.call('hget', KEYS[tonumber(A[i + 4])], held)}
      else
        out[#out + 1] = {}
      end
    elseif n > 0 then
      out[#out + 1] = redis.call(cmd, key, unpack(A, i + 3, i + 2 + n))
    else
      out[#out + 1] = redis.call(cmd, key)
    end
    i = i + 3 + n
  end
  return out
end
if ARGV[5] == '1' then
  local t = redis.call('time')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('zremrangebyscore', KEYS[2], '-inf', now - tonumber(ARGV[4]))
  redis.call('zadd', KEYS[2], 'NX', now, ARGV[3])
end
return 0
"""

# KEYS: lock, committed-hash, lock queue, then every key written. ARGV: token, store instance,
# wake-up channel prefix (the first store in the lock queue is woken),
# then ops: command, index into KEYS, n, n arguments. Sent in slices of at most 1000 arguments
# (an even number, so score/member and field/value pairs are never split) to stay far below the
# Lua stack limit.
_COMMIT = _UNBLOB + """
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  if redis.call('hget', KEYS[2], ARGV[2]) == ARGV[1] then return 2 end
  return 0
end
local A = ARGV[4] and unblob(ARGV[4]) or {}
local i = 1
while i <= #A do
  local cmd, key, n = A[i], KEYS[tonumber(A[i + 1])], tonumber(A[i + 2])
  local last = i + 2 + n
  if cmd == 'stamp' then
    -- Events numbered now (Store.outbox_add): key is the seq counter; the arguments are the
    -- outbox's index in KEYS, the counter's base (as _NEXT_SEQ) and the events, each JSON
    -- without its seq, which goes in first.
    local outbox, count = KEYS[tonumber(A[i + 3])], n - 2
    if redis.call('exists', key) == 0 then redis.call('set', key, A[i + 4]) end
    local first = redis.call('incrby', key, count) - count
    for k = 1, count do
      local seq = string.format('%d', first + k)
      redis.call('zadd', outbox, seq, '{"seq":' .. seq .. ',' .. string.sub(A[i + 4 + k], 2))
    end
  else
    for j = i + 3, last, 1000 do
      redis.call(cmd, key, unpack(A, j, math.min(j + 999, last)))
    end
  end
  i = last + 1
end
redis.call('hset', KEYS[2], ARGV[2], ARGV[1])
redis.call('del', KEYS[1])
local waiting = redis.call('zrange', KEYS[3], 0, 0)
if waiting[1] then redis.call('publish', ARGV[3] .. waiting[1], '1') end
return 1
"""

# Take a free lease or renew one's own.
_LEASE = """
local holder = redis.call('get', KEYS[1])
if not holder then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if holder == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end
return 0
"""

# SETNX to the base (time in µs), then INCRBY: monotonic and unique across restarts.
_NEXT_SEQ = """
if redis.call('exists', KEYS[1]) == 0 then redis.call('set', KEYS[1], ARGV[1]) end
return redis.call('incrby', KEYS[1], ARGV[2])
"""

# Rank and score of a member in one round trip (ZRANK WITHSCORE needs Redis 7.2).
_RANK_SCORE = """
local rank = redis.call('zrank', KEYS[1], ARGV[1])
if not rank then return false end
return {rank, redis.call('zscore', KEYS[1], ARGV[1])}
"""

# Positions shown to a queue's residents, as one atomic step without the hall lock
# (Store.positions_shown): each ticket's rank + 1, or what it was last shown if that is lower,
# recorded. KEYS: the queue, the shown-positions hash. ARGV: ticket ids (none: the whole
# queue, in order). Reply: id, shown, rank + 1, id, ... HMGET and HSET go in slices of
# 1000 ids (far below the Lua stack limit).
_POSITIONS = """
local ids, ranks = {}, {}
if #ARGV == 0 then
  ids = redis.call('zrange', KEYS[1], 0, -1)
  for i = 1, #ids do ranks[i] = i end
else
  for _, id in ipairs(ARGV) do
    local r = redis.call('zrank', KEYS[1], id)
    if r then ids[#ids + 1] = id; ranks[#ids] = r + 1 end
  end
end
local out = {}
for j = 1, #ids, 1000 do
  local last = math.min(j + 999, #ids)
  local prev = redis.call('hmget', KEYS[2], unpack(ids, j, last))
  local writes = {}
  for k = j, last do
    local was = prev[k - j + 1] and tonumber(prev[k - j + 1])
    local pos = ranks[k]
    if was and was < pos then pos = was end
    if was ~= pos then writes[#writes + 1] = ids[k]; writes[#writes + 1] = pos end
    out[#out + 1] = ids[k]; out[#out + 1] = pos; out[#out + 1] = ranks[k]
  end
  if #writes > 0 then redis.call('hset', KEYS[2], unpack(writes)) end
end
return out
"""

# How many members order before (score, member), which need not be in the set, and the
# member's own score in the set (nil if absent): those with a
# lower score, plus a binary search over the run of equal scores. Members are compared byte by
# byte as Redis orders them (Lua's own string '<' follows the server's locale).
_COUNT_BELOW = """
local function before(a, b)
  local n = math.min(#a, #b)
  for k = 1, n do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local lo = redis.call('zcount', KEYS[1], '-inf', '(' .. ARGV[1])
local hi = redis.call('zcount', KEYS[1], '-inf', ARGV[1])
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  if before(redis.call('zrange', KEYS[1], mid, mid)[1], ARGV[2]) then lo = mid + 1 else hi = mid end
end
return {lo, redis.call('zscore', KEYS[1], ARGV[2])}
"""


def _score(value: float) -> str:
    """A score as Redis parses it back exactly (repr round-trips a double)."""
    if math.isnan(value):
        raise ValueError("a sorted-set score cannot be NaN")
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return repr(float(value))


def _blob(items: Iterable[str | bytes | int]) -> bytes:
    """Items as one argument, netstrings (the scripts' ``unblob``)."""
    parts = []
    for item in items:
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(b"%d:%s" % (len(data), data))
    return b"".join(parts)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _pairs(raw: Any) -> list[tuple[str, float]]:
    return [(_text(member), float(score)) for member, score in raw]


def _unstamped_bytes(event: HallEvent) -> bytes:
    """The event as JSON without its seq (the commit script puts it first, see _COMMIT)."""
    fields = event.to_dict()
    del fields["seq"]
    return orjson.dumps(fields, default=str, option=orjson.OPT_NON_STR_KEYS)


def _event_bytes(event: HallEvent) -> bytes:
    # default=str like the records database's JSON encoder, so what it would store is storable.
    return orjson.dumps(event.to_dict(), default=str, option=orjson.OPT_NON_STR_KEYS)


class _ZView:
    """One transaction's changes to one sorted set, on top of what Redis holds."""

    __slots__ = ("adds", "base", "removes")

    def __init__(self) -> None:
        self.adds: dict[str, float] = {}
        self.removes: set[str] = set()
        # Redis score of each changed member (None: not in Redis), fetched once per member.
        self.base: dict[str, float | None] = {}

    def add(self, member: str, score: float) -> None:
        self.adds[member] = score
        self.removes.discard(member)

    def remove(self, member: str) -> None:
        self.adds.pop(member, None)
        self.removes.add(member)

    def changed(self) -> set[str]:
        return self.removes | self.adds.keys()


class _SetView:
    """One transaction's changes to one set, on top of what Redis holds."""

    __slots__ = ("adds", "base", "removes")

    def __init__(self) -> None:
        self.adds: set[str] = set()
        self.removes: set[str] = set()
        self.base: dict[str, bool] = {}  # Redis membership of each changed member, fetched once

    def add(self, member: str) -> None:
        self.adds.add(member)
        self.removes.discard(member)

    def remove(self, member: str) -> None:
        self.adds.discard(member)
        self.removes.add(member)


@dataclass(slots=True)
class _Tx:
    """Everything one transaction has written and not yet committed."""

    token: str
    tickets: dict[str, bytes] = field(default_factory=dict)
    clerks: dict[str, bytes] = field(default_factory=dict)
    handle: dict[str, float] = field(default_factory=dict)
    zsets: dict[str, _ZView] = field(default_factory=dict)
    sets: dict[str, _SetView] = field(default_factory=dict)
    outbox: list[tuple[HallEvent, bytes]] = field(default_factory=list)
    unstamped: list[bytes] = field(default_factory=list)  # outbox_add: seqs at the commit
    followups: dict[str, bytes] = field(default_factory=dict)
    shown: dict[str, int | None] = field(default_factory=dict)  # None: forget (HDEL)
    acked_upto: int | None = None  # outbox_ack inside the transaction (never by the engine)
    counts: dict[str, int] = field(default_factory=dict)  # incr counter key -> pending +n
    count_base: dict[str, int] = field(default_factory=dict)  # its value in Redis, read once
    # What was read with the lock (Prefetch), as Redis held it: valid for the whole
    # transaction, since nobody else writes these keys while we hold the lock.
    seen_tickets: dict[str, bytes | None] = field(default_factory=dict)
    seen_clerks: dict[str, bytes | None] = field(default_factory=dict)
    seen_sizes: dict[str, int] = field(default_factory=dict)  # ZCARD / SCARD by Redis key
    seen_handle: dict[str, float | None] = field(default_factory=dict)
    reserved: dict[str, list[int]] = field(default_factory=dict)  # next_seq numbers taken
    # Redis key -> (stop, the first `stop` members with scores)
    seen_ranges: dict[str, tuple[int, list[tuple[str, float]]]] = field(default_factory=dict)

    def zview(self, key: str) -> _ZView:
        view = self.zsets.get(key)
        if view is None:
            view = self.zsets[key] = _ZView()
        return view

    def setview(self, key: str) -> _SetView:
        view = self.sets.get(key)
        if view is None:
            view = self.sets[key] = _SetView()
        return view


_TICKETS_INDEX = "@tickets"  # in a read op's arguments: the tickets hash's index in KEYS


class _Reads:
    """A :class:`Prefetch` as the acquire script's read ops, and their replies put where the
    transaction's reads look first (the ``seen_*`` of :class:`_Tx`)."""

    __slots__ = ("_ops", "_tickets_key", "replies")

    def __init__(self, store: RedisStore, prefetch: Prefetch | None) -> None:
        # (command, key, arguments, what to do with the reply)
        self._ops: list[tuple[str, str, list[str], Callable[[_Tx, Any], None]]] = []
        self._tickets_key = store._tickets_key
        self.replies: list[Any] | None = None
        if prefetch is None:
            return
        add = self._ops.append
        tickets = list(dict.fromkeys(prefetch.tickets))
        if tickets:
            add(("hmget", store._tickets_key, tickets, partial(_fill_records, "t", tickets)))
        clerks = list(dict.fromkeys(prefetch.clerks))
        if clerks:
            add(("hmget", store._clerks_key, clerks, partial(_fill_records, "c", clerks)))
        for name in dict.fromkeys(prefetch.seqs):
            add(("reserve", store._prefix + "seq:" + name, [str(int(time.time() * 1_000_000))],
                 partial(_fill_seq, name)))
        for clerk_id in dict.fromkeys(prefetch.held):
            add(("held", store._clerks_key, [clerk_id, _TICKETS_INDEX], _fill_held))
        matters = list(dict.fromkeys(prefetch.handle_times))
        if matters:
            add(("hmget", store._handle_key, matters, partial(_fill_handle, matters)))
        sizes = ([("zcard", store._queue(k)) for k in prefetch.queue_lens]
                 + [("scard", store._duty(m)) for m in prefetch.duty_counts])
        for command, key in dict.fromkeys(sizes):
            add((command, key, [], partial(_fill_size, key)))
        for name in dict.fromkeys(prefetch.counters):
            key = store._count_key(name)
            add(("get", key, [], partial(_fill_count, key)))
        # (key, stop, how many of the first members' ticket records): the settle reads the
        # queue's head record, the router the first ready ticket's.
        heads = ([(store._queue(k), n, n) for k, n in prefetch.queue_heads]
                 + [(store._ready(k), n, 1) for k, n in prefetch.ready_heads]
                 + [(store._idle(k), n, 0) for k, n in prefetch.idle_heads])
        for key, stop, records in dict.fromkeys(heads):
            if stop > 0:
                add(("heads", key, [str(stop), str(records), _TICKETS_INDEX],
                     partial(_fill_heads, key, stop)))
        for key, member in dict.fromkeys(prefetch.queue_scores):
            add(("zmscore", store._queue(key), [member],
                 partial(_fill_score, store._queue(key), member)))

    def encode(self, keys: list[str], args: list[str | bytes | int]) -> None:
        if not self._ops:
            return
        tickets_at = ""
        ops: list[str | bytes | int] = []
        for command, key, items, _ in self._ops:
            if _TICKETS_INDEX in items and not tickets_at:
                keys.append(self._tickets_key)
                tickets_at = str(len(keys))
            keys.append(key)
            ops.extend((command, len(keys), len(items)))
            ops.extend(tickets_at if item == _TICKETS_INDEX else item for item in items)
        args.append(_blob(ops))

    def apply(self, tx: _Tx) -> None:
        if self.replies is None:
            return
        for (_, _, _, fill), reply in zip(self._ops, self.replies, strict=True):
            fill(tx, reply)


def _fill_records(kind: str, ids: list[str], tx: _Tx, reply: Any) -> None:
    (tx.seen_tickets if kind == "t" else tx.seen_clerks).update(zip(ids, reply, strict=True))


def _fill_seq(name: str, tx: _Tx, reply: Any) -> None:
    tx.reserved.setdefault(name, []).append(int(reply))


def _fill_held(tx: _Tx, reply: Any) -> None:
    if reply:
        tx.seen_tickets[_text(reply[0])] = reply[1] if len(reply) > 1 else None


def _fill_handle(matters: list[str], tx: _Tx, reply: Any) -> None:
    tx.seen_handle.update((m, None if raw is None else float(raw))
                          for m, raw in zip(matters, reply, strict=True))


def _fill_size(key: str, tx: _Tx, reply: Any) -> None:
    tx.seen_sizes[key] = int(reply)


def _fill_count(key: str, tx: _Tx, reply: Any) -> None:
    tx.count_base[key] = 0 if reply is None else int(reply)


def _fill_heads(key: str, stop: int, tx: _Tx, reply: Any) -> None:
    flat, records = list(reply[0] or []), list(reply[1] or [])
    pairs = [(_text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
    tx.seen_ranges[key] = (stop, pairs)
    for (member, _), raw in zip(pairs, records, strict=False):
        tx.seen_tickets.setdefault(member, raw)


def _fill_score(key: str, member: str, tx: _Tx, reply: Any) -> None:
    score = reply[0] if reply else None
    tx.zview(key).base.setdefault(member, None if score is None else float(score))


@dataclass(frozen=True, slots=True)
class _Scripts:
    acquire: AsyncScript
    commit: AsyncScript
    next_seq: AsyncScript
    rank_score: AsyncScript
    count_below: AsyncScript
    lease: AsyncScript
    positions: AsyncScript


def _writes(
    method: Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, T]]:
    """A write outside a transaction runs as a transaction of its own (see the module doc)."""

    @functools.wraps(method)
    async def wrapper(store: RedisStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        if store._current() is not None:
            return await method(store, *args, **kwargs)
        async with store.transaction():
            return await method(store, *args, **kwargs)

    return wrapper


class RedisStore(Store):
    """Live state of a hall in Redis, shared by every hall process that uses the same prefix."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "hall:",
        lease_s: float = 5.0,
        acquire_timeout_s: float | None = None,
        timeout_s: float = 2.0,
        backoff_start_s: float = 0.0005,
        backoff_cap_s: float = 0.02,
        wakeups: bool = True,
    ) -> None:
        if lease_s <= 0 or timeout_s <= 0:
            raise ValueError("lease_s and timeout_s must be positive")
        self._prefix = prefix
        self._lease_ms = max(1, round(lease_s * 1000))
        self._acquire_timeout_s = 2 * lease_s if acquire_timeout_s is None else acquire_timeout_s
        self._backoff_start_s = backoff_start_s
        self._backoff_cap_s = backoff_cap_s
        self._wakeups = wakeups
        # Names this store instance in the committed-token hash (see _COMMIT).
        self._instance = secrets.token_hex(8)
        self._link = RedisLink(url, timeout_s, "Redis store")
        self._scripts: _Scripts | None = None
        self._listener: asyncio.Task[None] | None = None
        self._local = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tx: _Tx | None = None
        self._tx_task: asyncio.Task[Any] | None = None
        self._handbacks: set[asyncio.Task[None]] = set()  # see _acquire
        # How contended the hall lock is: attempts per transaction (1.0: never waited).
        self.stats = {"transactions": 0, "lock_attempts": 0}
        # Seconds, summed over transactions: queued behind this process's own commands, taking
        # the hall lock (its round trip and any wait for another process), holding it (from
        # granted to committed), and the longest hold (docs/architecture.md, "under load").
        self.lock_times = {"local_wait_s": 0.0, "lock_wait_s": 0.0, "hold_s": 0.0,
                           "hold_max_s": 0.0}
        self._lock_key = prefix + "lock"
        self._committed_key = prefix + "committed"
        # Waiting stores, oldest first (score: when they first found the lock taken, ms); a
        # release wakes the first of them only, on its own channel.
        self._queue_key = prefix + "lockq"
        self._wake_prefix = prefix + "wake:"
        self._channel = self._wake_prefix + self._instance
        self._tickets_key = prefix + "tickets"
        self._clerks_key = prefix + "clerks"
        self._active_key = prefix + "active"
        self._handle_key = prefix + "handle"
        self._timers_key = prefix + "timers"
        self._outbox_key = prefix + "outbox"
        self._followups_key = prefix + "followups"
        self._shown_key = prefix + "shown"

    @property
    def prefix(self) -> str:
        return self._prefix

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        """Connect, register the scripts and check that Redis answers (else
        StoreUnavailableError, and the store is closed again)."""
        if self._link.is_open:
            return
        client = self._link.connect()
        self._scripts = _Scripts(
            acquire=client.register_script(_ACQUIRE),
            commit=client.register_script(_COMMIT),
            next_seq=client.register_script(_NEXT_SEQ),
            rank_score=client.register_script(_RANK_SCORE),
            count_below=client.register_script(_COUNT_BELOW),
            lease=client.register_script(_LEASE),
            positions=client.register_script(_POSITIONS),
        )
        try:
            await self._io(client.ping())
        except StoreUnavailableError:
            await self.close()
            raise
        if self._wakeups:
            self._listener = asyncio.create_task(self._listen(), name="redis-store-wakeups")

    async def close(self) -> None:
        """Disconnect; idempotent. Does not wait for Redis if it is gone."""
        if self._handbacks:
            await asyncio.wait(self._handbacks, timeout=self._link.timeout_s)
        listener, self._listener = self._listener, None
        self._scripts = None
        if self._link.is_open and self.stats["transactions"]:
            count, times = self.stats["transactions"], self.lock_times
            logger.info("hall lock: %d transactions, %.2f attempts each; per transaction "
                        "%.2f ms queued here, %.2f ms taking the lock, %.2f ms held "
                        "(longest %.1f ms)", count, self.stats["lock_attempts"] / count,
                        times["local_wait_s"] / count * 1000,
                        times["lock_wait_s"] / count * 1000, times["hold_s"] / count * 1000,
                        times["hold_max_s"] * 1000)
        # Tidy this instance's retry marker; a crashed process leaves one small field behind.
        await self._link.close(
            listener, lambda client: client.hdel(self._committed_key, self._instance))

    async def ping(self) -> bool:
        return await self._link.ping()

    @property
    def link(self) -> RedisLink:
        """The connection to Redis (server/metrics.py times its requests)."""
        return self._link

    def _client(self) -> aioredis.Redis:
        return self._link.client

    def _lua(self) -> _Scripts:
        if self._scripts is None:
            raise StoreUnavailableError("the Redis store is not open")
        return self._scripts

    async def _io(self, request: Awaitable[T]) -> T:
        return await self._link.io(request)

    async def _listen(self) -> None:
        """Wake this process's waiting transaction when a release names this store."""
        async def wake(_data: bytes) -> None:
            self._wake.set()

        # While Redis is down, waiters fall back to polling until this reconnects.
        await self._link.subscribe_forever(self._channel, wake, logger=logger,
                                           what="lock wake-ups")

    # ------------------------------------------------------------------ transactions
    def transaction(self, prefetch: Prefetch | None = None,
                    ) -> AbstractAsyncContextManager[None]:
        return self._transaction(prefetch)

    def _current(self) -> _Tx | None:
        """The open transaction of the calling task, if any: other tasks of this process
        (snapshot readers, the records writer) must neither see nor join its writes."""
        if self._tx is None:
            return None
        return self._tx if self._tx_task is asyncio.current_task() else None

    def _need(self) -> _Tx:
        tx = self._current()
        if tx is None:
            raise RuntimeError("a buffered write outside a transaction")  # see _writes
        return tx

    @asynccontextmanager
    async def _transaction(self, prefetch: Prefetch | None = None) -> AsyncIterator[None]:
        if self._current() is not None:
            raise RuntimeError("store transactions do not nest")
        clock = time.perf_counter
        queued = clock()
        async with self._local:
            self.stats["transactions"] += 1
            asked = clock()
            reads = _Reads(self, prefetch)
            tx = _Tx(token=await self._acquire(reads))
            taken = clock()
            reads.apply(tx)
            self._tx, self._tx_task = tx, asyncio.current_task()
            try:
                yield
            finally:
                # Committed even when the body raised: MemoryStore applies writes at once, so
                # what a failing command wrote before failing stays, and the engine counts on it.
                self._tx = self._tx_task = None
                try:
                    await self._commit(tx)
                finally:
                    times = self.lock_times
                    times["local_wait_s"] += asked - queued
                    times["lock_wait_s"] += taken - asked
                    hold = clock() - taken
                    times["hold_s"] += hold
                    times["hold_max_s"] = max(times["hold_max_s"], hold)

    async def _acquire(self, reads: _Reads | None = None) -> str:
        """Take the lock (making ``reads`` with it); returns the lock's token."""
        token = secrets.token_hex(12)
        keys = [self._lock_key, self._queue_key]
        args: list[str | bytes | int] = [token, self._lease_ms, self._instance,
                                 round(self._acquire_timeout_s * 1000), int(self._wakeups)]
        if reads is not None:
            reads.encode(keys, args)
        lua = self._lua()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._acquire_timeout_s
        delay = self._backoff_start_s
        while True:
            # Cleared before trying, so a release between this try and the wait still wakes us.
            self._wake.clear()
            self.stats["lock_attempts"] += 1
            try:
                got = await self._io(lua.acquire(keys=keys, args=args))
            except asyncio.CancelledError:
                # Redis may have given us the lock before the cancel arrived: hand it back now
                # rather than stall every process until the lease runs out.
                self._hand_back(token)
                raise
            if isinstance(got, list):
                assert reads is not None
                reads.replies = got[1:]
                return token
            if got:
                return token
            left = give_up - loop.time()
            if left <= 0:
                raise StoreUnavailableError(
                    f"the hall lock {self._lock_key!r} stayed taken for "
                    f"{self._acquire_timeout_s:g} s"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(delay, left))
            delay = min(delay * 2, self._backoff_cap_s)

    def _hand_back(self, token: str) -> None:
        async def release() -> None:
            with contextlib.suppress(Exception):  # not ours after all, or Redis gone: the lease
                await self._commit(_Tx(token), quiet=True)

        task = asyncio.create_task(release(), name="redis-store-hand-back")
        self._handbacks.add(task)
        task.add_done_callback(self._handbacks.discard)

    async def _commit(self, tx: _Tx, *, quiet: bool = False) -> None:
        keys, args = self._encode(tx)
        try:
            done = await self._io(self._lua().commit(keys=keys, args=args))
        except StoreUnavailableError as exc:
            raise StoreUnavailableError(
                f"{exc.message}; the command may not have been recorded"
            ) from exc.__cause__
        if done == 0:
            if not quiet:
                logger.warning("commit refused: the lease on %s ran out (over %d ms)",
                               self._lock_key, self._lease_ms)
            raise StoreLockLostError(
                f"the hall lock's lease ({self._lease_ms} ms) ran out before the command "
                "committed, so another process may have taken over; nothing was written"
            )

    def _encode(self, tx: _Tx) -> tuple[list[str], list[str | bytes | int]]:
        """The commit script's KEYS and ARGV: every buffered write (final values, and the
        counters' increments)."""
        keys = [self._lock_key, self._committed_key, self._queue_key]
        args: list[str | bytes | int] = [tx.token, self._instance, self._wake_prefix]
        ops: list[str | bytes | int] = []

        def op(command: str, key: str, items: Sequence[str | bytes]) -> None:
            if items:
                keys.append(key)
                ops.extend((command, len(keys), len(items)))
                ops.extend(items)

        def flat(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> list[str | bytes]:
            return [x for pair in pairs for x in pair]

        op("hset", self._tickets_key, flat(tx.tickets.items()))
        op("hset", self._clerks_key, flat(tx.clerks.items()))
        op("hset", self._handle_key, flat((m, repr(s)) for m, s in tx.handle.items()))
        for key, count in tx.counts.items():
            op("incrby", key, [str(count)])
        for key, zview in tx.zsets.items():
            op("zrem", key, sorted(zview.removes))
            op("zadd", key, flat((_score(s), m) for m, s in zview.adds.items()))
        for key, sview in tx.sets.items():
            op("srem", key, sorted(sview.removes))
            op("sadd", key, sorted(sview.adds))
        if tx.acked_upto is not None:
            op("zremrangebyscore", self._outbox_key, ["-inf", str(tx.acked_upto)])
        op("zadd", self._outbox_key, flat((str(e.seq), raw) for e, raw in tx.outbox))
        if tx.unstamped:
            keys.append(self._outbox_key)
            op("stamp", self._prefix + "seq:event",
               [str(len(keys)), str(int(time.time() * 1_000_000)), *tx.unstamped])
        op("hset", self._followups_key, flat(tx.followups.items()))
        op("hdel", self._shown_key, sorted(t for t, p in tx.shown.items() if p is None))
        op("hset", self._shown_key,
           flat((t, str(p)) for t, p in tx.shown.items() if p is not None))
        if ops:
            args.append(_blob(ops))
        return keys, args

    # ------------------------------------------------------------------ sorted-set reads
    async def _zbase(self, key: str, view: _ZView) -> dict[str, float | None]:
        missing = [m for m in view.changed() if m not in view.base]
        if missing:
            scores = await self._io(self._client().zmscore(key, missing))
            view.base.update(zip(missing, scores, strict=True))
        return view.base

    def _zread(self, key: str) -> _ZView | None:
        """This task's pending changes to a sorted set, or None when reads can go straight
        to Redis."""
        tx = self._current()
        view = tx.zsets.get(key) if tx is not None else None
        return view if view is not None and (view.adds or view.removes) else None

    async def _hidden(self, key: str, view: _ZView) -> dict[str, float]:
        """Members whose Redis copy the overlay hides (changed, and present in Redis)."""
        base = await self._zbase(key, view)
        return {m: s for m, s in base.items() if s is not None and m in view.changed()}

    async def _zadd(self, key: str, member: str, score: float) -> None:
        _score(score)  # refuse NaN now rather than in the commit script
        self._need().zview(key).add(member, score)

    async def _zrem(self, key: str, member: str) -> bool:
        view = self._need().zview(key)
        if member in view.adds:
            present = True
        elif member in view.removes:
            present = False
        else:
            view.removes.add(member)  # so _zbase fetches its Redis score
            present = (await self._zbase(key, view))[member] is not None
        view.remove(member)
        return present

    async def _zcard(self, key: str) -> int:
        count = await self._size(key, "zcard")
        view = self._zread(key)
        if view is None:
            return count
        return count - len(await self._hidden(key, view)) + len(view.adds)

    async def _zrank(self, key: str, member: str) -> int | None:
        view = self._zread(key)
        if view is None:
            rank: Any = await self._io(self._client().zrank(key, member))
            return None if rank is None else int(rank)
        if member in view.removes:
            return None
        lua = self._lua()
        if member in view.adds:
            score = view.adds[member]
            found = await self._io(lua.count_below(keys=[key], args=[_score(score), member]))
            below = int(found[0])
            # Its Redis score too, which the overlay needs next (one request, not two).
            view.base.setdefault(member, None if found[1] is None else float(found[1]))
        else:
            found = await self._io(lua.rank_score(keys=[key], args=[member]))
            if found is None:
                return None
            below, score = int(found[0]), float(found[1])
        here = (score, member)
        hidden = await self._hidden(key, view)
        below -= sum(1 for m, s in hidden.items() if (s, m) < here)
        below += sum(1 for m, s in view.adds.items() if (s, m) < here)
        return below

    async def _zrange(self, key: str, start: int, stop: int) -> list[tuple[str, float]]:
        if start < 0 or stop < 0:
            raise ValueError("ranges are non-negative ranks")
        if stop <= start:
            return []
        view = self._zread(key)
        if view is None:
            return await self._zwindow(key, start, stop)
        hidden = await self._hidden(key, view)
        adds = sorted((s, m) for m, s in view.adds.items())
        # A Redis member at rank i has merged rank between i - len(hidden) and i + len(adds),
        # so merged ranks [start, stop) all come from Redis ranks [lo, hi).
        lo = max(0, start - len(adds))
        hi = stop + len(hidden)
        window = [(s, m) for m, s in await self._zwindow(key, lo, hi)]
        if lo > 0 and not window:
            return []  # Redis holds at most lo members: the merged set ends before start
        if lo == 0:
            first_rank = 0
            floor = None
        else:
            # Exactly lo Redis members order before the window's first one.
            floor = window[0]
            first_rank = (lo - sum(1 for m, s in hidden.items() if (s, m) < floor)
                          + sum(1 for a in adds if a < floor))
        merged = [w for w in window if w[1] not in hidden]
        merged += [a for a in adds if floor is None or a >= floor]
        merged.sort()
        # An add past the window's last member may have unfetched Redis members before it, but
        # at least `stop` merged members order at or before that last one (hi = stop + hidden),
        # so such an add always falls beyond the slice taken here.
        begin = start - first_rank
        return [(m, s) for s, m in merged[begin : stop - first_rank]]

    async def _zwindow(self, key: str, start: int, stop: int) -> list[tuple[str, float]]:
        """Redis's members ranked ``start`` to ``stop`` (exclusive), from what was read with
        the lock if that covers them, else from Redis."""
        tx = self._current()
        seen = tx.seen_ranges.get(key) if tx is not None else None
        if seen is not None and stop <= seen[0]:
            return seen[1][start:stop]
        return _pairs(await self._io(self._client().zrange(key, start, stop - 1,
                                                           withscores=True)))

    async def _size(self, key: str, command: str) -> int:
        """ZCARD or SCARD of Redis's copy, from what was read with the lock if it was."""
        tx = self._current()
        if tx is not None and key in tx.seen_sizes:
            return tx.seen_sizes[key]
        client = self._client()
        request = client.zcard(key) if command == "zcard" else client.scard(key)
        return int(await self._io(request))

    async def _zupto(self, key: str, max_score: float, limit: int) -> list[tuple[str, float]]:
        if limit <= 0:
            return []
        client = self._client()
        view = self._zread(key)
        hidden = {} if view is None else await self._hidden(key, view)
        raw = await self._io(client.zrangebyscore(key, "-inf", _score(max_score), start=0,
                                                  num=limit + len(hidden), withscores=True))
        found = [(s, m) for m, s in _pairs(raw) if m not in hidden]
        if view is not None:
            found += [(s, m) for m, s in view.adds.items() if s <= max_score]
            found.sort()
        return [(m, s) for s, m in found[:limit]]

    # ------------------------------------------------------------------ set reads
    def _setread(self, key: str) -> _SetView | None:
        tx = self._current()
        view = tx.sets.get(key) if tx is not None else None
        return view if view is not None and (view.adds or view.removes) else None

    async def _scard(self, key: str) -> int:
        count = await self._size(key, "scard")
        view = self._setread(key)
        if view is None:
            return count
        changed = view.adds | view.removes
        missing = [m for m in changed if m not in view.base]
        if missing:
            flags = await self._io(self._client().smismember(key, missing))
            view.base.update((m, bool(f)) for m, f in zip(missing, flags, strict=True))
        return count - sum(1 for m in changed if view.base[m]) + len(view.adds)

    # ------------------------------------------------------------------ counters
    async def lease(self, name: str, holder: str, ttl_s: float) -> bool:
        got = await self._io(self._lua().lease(keys=[self._prefix + "lease:" + name],
                                               args=[holder, max(1, round(ttl_s * 1000))]))
        return bool(got)

    async def next_seq(self, name: str) -> int:
        tx = self._current()
        taken = tx.reserved.get(name) if tx is not None else None
        if taken:
            return taken.pop(0)  # reserved with the lock (Prefetch.seqs)
        return await self._reserve(name, 1)

    async def _reserve(self, name: str, count: int) -> int:
        """Take ``count`` values of a monotonic counter at once; returns the last one."""
        base = int(time.time() * 1_000_000)
        return int(await self._io(
            self._lua().next_seq(keys=[self._prefix + "seq:" + name], args=[base, count])
        ))

    def _count_key(self, name: str) -> str:
        return self._prefix + "count:" + name

    @_writes
    async def incr(self, name: str) -> int:
        # Buffered like any write (the day's statistics must move with the events that move
        # them); the lock keeps the Redis value still until the commit's INCRBY.
        tx, key = self._need(), self._count_key(name)
        if key not in tx.count_base:
            raw = await self._io(self._client().get(key))
            tx.count_base[key] = 0 if raw is None else int(raw)
        tx.counts[key] = tx.counts.get(key, 0) + 1
        return tx.count_base[key] + tx.counts[key]

    @_writes
    async def bump(self, name: str) -> None:
        # An increment whose result nobody reads: no GET first (the commit's INCRBY counts).
        key = self._count_key(name)
        tx = self._need()
        tx.counts[key] = tx.counts.get(key, 0) + 1

    async def counter_get(self, name: str) -> int:
        return (await self.counters_get([name]))[0]

    async def counters_get(self, names: Sequence[str]) -> list[int]:
        """One MGET for all of them, plus this transaction's pending increments."""
        if not names:
            return []
        keys = [self._count_key(name) for name in names]
        raws = await self._io(self._client().mget(keys))
        tx = self._current()
        pending = tx.counts if tx is not None else {}
        return [(0 if raw is None else int(raw)) + pending.get(key, 0)
                for key, raw in zip(keys, raws, strict=True)]

    # ------------------------------------------------------------------ records
    async def get_ticket(self, ticket_id: str) -> Ticket | None:
        tx = self._current()
        raw: bytes | str | None = tx.tickets.get(ticket_id) if tx is not None else None
        if raw is None and tx is not None and ticket_id in tx.seen_tickets:
            raw = tx.seen_tickets[ticket_id]
        elif raw is None:
            raw = await self._io(self._client().hget(self._tickets_key, ticket_id))
        return None if raw is None else Ticket.from_dict(orjson.loads(raw))

    @_writes
    async def put_ticket(self, ticket: Ticket) -> None:
        self._need().tickets[ticket.id] = orjson.dumps(ticket.to_dict())

    async def get_clerk(self, clerk_id: str) -> Clerk | None:
        tx = self._current()
        raw: bytes | str | None = tx.clerks.get(clerk_id) if tx is not None else None
        if raw is None and tx is not None and clerk_id in tx.seen_clerks:
            raw = tx.seen_clerks[clerk_id]
        elif raw is None:
            raw = await self._io(self._client().hget(self._clerks_key, clerk_id))
        return None if raw is None else Clerk.from_dict(orjson.loads(raw))

    @_writes
    async def put_clerk(self, clerk: Clerk) -> None:
        self._need().clerks[clerk.id] = orjson.dumps(clerk.to_dict())

    async def clerk_ids(self) -> list[str]:
        ids = {_text(k) for k in await self._io(self._client().hkeys(self._clerks_key))}
        tx = self._current()
        if tx is not None:
            ids |= tx.clerks.keys()
        return sorted(ids)

    async def active_ticket_ids(self) -> list[str]:
        ids = {_text(m) for m in await self._io(self._client().smembers(self._active_key))}
        view = self._setread(self._active_key)
        if view is not None:
            ids = (ids - view.removes) | view.adds
        return sorted(ids)

    @_writes
    async def set_ticket_active(self, ticket_id: str, active: bool) -> None:
        view = self._need().setview(self._active_key)
        if active:
            view.add(ticket_id)
        else:
            view.remove(ticket_id)

    # ------------------------------------------------------------------ queues
    def _queue(self, key: str) -> str:
        return self._prefix + "queue:" + key

    def _ready(self, key: str) -> str:
        return self._prefix + "ready:" + key

    def _idle(self, pool: str) -> str:
        return self._prefix + "idle:" + pool

    def _duty(self, matter_id: str) -> str:
        return self._prefix + "duty:" + matter_id

    @_writes
    async def queue_add(self, key: str, ticket_id: str, score: float) -> None:
        await self._zadd(self._queue(key), ticket_id, score)

    @_writes
    async def queue_remove(self, key: str, ticket_id: str) -> bool:
        return await self._zrem(self._queue(key), ticket_id)

    async def queue_rank(self, key: str, ticket_id: str) -> int | None:
        return await self._zrank(self._queue(key), ticket_id)

    async def queue_len(self, key: str) -> int:
        return await self._zcard(self._queue(key))

    async def queue_range(self, key: str, start: int, stop: int) -> list[str]:
        return [m for m, _ in await self._zrange(self._queue(key), start, stop)]

    @_writes
    async def ready_add(self, key: str, ticket_id: str, score: float) -> None:
        await self._zadd(self._ready(key), ticket_id, score)

    @_writes
    async def ready_remove(self, key: str, ticket_id: str) -> None:
        # Blind: whether it was there is not asked, so its Redis score is fetched only if a
        # later read of the set in this transaction needs it (usually none does).
        self._need().zview(self._ready(key)).remove(ticket_id)

    async def ready_range(self, key: str, start: int, stop: int) -> list[tuple[str, float]]:
        return await self._zrange(self._ready(key), start, stop)

    @_writes
    async def idle_add(self, pools: Iterable[str], clerk_id: str, since: float) -> None:
        for pool in pools:
            await self._zadd(self._idle(pool), clerk_id, since)

    @_writes
    async def idle_remove(self, pools: Iterable[str], clerk_id: str) -> None:
        tx = self._need()
        for pool in pools:
            tx.zview(self._idle(pool)).remove(clerk_id)

    async def idle_range(self, pool: str, start: int, stop: int) -> list[tuple[str, float]]:
        return await self._zrange(self._idle(pool), start, stop)

    @_writes
    async def duty_add(self, matter_ids: Iterable[str], clerk_id: str) -> None:
        tx = self._need()
        for matter_id in matter_ids:
            tx.setview(self._duty(matter_id)).add(clerk_id)

    @_writes
    async def duty_remove(self, matter_ids: Iterable[str], clerk_id: str) -> None:
        tx = self._need()
        for matter_id in matter_ids:
            tx.setview(self._duty(matter_id)).remove(clerk_id)

    async def duty_count(self, matter_id: str) -> int:
        return await self._scard(self._duty(matter_id))

    # ------------------------------------------------------------------ shown positions
    @_writes
    async def shown_set(self, ticket_id: str, position: int | None) -> None:
        self._need().shown[ticket_id] = position

    async def positions_shown(self, key: str, ticket_ids: Sequence[str] | None = None,
                              ) -> list[tuple[str, int, int]]:
        # Committed state only, like every read outside a transaction: one script, no lock.
        if ticket_ids is not None and not ticket_ids:
            return []
        flat = await self._io(self._lua().positions(
            keys=[self._queue(key), self._shown_key], args=list(ticket_ids or [])))
        return [(_text(flat[i]), int(flat[i + 1]), int(flat[i + 2]))
                for i in range(0, len(flat), 3)]

    # ------------------------------------------------------------------ handle times
    async def get_handle_time(self, matter_id: str) -> float | None:
        tx = self._current()
        if tx is not None and matter_id in tx.handle:
            return tx.handle[matter_id]
        if tx is not None and matter_id in tx.seen_handle:
            return tx.seen_handle[matter_id]
        raw = await self._io(self._client().hget(self._handle_key, matter_id))
        return None if raw is None else float(raw)

    @_writes
    async def put_handle_time(self, matter_id: str, seconds: float) -> None:
        self._need().handle[matter_id] = float(seconds)

    # ------------------------------------------------------------------ timers
    @_writes
    async def timer_set(self, key: str, at: float) -> None:
        await self._zadd(self._timers_key, key, at)

    @_writes
    async def timer_cancel(self, key: str) -> None:
        self._need().zview(self._timers_key).remove(key)

    async def timers_due(self, now: float, limit: int = 100) -> list[tuple[str, float]]:
        return await self._zupto(self._timers_key, now, limit)

    async def timer_next(self) -> float | None:
        first = await self._zrange(self._timers_key, 0, 1)
        return first[0][1] if first else None

    # ------------------------------------------------------------------ outbox
    @_writes
    async def outbox_append(self, events: Sequence[HallEvent]) -> list[HallEvent]:
        if not events:
            return []
        last = await self._reserve("event", len(events))
        first = last - len(events) + 1
        stamped = [e.with_seq(first + i) for i, e in enumerate(events)]
        self._need().outbox.extend((e, _event_bytes(e)) for e in stamped)
        return stamped

    @_writes
    async def outbox_add(self, events: Sequence[HallEvent]) -> None:
        # Numbered by the commit script, under the lock: no INCRBY round trip per command.
        self._need().unstamped.extend(_unstamped_bytes(e) for e in events)

    async def outbox_peek(self, limit: int) -> list[HallEvent]:
        if limit <= 0:
            return []
        tx = self._current()
        low = "-inf" if tx is None or tx.acked_upto is None else f"({tx.acked_upto}"
        raw = await self._io(self._client().zrangebyscore(self._outbox_key, low, "+inf",
                                                          start=0, num=limit))
        events = [HallEvent.from_dict(orjson.loads(r)) for r in cast(list[bytes], raw)]
        if tx is not None:
            # Pending seqs were taken after every committed one: they follow in order.
            events += [e for e, _ in tx.outbox[: limit - len(events)]]
        return events

    async def outbox_ack(self, upto_seq: int) -> int:
        client = self._client()
        tx = self._current()
        if tx is None:
            return int(await self._io(
                client.zremrangebyscore(self._outbox_key, "-inf", upto_seq)
            ))
        low = "-inf" if tx.acked_upto is None else f"({tx.acked_upto}"
        dropped = int(await self._io(client.zcount(self._outbox_key, low, upto_seq)))
        kept = [(e, raw) for e, raw in tx.outbox if e.seq > upto_seq]
        dropped += len(tx.outbox) - len(kept)
        tx.outbox = kept
        tx.acked_upto = max(upto_seq, tx.acked_upto or upto_seq)
        return dropped

    async def outbox_len(self) -> int:
        client = self._client()
        tx = self._current()
        if tx is None:
            return int(await self._io(client.zcard(self._outbox_key)))
        low = "-inf" if tx.acked_upto is None else f"({tx.acked_upto}"
        committed = int(await self._io(client.zcount(self._outbox_key, low, "+inf")))
        return committed + len(tx.outbox) + len(tx.unstamped)

    # ------------------------------------------------------------------ follow-ups
    @_writes
    async def followup_add(self, key: str, data: dict[str, Any]) -> None:
        # Committed with the command that made the work due, like its events.
        self._need().followups[key] = orjson.dumps(data, default=str)

    async def followup_peek(self, limit: int) -> list[tuple[str, dict[str, Any]]]:
        # A hash has no order; the follow-ups pending at once are few (they pile up only
        # while the records database is down), so one HGETALL is the cheapest read.
        raw = cast(dict[bytes, bytes],
                   await self._io(self._client().hgetall(self._followups_key)))
        pending = {_text(k): v for k, v in raw.items()}
        tx = self._current()
        if tx is not None:
            pending.update(tx.followups)
        return [(k, orjson.loads(v)) for k, v in sorted(pending.items())][: max(0, limit)]

    async def followup_ack(self, key: str) -> None:
        # Straight to Redis, like outbox_ack: the work is done, nothing is waiting on a lock.
        tx = self._current()
        if tx is not None:
            tx.followups.pop(key, None)
        await self._io(self._client().hdel(self._followups_key, key))
