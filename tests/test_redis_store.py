"""The Store contract on both backends, and what only Redis must add: a transaction's writes are
seen by its own reads at once and by everyone else all at once on commit, a commit whose lock was
taken over writes nothing, transactions never interleave across connections and OS processes, a
dead holder's lock frees itself, and a Redis outage is a clear error rather than a hang."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from rooms.catalog import ServiceKind
from rooms.clerks import Clerk
from rooms.errors import StoreLockLostError, StoreUnavailableError
from rooms.events import EventKind, HallEvent
from rooms.redis_store import RedisStore
from rooms.store import Store
from rooms.tickets import Channel, PriorityReason, Ticket
from tests.hallkit import StoreFactory
from tests.redis_worker import COUNTER_ID, HELD_ID, bump
from tests.redisproc import RedisServer, drop_prefix, free_port, new_prefix, own_redis

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[Store]:
    opened = store_factory()
    await opened.open()
    yield opened
    await opened.close()


@dataclass
class Shared:
    """Several RedisStores ("processes") on one prefix, and a raw client to poke at Redis."""

    url: str
    prefix: str
    raw: aioredis.Redis
    make: Callable[..., Awaitable[RedisStore]]


@pytest.fixture
async def shared(redis_server: RedisServer) -> AsyncIterator[Shared]:
    prefix = new_prefix()
    stores: list[RedisStore] = []

    async def make(**options: Any) -> RedisStore:
        stores.append(RedisStore(redis_server.url, prefix=prefix, **options))
        await stores[-1].open()
        return stores[-1]

    raw = aioredis.from_url(redis_server.url)
    yield Shared(redis_server.url, prefix, raw, make)
    for opened in stores:
        await opened.close()
    await raw.aclose()
    drop_prefix(redis_server.url, prefix)


def _event(n: int) -> HallEvent:
    return HallEvent(kind=EventKind.CLERK_LOGIN, at=1_700_000_000.0 + n, clerk_id=f"c{n}",
                     data={"n": n, "note": "登录"})


def _ticket(ticket_id: str) -> Ticket:
    return Ticket(id=ticket_id, number="A001", matter_id="m", department_id="hr",
                  kind=ServiceKind.CONSULTATION, channel=Channel.APP, joined_at=1.0, score=1.0,
                  skip_clerks={"c2": 30.5}, priority=PriorityReason.ELDERLY)


def _order(model: dict[str, float]) -> list[str]:
    """Members in Redis order: by score, ties by the member's bytes."""
    return sorted(model, key=lambda m: (model[m], m.encode()))


# ---------------------------------------------------------------- contract, both backends


async def test_ping_answers_true_when_the_store_is_there(store: Store) -> None:
    """ping() is True for an open store."""
    assert await store.ping() is True


async def test_sorted_sets_order_ties_by_member_bytes_like_redis(store: Store) -> None:
    """Equal scores are ordered by the member's bytes; -inf and inf order first and last."""
    members = {"b": 1.0, "a": 1.0, "A10": 1.0, "A9": 1.0, "é": 1.0, "z": 0.5,
               "low": float("-inf"), "high": float("inf"), "neg": -2.25}
    async with store.transaction():
        for member, score in members.items():
            await store.queue_add("matter:x", member, score)
            await store.ready_add("matter:x", member, score)
    expected = _order(members)
    assert expected[:3] == ["low", "neg", "z"] and expected[-2:] == ["é", "high"]
    assert await store.queue_range("matter:x", 0, 100) == expected
    assert [m for m, _ in await store.ready_range("matter:x", 0, 100)] == expected
    assert [await store.queue_rank("matter:x", m) for m in expected] == list(range(len(expected)))
    assert dict(await store.ready_range("matter:x", 0, 100)) == members


async def test_scores_round_trip_exactly(store: Store) -> None:
    """A score comes back as the very same float (timestamps with microseconds)."""
    scores = [1_700_000_000.123456, 0.1 + 0.2, -600.000001, 1e-300]
    async with store.transaction():
        for i, score in enumerate(scores):
            await store.timer_set(f"t{i}", score)
    assert sorted(s for _, s in await store.timers_due(2e9, 10)) == sorted(scores)


