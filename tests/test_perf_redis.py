"""Redis mode under load (issue 12): behaviour that the load must not break.

Benchmarks (bench/engine_cost.py, bench/district.py) measure speed; these tests assert what
must hold however fast it is: a burst of requests waits for a Redis connection instead of
failing, the process's liveness work is never starved by it, every waiting resident of a long
queue is told their position, and reads of positions and of the wallboard do not take the hall
lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rooms.hall import Unstaffed
from rooms.memory_store import MemoryStore
from rooms.tickets import PriorityReason
from server import keys
from tests.hallkit import Rig, RigMaker, make_rig
from tests.redisproc import RedisServer, drop_prefix, new_prefix
from tests.signalkit import Client, LiveHall, live_hall

MATTER = "flexible_employment_registration"  # served by clerk01 and clerk02 (hrss)


@pytest.fixture
def redis_env(redis_server: RedisServer) -> Iterator[dict[str, str]]:
    prefix = new_prefix()
    yield {"HALL_REDIS_URL": redis_server.url, "HALL_REDIS_PREFIX": prefix,
           "HALL_SECRET_KEY": "redis-mode-test-secret-" + "x" * 16,
           "HALL_RATE_LIMITS": "off"}
    drop_prefix(redis_server.url, prefix)


@pytest.fixture
async def redis_hall(redis_env: dict[str, str]) -> AsyncIterator[LiveHall]:
    async with live_hall(redis_env) as hall:
        yield hall


@contextlib.asynccontextmanager
async def _residents(hall: LiveHall, n: int, tag: str) -> AsyncIterator[list[tuple[Client, str]]]:
    """``n`` residents connected, each with a ticket of its own (waiting: no clerk on duty)."""
    made: list[tuple[Client, str]] = []
    try:
        async with aiohttp.ClientSession() as http:
            async def one(i: int) -> None:
                async with http.post(hall.url + "/api/dev/resident-token",
                                     json={"resident_id": f"{tag}{i}", "name": "居民"}) as r:
                    token = (await r.json())["id_token"]
                c = Client()
                made.append((c, ""))
                await c.connect(hall.url, {"id_token": token})
                await c.next("welcome", within=30)
                took = await c.call("ticket.take", {"matter_id": MATTER,
                                                    "when_unstaffed": "wait"})
                assert took["ok"], took
                made[made.index((c, ""))] = (c, str(took["ticket"]["id"]))

            # In groups below the hall's cap on unauthenticated sockets per address.
            for start in range(0, n, 15):
                await asyncio.gather(*(one(i) for i in range(start, min(n, start + 15))))
        yield made
    finally:
        for c, _ in made:
            await c.close()


async def test_a_burst_of_position_reads_waits_for_connections_and_liveness_goes_on(
        redis_hall: LiveHall) -> None:
    """400 concurrent ``ticket.position`` (400 residents, one each) on one Redis-mode
    process: more requests in flight than the connection pool holds. Each waits for a
    connection and is answered; none gets ``store_unavailable``; the heartbeat and the
    sweep's reads work all along."""
    hub = redis_hall.app[keys.HUB]
    async with _residents(redis_hall, 400, "burst") as crowd:
        beat_ok_since = hub._beat_ok_since
        assert beat_ok_since is not None

        async def liveness() -> list[bool]:
            # What the heartbeat and the sweep do, in the middle of the burst.
            await asyncio.sleep(0.05)
            return [await hub.state.heartbeat(hub.config.heartbeat_ttl_s, time.time())
                    is not None, await hub.state.graces_due(time.time()) is not None]

        calls = [c.call("ticket.position", {"ticket_id": t}) for c, t in crowd]
        replies, alive = await asyncio.gather(asyncio.gather(*calls), liveness())
        codes = sorted({r["error"]["code"] for r in replies if not r["ok"]})
        assert codes == [], codes
        assert sorted(r["position"]["position"] for r in replies) == list(range(1, 401))
        assert alive == [True, True]
        # No heartbeat of the process's own failed meanwhile (a failure resets this).
        assert hub._beat_ok_since == beat_ok_since


@pytest.fixture(params=["memory", "redis"])
def backend_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """An embedded hall, then a Redis-mode one; rate limits off, queues long enough."""
    base = {"HALL_RATE_LIMITS": "off", "HALL_MAX_QUEUE": "5000"}
    if request.param == "memory":
        return base
    return {**request.getfixturevalue("redis_env"), **base}


