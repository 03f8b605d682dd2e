"""Engine cost per command: Redis mode against embedded, measured in the same run.

    .venv/bin/python bench/engine_cost.py [--cycles 600] [--waiting 200] [--clerks 20]

One hall process's queue engine (no sockets), on a manual clock so no timer fires: ``--clerks``
clerks serve one matter with ``--waiting`` tickets queued behind them, and every cycle runs the
commands of one served resident: ``join`` (queued), ``accept``, ``end_session``,
``finish_wrapup`` (which offers the clerk the next ticket). The same cycles run on the
in-memory store and on a RedisStore against a private redis-server (no persistence).

Printed per store: CPU of this process per command (the engine's cost), wall time per command
(p50, p99, sequential: one command at a time), Redis round trips per command (requests sent
on the store's connections; a pipeline or a script is one), and redis-server's own CPU per
command. ``ratio`` is Redis-mode CPU per command over embedded CPU per command (the issue's
target: at most 2). A second part measures ``clerk.break`` + ``clerk.available`` of an
unrelated clerk while 900 residents wait in one queue and their positions are read without
pause, as the position pusher does (``--no-positions`` skips it). The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio.connection as redis_connection

from rooms.catalog import Catalog, ClerkProfile, ServiceHours, load_catalog
from rooms.clock import ManualClock
from rooms.hall import Hall, Unstaffed
from rooms.memory_store import MemoryStore
from rooms.policy import QueuePolicy
from rooms.redis_store import RedisStore
from rooms.store import Store

COMMANDS = ("join", "accept", "end_session", "finish_wrapup")


class RoundTrips:
    """Counts requests sent on redis-py connections (one per command, pipeline or script)."""

    count = 0

    @classmethod
    def install(cls) -> None:
        original = redis_connection.AbstractConnection.send_packed_command

        async def counted(self: Any, command: Any, check_health: bool = True) -> None:
            cls.count += 1
            await original(self, command, check_health)

        redis_connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of another process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_catalog(clerks: int) -> tuple[Catalog, str, str]:
    """The demo catalog, always open, with ``clerks`` clerks serving one matter and one more
    clerk serving another (the "unrelated clerk" of the second part)."""
    demo = load_catalog().with_hours(ServiceHours.always())
    matters = list(demo.matters)
    served, other = matters[0], matters[1]
    profiles = {f"e{i:03d}": ClerkProfile(f"e{i:03d}", f"坐席{i}", matters=frozenset({served}))
                for i in range(clerks)}
    profiles["x001"] = ClerkProfile("x001", "坐席X", matters=frozenset({other}))
    unlimited = {m: replace(demo.matters[m], max_queue=None) for m in matters}
    return (replace(demo, clerks=MappingProxyType(profiles),
                    matters=MappingProxyType(unlimited)), served, other)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0


async def new_hall(store: Store, catalog: Catalog) -> Hall:
    await store.open()
    policy = QueuePolicy(default_max_queue=10**7, max_wait_s=None, offer_timeout_s=600,
                         wrapup_s=600)
    hall = Hall(catalog, store, clock=ManualClock(), policy=policy)
    await hall.start()
    return hall


async def cycles(store: Store, args: argparse.Namespace, redis_pid: int | None
                 ) -> dict[str, Any]:
    catalog, served, _ = bench_catalog(args.clerks)
    hall = await new_hall(store, catalog)
    clock = hall.clock
    assert isinstance(clock, ManualClock)
    clerks = [c for c in catalog.clerks if c.startswith("e")]
    for clerk_id in clerks:
        await hall.login(clerk_id)
    for _ in range(args.waiting + len(clerks)):
        await hall.join(served, when_unstaffed=Unstaffed.WAIT)
    await store.outbox_ack(10**18)
    gc.collect()
    wall: list[float] = []
    perf = time.perf_counter
    if isinstance(store, RedisStore):  # the measured commands only
        store.stats["transactions"] = 0
        store.lock_times = dict.fromkeys(store.lock_times, 0.0)
    trips0, cpu0 = RoundTrips.count, time.process_time()
    rcpu0 = cpu_of(redis_pid) if redis_pid else 0.0
    for n in range(args.cycles):
        clock.advance(0.01)
        clerk_id = clerks[n % len(clerks)]
        clerk = await hall.get_clerk(clerk_id)
        assert clerk.ticket_id is not None, "every clerk holds an offer at a cycle's start"
        ticket_id = clerk.ticket_id
        for step in (partial(hall.join, served, when_unstaffed=Unstaffed.WAIT),
                     partial(hall.accept, clerk_id, ticket_id),
                     partial(hall.end_session, clerk_id, ticket_id),
                     partial(hall.finish_wrapup, clerk_id, "resolved")):
            t0 = perf()
            await step()
            wall.append(perf() - t0)
        if n % 200 == 199:
            await store.outbox_ack(10**18)
    # The get_clerk per cycle (outside the engine) is not a command: its round trip is
    # taken out, its CPU is negligible next to four commands.
    commands = args.cycles * len(COMMANDS)
    trips = RoundTrips.count - trips0 - (args.cycles if redis_pid else 0)
    cpu = time.process_time() - cpu0
    rcpu = (cpu_of(redis_pid) - rcpu0) if redis_pid else 0.0
    hold_ms = 0.0
    if isinstance(store, RedisStore):
        hold_ms = store.lock_times["hold_s"] / max(1, store.stats["transactions"]) * 1000
    await store.close()
    return {"cpu_ms_per_command": cpu / commands * 1000, "p50_ms": pct(wall, 0.5),
            "p99_ms": pct(wall, 0.99), "round_trips_per_command": trips / commands,
            "redis_cpu_ms_per_command": rcpu / commands * 1000, "lock_hold_ms": hold_ms}


async def locked_positions(hall: Hall, queue_key: str) -> None:
    """Positions as they were read before issue 12: one engine step under the hall lock, with
    the ticket, its rank and its ETA's inputs read ticket by ticket."""
    async with hall.store.transaction():
        for ticket_id in await hall.store.queue_range(queue_key, 0, 1000):
            ticket = await hall.store.get_ticket(ticket_id)
            assert ticket is not None
            rank = await hall.store.queue_rank(queue_key, ticket_id)
            await hall.queues.estimate(ticket, (rank or 0) + 1)