async def test_reads_inside_a_transaction_see_its_writes(store: Store) -> None:
    """Inside a transaction, every read reflects the writes made earlier in it."""
    async with store.transaction():
        for i, member in enumerate(["T1", "T2", "T3"]):
            await store.queue_add("matter:m", member, float(i))
        await store.put_clerk(Clerk("c1", "一号", ["m"]))
        await store.timer_set("offer:T1", 50.0)
    async with store.transaction():
        await store.queue_add("matter:m", "T9", 1.5)  # between T2 and T3
        assert await store.queue_len("matter:m") == 4
        assert await store.queue_rank("matter:m", "T9") == 2
        assert await store.queue_rank("matter:m", "T3") == 3
        assert await store.queue_range("matter:m", 1, 3) == ["T2", "T9"]
        assert await store.queue_remove("matter:m", "T2") is True
        assert await store.queue_remove("matter:m", "T2") is False
        assert await store.queue_range("matter:m", 0, 10) == ["T1", "T9", "T3"]
        assert await store.queue_rank("matter:m", "T2") is None
        await store.queue_add("matter:m", "T1", 9.0)  # moved to the back
        assert await store.queue_range("matter:m", 0, 10) == ["T9", "T3", "T1"]
        assert await store.queue_rank("matter:m", "T1") == 2

        await store.timer_set("wrapup:c1", 10.0)
        await store.timer_cancel("offer:T1")
        assert await store.timers_due(100.0, 10) == [("wrapup:c1", 10.0)]
        assert await store.timer_next() == 10.0

        await store.put_ticket(_ticket("T9"))
        assert (await store.get_ticket("T9")) == _ticket("T9")
        clerk = await store.get_clerk("c1")
        assert clerk is not None
        clerk.missed_in_row = 2
        await store.put_clerk(clerk)
        assert (await store.get_clerk("c1")) == clerk
        await store.put_clerk(Clerk("c0", "零号", []))
        assert await store.clerk_ids() == ["c0", "c1"]

        await store.set_ticket_active("T9", True)
        await store.set_ticket_active("T3", True)
        await store.set_ticket_active("T3", False)
        assert await store.active_ticket_ids() == ["T9"]
        await store.duty_add(["m", "n"], "c1")
        await store.duty_add(["m"], "c0")
        await store.duty_remove(["n"], "c1")
        assert [await store.duty_count(m) for m in ("m", "n")] == [2, 0]
        await store.idle_add(["p:m", "s:n"], "c1", 5.0)
        await store.idle_remove(["s:n"], "c1")
        assert await store.idle_range("p:m", 0, 5) == [("c1", 5.0)]
        assert await store.idle_range("s:n", 0, 5) == []
        await store.put_handle_time("m", 420.5)
        assert await store.get_handle_time("m") == 420.5

        stamped = await store.outbox_append([_event(1), _event(2)])
        assert [e.seq for e in await store.outbox_peek(10)] == [e.seq for e in stamped]
        assert await store.outbox_len() == 2
    assert await store.queue_range("matter:m", 0, 10) == ["T9", "T3", "T1"]
    assert await store.active_ticket_ids() == ["T9"]
    assert await store.outbox_peek(10) == stamped