def _of(ticket_id: str, position: int | None = None) -> Callable[[Any], bool]:
    """Matches the ``ticket.position`` of that ticket (at that position, if given)."""
    def match(data: Any) -> bool:
        return bool(data["ticket_id"] == ticket_id
                    and (position is None or data["position"] == position))
    return match


async def test_every_waiting_resident_of_a_long_queue_is_told_their_position(
        backend_env: dict[str, str]) -> None:
    """A queue of 1,020: the residents at places 1,001 to 1,020 (beyond the first thousand)
    each get a ``ticket.position`` with their new place within 2 s of the head leaving."""
    async with live_hall(backend_env) as hall:
        engine = hall.app[keys.HALL]
        ahead = [(await engine.join(MATTER, when_unstaffed=Unstaffed.WAIT)).id
                 for _ in range(1000)]
        async with _residents(hall, 20, "far") as crowd:
            for c, ticket_id in crowd:
                first = await c.next("ticket.position", _of(ticket_id))
                assert 1000 < first["position"] <= 1020
            await engine.leave(ahead[0])
            loop = asyncio.get_running_loop()
            left_at = loop.time()
            for c, ticket_id in crowd:
                mine = (await engine.position(ticket_id)).position
                assert mine is not None and mine <= 1019
                pushed = await c.next("ticket.position", _of(ticket_id, mine),
                                      within=max(0.1, left_at + 2.0 - loop.time()))
                assert pushed["position"] == mine


@contextlib.asynccontextmanager
async def _lock_held(rig: Rig) -> AsyncIterator[None]:
    """Another task holds the hall lock (an engine command under way) until the block ends."""
    taken, done = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with rig.store.transaction():
            taken.set()
            await done.wait()

    holder = asyncio.create_task(hold())
    await taken.wait()
    try:
        yield
    finally:
        done.set()
        await holder


async def test_positions_and_the_snapshot_are_read_without_the_hall_lock(
        new_rig: RigMaker) -> None:
    """Reading positions (the pusher, ``ticket.position``) and the snapshot (wallboard,
    clerks' queues) answer while an engine command holds the lock: they never queue for it,
    and the shown position still never rises."""
    rig = await new_rig()
    a = await rig.hall.join("residence", when_unstaffed=Unstaffed.WAIT)
    b = await rig.hall.join("residence", when_unstaffed=Unstaffed.WAIT)
    await rig.hall.join("residence", when_unstaffed=Unstaffed.WAIT,
                        priority=PriorityReason.DISABLED)  # overtakes a and b
    async with _lock_held(rig):
        shown = await asyncio.wait_for(rig.hall.positions([a.id, b.id]), 5)
        assert [p.position for p in shown] == [1, 2]  # as shown at join, not 2 and 3
        assert [p.position for p in await asyncio.wait_for(
            rig.hall.queue_positions("matter:residence"), 5)] == [1, 1, 2]
        snapshot = await asyncio.wait_for(rig.hall.snapshot(), 5)
        assert {m["id"]: m["queued"] for m in snapshot["matters"]}["residence"] == 3
        assert (await asyncio.wait_for(rig.hall.get_ticket(b.id), 5)).published_position == 2


async def test_a_stored_record_costs_its_size_not_a_serialiser_buffer() -> None:
    """orjson hands back its bytes in a 16 KiB allocation whatever their length; kept as they
    come, 10,000 waiting tickets held 160 MiB in the embedded store (a 660-byte ticket cost
    more than a whole idle connection should). Stored records are copied to their size."""
    store = MemoryStore()
    rig = await make_rig(store_factory=lambda: store)
    await rig.hall.join("residence", when_unstaffed=Unstaffed.WAIT)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(300):
            await rig.hall.join("residence", when_unstaffed=Unstaffed.WAIT)
        per_ticket = (tracemalloc.get_traced_memory()[0] - before) / 300
    finally:
        tracemalloc.stop()
    assert per_ticket < 4096, f"{per_ticket:.0f} bytes per waiting ticket"


def test_the_engine_cost_bench_ends_with_its_figures() -> None:
    """bench/engine_cost.py (small): Redis mode against embedded in one run, the last line
    JSON with the ratio and the round trips per command (figures not checked: shared
    machine; that every command is a few round trips, not one per read, is)."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "engine_cost.py"), "--cycles", "40",
         "--waiting", "20", "--clerks", "4", "--no-positions"],
        cwd=root, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("embedded_cpu_ms", "redis_cpu_ms", "ratio", "redis_round_trips_per_command"):
        assert isinstance(summary[key], int | float) and summary[key] > 0, (key, summary)
    assert summary["redis_round_trips_per_command"] <= 4, summary