async def break_under_positions(store: Store, waiting: int, rounds: int, *,
                                locked: bool = False) -> dict[str, Any]:
    """clerk.break + clerk.available of an unrelated clerk while ``waiting`` residents wait
    in one queue and that queue's positions are read in a loop (the pusher, at its worst);
    ``locked``: read as before issue 12 (under the hall lock, ticket by ticket)."""
    catalog, served, _ = bench_catalog(1)
    hall = await new_hall(store, catalog)
    for _ in range(waiting):
        await hall.join(served, when_unstaffed=Unstaffed.WAIT)
    await hall.login("x001")
    stop = asyncio.Event()
    reads = 0

    async def pusher() -> None:
        nonlocal reads
        while not stop.is_set():
            if locked:
                await locked_positions(hall, f"matter:{served}")
            else:
                await hall.queue_positions(f"matter:{served}")
            reads += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(pusher())
    times: list[float] = []
    for _ in range(rounds):
        await asyncio.sleep(0)  # the reader gets its turn in embedded mode too
        t0 = time.perf_counter()
        await hall.set_break("x001", "coffee")
        await hall.set_available("x001")
        times.append(time.perf_counter() - t0)
    stop.set()
    await task
    await store.close()
    return {"p50_ms": pct(times, 0.5), "p99_ms": pct(times, 0.99), "position_reads": reads}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    RoundTrips.install()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("error: redis-server is not on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="engine-cost-"))
    port = free_port()
    redis = await asyncio.create_subprocess_exec(
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
        "no", "--dir", str(workdir), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(500):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                await asyncio.sleep(0.02)
        result: dict[str, Any] = {}
        result["embedded"] = await cycles(MemoryStore(), args, None)
        result["redis"] = await cycles(RedisStore(url, prefix="bench:cost:"), args, redis.pid)
        if args.positions:
            result["break_embedded"] = await break_under_positions(MemoryStore(), 900, 200)
            result["break_redis"] = await break_under_positions(
                RedisStore(url, prefix="bench:break:"), 900, 200)
            result["break_redis_locked"] = await break_under_positions(
                RedisStore(url, prefix="bench:locked:"), 900, 20, locked=True)
        return result
    finally:
        redis.terminate()
        await asyncio.wait_for(redis.wait(), 10)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cycles", type=int, default=600)
    parser.add_argument("--waiting", type=int, default=200)
    parser.add_argument("--clerks", type=int, default=20)
    parser.add_argument("--no-positions", dest="positions", action="store_false")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    emb, red = result["embedded"], result["redis"]
    for name, figures in (("embedded", emb), ("redis", red)):
        print(f"{name:9} cpu {figures['cpu_ms_per_command']:.3f} ms/command, "
              f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, "
              f"{figures['round_trips_per_command']:.1f} round trips/command, "
              f"redis-server cpu {figures['redis_cpu_ms_per_command']:.3f} ms/command, "
              f"hall lock held {figures['lock_hold_ms']:.2f} ms/command")
    ratio = red["cpu_ms_per_command"] / emb["cpu_ms_per_command"]
    print(f"ratio (redis cpu / embedded cpu per command): {ratio:.2f} (target <= 2)")
    out: dict[str, Any] = {
        "embedded_cpu_ms": round(emb["cpu_ms_per_command"], 4),
        "redis_cpu_ms": round(red["cpu_ms_per_command"], 4),
        "ratio": round(ratio, 2),
        "redis_round_trips_per_command": round(red["round_trips_per_command"], 2),
        "redis_p99_ms": round(red["p99_ms"], 3),
        "embedded_p99_ms": round(emb["p99_ms"], 3),
        "redis_server_cpu_ms": round(red["redis_cpu_ms_per_command"], 4),
        "redis_lock_hold_ms": round(red["lock_hold_ms"], 3),
    }
    if "break_redis" in result:
        for name in ("break_embedded", "break_redis", "break_redis_locked"):
            figures = result[name]
            print(f"{name}: clerk.break+available p50 {figures['p50_ms']:.2f} ms, "
                  f"p99 {figures['p99_ms']:.2f} ms, with {figures['position_reads']} "
                  "reads of 900 positions meanwhile")
        out["break_redis_p99_ms"] = round(result["break_redis"]["p99_ms"], 3)
        out["break_embedded_p99_ms"] = round(result["break_embedded"]["p99_ms"], 3)
        out["break_redis_locked_p99_ms"] = round(result["break_redis_locked"]["p99_ms"], 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