async def test_sorted_set_reads_match_a_model_across_transactions(store: Store) -> None:
    """Random adds, moves and removes with many tied scores: len, rank, any range and
    'due up to' agree with a simple model inside transactions and after each commit."""
    rng = random.Random(20261124)
    scores = [-1.0, 0.0, 1.0, 1.0, 1.0, 2.5, 7.0, 1e9 + 0.25]
    members = [f"T{i:04d}" for i in range(120)] + ["a", "B", "é"]
    model: dict[str, float] = {}

    async def check() -> None:
        order = _order(model)
        assert await store.queue_len("matter:q") == len(order)
        for member in rng.sample(members, 6):
            expected = order.index(member) if member in model else None
            assert await store.queue_rank("matter:q", member) == expected
        for _ in range(4):
            start = rng.randint(0, len(order) + 3)
            stop = start + rng.randint(0, 12)
            assert await store.queue_range("matter:q", start, stop) == order[start:stop]
        ready = await store.ready_range("matter:q", 0, 8)
        assert ready == [(m, model[m]) for m in order[:8]]
        limit, upto = rng.randint(1, 10), rng.choice(scores)
        due = [(m, model[m]) for m in order if model[m] <= upto][:limit]
        assert await store.timers_due(upto, limit) == due

    for round_ in range(10):
        async with store.transaction():
            for _ in range(rng.randint(1, 12) if round_ else 80):
                member = rng.choice(members)
                if rng.random() < 0.6:
                    score = rng.choice(scores)
                    model[member] = score
                    await store.queue_add("matter:q", member, score)
                    await store.ready_add("matter:q", member, score)
                    await store.timer_set(member, score)
                else:
                    existed = await store.queue_remove("matter:q", member)
                    assert existed == (member in model)
                    await store.ready_remove("matter:q", member)
                    await store.timer_cancel(member)
                    model.pop(member, None)
                await check()
        await check()


async def test_a_failing_command_keeps_what_it_wrote(store: Store) -> None:
    """Writes made before the body raised are committed, as MemoryStore applies them at once."""
    with pytest.raises(ValueError, match="half-way"):
        async with store.transaction():
            await store.put_clerk(Clerk("c1", "一号", []))
            await store.queue_add("matter:m", "T1", 1.0)
            raise ValueError("failed half-way")
    assert await store.get_clerk("c1") is not None
    assert await store.queue_range("matter:m", 0, 5) == ["T1"]


async def test_counters(store: Store) -> None:
    """next_seq is monotonic and starts from the time in µs; incr starts at 1 and counter_get
    reads it (0 if never incremented), inside a transaction too."""
    first = await store.next_seq("ticket")
    assert first > 1_700_000_000_000_000
    assert [await store.next_seq("ticket") for _ in range(3)] == [first + 1, first + 2,
                                                                    first + 3]
    assert [await store.incr("number:hr:20261124") for _ in range(3)] == [1, 2, 3]
    assert await store.incr("number:med:20261124") == 1
    async with store.transaction():
        assert await store.incr("number:hr:20261124") == 4
        assert await store.incr("number:hr:20261124") == 5
        assert await store.counter_get("number:hr:20261124") == 5
        assert await store.counters_get(["number:med:20261124", "nothing", "number:hr:20261124"]
                                        ) == [1, 0, 5]
    assert await store.counter_get("number:hr:20261124") == 5
    assert await store.counters_get([]) == []


async def test_outbox_keeps_events_in_seq_order_until_acked(store: Store) -> None:
    """The outbox hands events back in seq order and drops them only when acknowledged."""
    async with store.transaction():
        first = await store.outbox_append([_event(1), _event(2)])
    second = await store.outbox_append([_event(3)])  # outside a transaction
    events = first + second
    assert [e.seq for e in events] == sorted({e.seq for e in events})
    assert await store.outbox_peek(2) == events[:2]
    assert await store.outbox_peek(10) == events
    assert events[0].data == {"n": 1, "note": "登录"}
    assert await store.outbox_len() == 3
    assert await store.outbox_ack(events[1].seq) == 2
    assert await store.outbox_ack(events[1].seq) == 0
    assert await store.outbox_peek(10) == events[2:]
    async with store.transaction():
        more = await store.outbox_append([_event(4)])
        assert await store.outbox_ack(events[2].seq) == 1
        assert await store.outbox_peek(10) == more
        assert await store.outbox_len() == 1
    assert await store.outbox_peek(10) == more


async def test_transactions_of_one_store_never_interleave(store: Store) -> None:
    """Two tasks doing read-increment-write 200 times each through one store count to 400."""
    await asyncio.gather(*(bump(store) for _ in range(400)))
    clerk = await store.get_clerk(COUNTER_ID)
    assert clerk is not None and clerk.sessions_handled == 400


# ---------------------------------------------------------------- Redis: atomicity and fencing


async def test_other_readers_see_a_transaction_all_at_once(shared: Shared) -> None:
    """Until the commit, another task and another store see none of a transaction's writes;
    after it, all of them."""
    store, other = await shared.make(), await shared.make()
    entered, release = asyncio.Event(), asyncio.Event()

    async def command() -> None:
        async with store.transaction():
            await store.put_clerk(Clerk("c1", "一号", ["m"]))
            await store.queue_add("matter:m", "T1", 1.0)
            await store.duty_add(["m"], "c1")
            await store.outbox_append([_event(1)])
            assert await store.incr("day:2026-11-24:answered:m") == 1
            entered.set()
            await release.wait()

    task = asyncio.create_task(command())
    await entered.wait()
    for reader in (store, other):  # another task of the same process, then another process
        assert await reader.get_clerk("c1") is None
        assert await reader.queue_len("matter:m") == 0
        assert await reader.duty_count("m") == 0
        assert await reader.outbox_len() == 0
        assert await reader.counter_get("day:2026-11-24:answered:m") == 0
    release.set()
    await task
    assert await other.get_clerk("c1") is not None
    assert await other.queue_range("matter:m", 0, 5) == ["T1"]
    assert await other.duty_count("m") == 1
    assert await other.outbox_len() == 1
    assert await other.counter_get("day:2026-11-24:answered:m") == 1


@pytest.mark.parametrize("how", ["overwritten", "expired"])
async def test_commit_after_losing_the_lock_writes_nothing(shared: Shared, how: str) -> None:
    """If the lock is no longer ours at commit (taken over, or the lease ran out), the commit
    raises StoreLockLostError and writes nothing, nor touches the new holder's lock."""
    store, other = await shared.make(), await shared.make()
    lock = shared.prefix + "lock"
    with pytest.raises(StoreLockLostError):
        async with store.transaction():
            await store.put_clerk(Clerk("c1", "一号", []))
            await store.queue_add("matter:m", "T1", 1.0)
            await store.set_ticket_active("T1", True)
            await store.outbox_append([_event(1)])
            await store.incr("day:2026-11-24:answered:m")
            if how == "overwritten":
                await shared.raw.set(lock, "another-process")
            else:
                await shared.raw.delete(lock)
    assert await other.get_clerk("c1") is None
    assert await other.queue_len("matter:m") == 0
    assert await other.active_ticket_ids() == []
    assert await other.outbox_len() == 0
    assert await other.counter_get("day:2026-11-24:answered:m") == 0
    assert await shared.raw.get(lock) == (b"another-process" if how == "overwritten" else None)


class LossyLink:
    """A TCP pass-through to Redis that can lose one reply, as a network failure would: armed
    with a marker, it forwards the next request holding that marker, then closes the client's
    connection instead of relaying Redis's answer. It can also deliver replies late."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._marker: bytes | None = None
        self._server: asyncio.Server | None = None
        self.cuts = 0
        self.reply_delay_s = 0.0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            # Not wait_closed(): it would wait for the store's open connections.

    def lose_reply_to(self, marker: bytes) -> None:
        self._marker = marker

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self._target)
        cut = asyncio.Event()

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self._marker is not None and self._marker in data:
                    self._marker = None
                    cut.set()  # before forwarding, so not a byte of the answer gets through
                redis_w.write(data)
                await redis_w.drain()
                if cut.is_set():
                    await asyncio.sleep(0.1)  # let Redis execute it
                    return

        async def downstream() -> None:
            while (data := await redis_r.read(65536)) and not cut.is_set():
                await asyncio.sleep(self.reply_delay_s)
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        with contextlib.suppress(ConnectionError):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.cuts += cut.is_set()
        for writer in (client_w, redis_w):
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_a_commit_whose_reply_was_lost_is_retried_and_counted_once(
    shared: Shared, redis_server: RedisServer
) -> None:
    """When the connection drops after Redis applied a commit but before its reply arrived,
    the client's retry is recognised as the same commit: no lost-lock error, nothing twice."""
    link = LossyLink(redis_server.port)
    port = await link.start()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix=shared.prefix)
    await store.open()
    try:
        async with store.transaction():  # loads the commit script first
            await store.incr("day:2026-11-24:answered:m")
        link.lose_reply_to((shared.prefix + "committed").encode())  # a key only commits name
        async with store.transaction():
            await store.put_clerk(Clerk("c1", "一号", []))
            await store.incr("day:2026-11-24:answered:m")
        assert link.cuts == 1
        assert await store.get_clerk("c1") is not None
        assert await store.counter_get("day:2026-11-24:answered:m") == 2
    finally:
        await store.close()
        await link.close()


async def test_a_command_cancelled_while_taking_the_lock_hands_it_back(
    shared: Shared, redis_server: RedisServer
) -> None:
    """A task cancelled while its lock request is in flight (Redis granted it, the reply is
    still on its way) gives the lock back at once instead of leaving it to the lease."""
    link = LossyLink(redis_server.port)
    port = await link.start()
    slow = RedisStore(f"redis://127.0.0.1:{port}/0", prefix=shared.prefix, lease_s=5.0)
    await slow.open()
    other = await shared.make()
    try:
        await bump(slow)  # scripts loaded, connection warm
        link.reply_delay_s = 0.3
        task = asyncio.create_task(bump(slow))
        await asyncio.sleep(0.1)  # the request has reached Redis, its reply has not come back
        assert await shared.raw.get(shared.prefix + "lock") is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        loop = asyncio.get_running_loop()
        began = loop.time()
        await bump(other)
        assert loop.time() - began < 2.0  # the lease is 5 s
        clerk = await other.get_clerk(COUNTER_ID)
        assert clerk is not None and clerk.sessions_handled == 2
    finally:
        link.reply_delay_s = 0.0
        await slow.close()
        await link.close()


async def test_reads_in_a_transaction_fetch_only_what_they_need(shared: Shared) -> None:
    """With 100,000 tickets queued, ranks and ranges inside a transaction that changed the
    queue read a few hundred bytes from Redis, not the queue."""
    store = await shared.make()
    key, n = "matter:big", 100_000
    model = {f"T{i:08d}": float(i // 10) for i in range(n)}  # runs of ten equal scores
    async with store.transaction():  # one commit script with 200,000 arguments
        for member, score in model.items():
            await store.queue_add(key, member, score)
    assert await store.queue_len(key) == n
    async with store.transaction():
        await store.queue_remove(key, "T00000003")
        await store.queue_add(key, "T10000000", 0.5)
        await store.queue_add(key, "T00099999", -1.0)
        await store.queue_add(key, "T00050004", 4999.0)  # last of the run of ten at 4999
        del model["T00000003"]
        model.update({"T10000000": 0.5, "T00099999": -1.0, "T00050004": 4999.0})
        order = _order(model)
        before = int((await shared.raw.info("stats"))["total_net_output_bytes"])
        assert await store.queue_range(key, 0, 12) == order[:12]
        assert await store.queue_range(key, 50_000, 50_008) == order[50_000:50_008]
        for member in ("T10000000", "T00050004", "T00077777", "T00099998"):
            assert await store.queue_rank(key, member) == order.index(member)
        assert await store.queue_len(key) == len(model) == n  # one left, one came
        sent = int((await shared.raw.info("stats"))["total_net_output_bytes"]) - before
    assert sent < 20_000, f"{sent} bytes read"
    assert await store.queue_range(key, 0, 12) == order[:12]


async def test_outbox_seqs_become_visible_in_seq_order(shared: Shared) -> None:
    """An append outside a transaction waits for the open one, so the records writer never sees
    a later seq before an earlier one (and cannot acknowledge past it)."""
    store, other = await shared.make(), await shared.make()
    entered, release = asyncio.Event(), asyncio.Event()
    appended: list[HallEvent] = []

    async def command() -> None:
        async with store.transaction():
            appended.extend(await store.outbox_append([_event(1)]))
            entered.set()
            await release.wait()

    task = asyncio.create_task(command())
    await entered.wait()
    late = asyncio.create_task(other.outbox_append([_event(2)]))
    await asyncio.sleep(0.05)
    assert not late.done() and await other.outbox_len() == 0
    release.set()
    await task
    events = appended + await late
    assert events[0].seq < events[1].seq
    assert await other.outbox_peek(10) == events


async def test_transactions_do_not_nest(shared: Shared) -> None:
    """Opening a transaction inside one of the same task is a programming error, not a hang."""
    store = await shared.make()
    async with store.transaction():
        with pytest.raises(RuntimeError, match="do not nest"):
            async with store.transaction():
                pass


# ---------------------------------------------------------------- Redis: across processes


@pytest.mark.parametrize("wakeups", [True, False], ids=["wakeups", "polling"])
async def test_two_stores_never_interleave(shared: Shared, wakeups: bool) -> None:
    """Two stores (two connections, as two processes) each doing read-increment-write 200
    times, concurrently, count to exactly 400, with lock wake-ups or by polling alone."""
    one, two = await shared.make(wakeups=wakeups), await shared.make(wakeups=wakeups)

    async def run(store: Store) -> None:
        for _ in range(200):
            await bump(store)

    await asyncio.gather(run(one), run(two))
    clerk = await one.get_clerk(COUNTER_ID)
    assert clerk is not None and clerk.sessions_handled == 400


async def _worker(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.redis_worker", *args, cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )


async def test_transactions_serialise_with_another_os_process(shared: Shared) -> None:
    """This process and a second OS process each doing read-increment-write 200 times,
    overlapping in time, count to exactly 400."""
    store = await shared.make()
    proc = await _worker("count", shared.url, shared.prefix, "200")
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"ready\n"
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        loop = asyncio.get_running_loop()
        start = loop.time()
        wall_start = time.time()
        for _ in range(200):
            await bump(store)
        wall_end = wall_start + loop.time() - start
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    word, their_start, their_end = out.decode().split()
    assert word == "done"
    assert float(their_start) < wall_end and wall_start < float(their_end), "no overlap"
    clerk = await store.get_clerk(COUNTER_ID)
    assert clerk is not None and clerk.sessions_handled == 400


async def test_a_killed_holder_frees_the_lock_after_its_lease(shared: Shared) -> None:
    """A process killed (SIGKILL) inside a transaction leaves no partial state, and the next
    transaction proceeds once the holder's lease runs out."""
    lease_s = 1.0
    proc = await _worker("hold", shared.url, shared.prefix, str(lease_s))
    assert proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"holding\n"
    finally:
        proc.kill()
        await proc.wait()
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    assert await shared.raw.pttl(shared.prefix + "lock") > 0  # the dead holder's lease
    store = await shared.make()
    async with store.transaction():
        waited = loop.time() - killed_at
        assert await store.get_clerk(HELD_ID) is None
    assert 0 < waited < lease_s + 0.5


# ---------------------------------------------------------------- Redis: outages


@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_redis_outage_is_store_unavailable_and_recovers(how: str) -> None:
    """With Redis gone, calls raise StoreUnavailableError within the timeout and ping() is
    False; once it is back, the same store object works again."""
    with own_redis() as server:
        prefix = new_prefix()
        store = RedisStore(server.url, prefix=prefix, timeout_s=1.0)
        await store.open()
        try:
            async with store.transaction():
                await store.put_clerk(Clerk("c1", "一号", []))
            server.stop() if how == "stopped" else server.kill()
            loop = asyncio.get_running_loop()
            began = loop.time()
            assert await store.ping() is False
            with pytest.raises(StoreUnavailableError) as err:
                async with store.transaction():
                    pass
            assert err.value.code == "store_unavailable"
            with pytest.raises(StoreUnavailableError):
                await store.get_clerk("c1")
            with pytest.raises(StoreUnavailableError):
                await store.next_seq("ticket")
            assert loop.time() - began < 3.0
            server.start()  # empty: the test server keeps nothing on disk
            assert await store.ping() is True
            async with store.transaction():
                await store.put_clerk(Clerk("c2", "二号", []))
                await store.queue_add("matter:m", "T1", 1.0)
            assert await store.clerk_ids() == ["c2"]
        finally:
            await store.close()
            await store.close()  # idempotent


async def test_open_fails_fast_when_redis_is_not_there() -> None:
    """open() against a port nobody listens on raises StoreUnavailableError at once, and the
    store stays closed (ping False)."""
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1.0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(StoreUnavailableError):
        await store.open()
    assert loop.time() - began < 2.0
    assert await store.ping() is False
    await store.close()
