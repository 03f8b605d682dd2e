"""A district's peak (issue 12): the embedded hall and N processes on Redis under the load a
district meets, one command, with a check of the records database afterwards.

    .venv/bin/python bench/district.py [--processes 0,2] [--quick | --full] [--faults]
        [--residents 1000] [--clerks 100] [--kiosks 100] [--arrival-s S] [--seed 12]

``--processes`` lists the configurations, ``0`` being the embedded hall (``deploy/local-cluster
--embedded``) and N > 0 N ``hall serve`` processes on one private Redis (``local-cluster
--processes N``), each started and stopped through bench/cluster.py's ``LocalCluster`` with
``--demo --catalog <bench catalog> --data-dir <its own>``, one after the other, all driven by
the same plan (same seed: the same residents, matters, arrival times and clerk behaviour).

**The bench catalog.** The demo catalog (rooms/data/catalog.toml) has 24 clerks; the bench
writes a copy with ``max(100, --clerks)`` into its temporary directory: the 24 demo clerks,
then ``clerk25``... each serving one department, given out greedily to the department with the
most demand per clerk (demand from the Zipf weights below; every third also gets a secondary
department, the next in demand). ``--clerks N`` logs in N of them, chosen the same greedy way,
and residents only ask for matters some logged-in clerk serves (``--quick`` has 8 clerks).
The demo's per-matter queue caps (``max_queue`` 15-40 on eight matters) are left out of the
copy, so that the peak's residents reach the queues (the hall's ``HALL_MAX_QUEUE``, 500,
stays; a ``queue_full`` would show under the errors).

**The load** (every client is python-socketio's ``AsyncClient``, websocket transport, orjson,
in this one process on one uvloop loop; connections are opened at most 16 at a time):

* a supervisor wallboard (``supervisor``, the whole hall) and a department one
  (``supervisor_hrss``): ``wall.update`` arrivals are timed at the first;
* ``--clerks`` clerks (``POST /api/auth/login``, connecting makes them available). On each
  ``offer.new``: 85 % accept and 10 % decline after a human 1-3 s, 5 % let it expire (never
  twice without an accept in between, so the hall's ``missed_offers`` break, 2 misses in a
  row, is never the bench's own doing). A session: the clerk sends an SDP offer and three
  ICE candidates (``rtc.signal``), the resident answers likewise, both chat
  (``chat.send``), the clerk ends it (``session.end``) after 3-60 s (scaled, below), wraps up
  for 2-8 s and finishes with an outcome (85 % ``resolved``, 8 % ``referred_offline``, 4 %
  ``technical_problem``, 3 % ``unresolved``: both with a reason); 5 % ask for a short break
  during the wrap-up (``clerk.break``: pending, it starts with the end of the wrap-up, so no
  offer comes meanwhile), then ``clerk.available`` after 10-40 s (scaled). A clerk the hall
  put on break
  (``clerk.state`` with ``break_reason`` ``missed_offers``) is counted (``breaks_forced``) and
  comes back with ``clerk.available`` 2 s later;
* ``--kiosks`` kiosks (``XH-001``..., ``POST /api/auth/kiosk`` with the demo secret the hall
  derives from its secret key, then ``kiosk.health``), each taking tickets for up to
  ``--kiosk-visits`` residents one after the other (the first at a random time in the first
  half of the arrival window, the next after the previous one's ticket is done);
* ``--residents`` app residents (demo identity tokens, minted before the load starts) arriving
  at uniform random times over ``--arrival-s``: each connects when it arrives, takes a ticket
  (``when_unstaffed: "wait"``) for a matter drawn from a Zipf law (s = 1) over the 40 matters
  in a seeded random order, so a few matters are hot; waits (a patience of 120-600 s, scaled;
  then ``ticket.leave``), is served, rates 70 % of its sessions (``session.rate``), and stays
  connected until the end of the run (an app left open).

Human times (session length, wrap-up, patience, the kiosks' gaps) are scaled by
``arrival_s / 150``, so a shorter window keeps the shape of the full peak (arrivals and
service both faster: about 2.5 times more tickets than the clerks can serve in both); the
1-3 s answer to an offer is not scaled. **The default** is the full district (1,000
residents, 100 clerks, 100 kiosks) compressed to a 30 s arrival window (5 times the
district's arrival rate, human times 0.2 of theirs) so that embedded and 2 processes run in
under 3 minutes on the 2-core machine (about 2 when the hall holds); ``--full`` is the
district's real peak, 150 s (about 4 minutes per configuration); ``--quick`` is 60 residents,
8 clerks and 5 kiosks over 8 s (the smoke test; it starts the next cluster while one is
measured, ``--overlap-starts``, so its figures are rougher). ``--tail-s`` (30 % of the window,
at least 8 s) after the window, the run closes: every resident still waiting leaves, sessions
end at once and wrap-ups finish (at most 40 s are waited for that; the next configuration
starts meanwhile). The close-out is no load: CPU is read up to its start, acks sent during it
are not in the percentiles and its refusals (offers to residents who left, a leave that got
no ack, ...) are counted apart (``errors_close_out``).

The client obeys the hall's per-principal rate limits (docs/protocol.md, "Conventions"):
one take at a time per participant, no polling of positions, a few chat lines per session;
``HALL_RATE_LIMITS`` is left as the hall's default (cluster.py turns it off; this bench does
not), so a ``too_many_requests`` would show under the errors.

**What is measured** (latencies from this process's clock; an ack that never comes counts as
its time-out, 15 s, in the percentiles and as ``ack_timeout`` in the errors):

* ``take``: ``ticket.take`` sent → its ack (only the first attempt of each take);
* ``join_offer``: ``ticket.take`` sent → the clerk's first ``offer.new`` for that ticket, for
  tickets taken while some logged-in clerk serving the matter (primary skill) had been
  ``available`` for a second or more as far as the clerks' own ``clerk.state`` pushes told
  the bench (one that just became available may hold an offer not yet seen): the issue's
  "whenever an eligible clerk is free", i.e. offered in the first dispatch round (the
  headline ``join_offer_p99_ms``).
  ``join_offer_all`` is every ticket's first offer (minutes in a queue included);
* ``offer_delivery``: ``offer.new`` receipt minus the server's offer time, which is its
  ``deadline - timeout_s`` (same machine, same wall clock);
* ``accept``, ``decline``, ``available``, ``leave``, ``end``, ``finish``, ``rate``: the acks of
  ``offer.accept``, ``offer.decline``, ``clerk.available``, ``ticket.leave``, ``session.end``,
  ``wrapup.finish``, ``session.rate``;
* ``position_staleness``: the bench knows each queue's order (tickets of a matter by the
  ``joined_at`` of their take acks, all of one priority). A ticket leaving it (a clerk's
  ``offer.accept`` or a resident's ``ticket.leave`` that was acked ``ok``; an offer alone does
  not move anybody: an offered ticket keeps its place) is a change every resident behind it
  can observe; its time is when that event was *sent* (the click).
  The staleness of the change for one resident behind is the time from it to the first
  ``ticket.position`` push to that resident whose ``position`` reflects it (not above 1 + the
  tickets still ahead by the bench's count). A change still unreflected when the resident's
  own wait ends (served or left) counts up to that moment, so a resident the hall never tells
  weighs in. ``position_gap`` is the time between two pushes to one waiting resident;
* ``wall_interval``: between two ``wall.update`` at the whole-hall wallboard (p50/p99/max);
  ``wall_age``: receipt minus the wall's ``at``;
* errors by code (``<event>:<code>``; ``connect:<code>``), ``store_unavailable`` (the acks and
  HTTP answers with that code outside a fault's window; ``store_unavailable_during_faults``
  inside one), ``breaks_forced``, offers that expired after the clerk had answered
  (``offers_expired_answered``), resumes and failed resumes;
* CPU (utime + stime, /proc/<pid>/stat) and the largest RSS (/proc/<pid>/status) of every hall
  process and of Redis over the load phase, and the bench's own CPU (a saturated client makes
  the latencies meaningless: over 85 % of a core is flagged); ``cpu_ms_per_ticket``: hall +
  Redis CPU per ticket taken;
* ``kib_per_connection``: the halls' summed RSS just after the arrival window (every client
  connected: residents stay connected to the end) minus once the staff (clerks, kiosks,
  wallboards) had connected, divided by the app residents connected in between (their
  tickets, sessions and replay buffers included: the cost of a resident of the peak, not of
  an idle socket); ``kib_per_connection_all`` is the growth from before any client over every
  socket (start-up allocations included).

**The records check**, after the halls are stopped (SIGTERM: their writers flush), on the
records database the cluster used (the SQLite file of its data dir, or PostgreSQL with
``--faults``): every ticket that entered the queue has exactly one terminal event
(``rooms.events.TERMINAL_KINDS``), ``seq`` runs from its first to its last value without a
gap (``seq_gaps``; the first is a time in µs, see rooms/redis_store.py, where a number taken
by a refused command may also leave a gap: so a gap is flagged, not counted as lost), the
tickets in the log are the tickets the clients took, and each ``offer.accept``,
``ticket.leave``, ``session.rate`` acked ``ok`` and each ``done`` a resident was told has its
event (``accept``; ``abandon``, or ``done`` for a ticket accepted before its leave went
through; ``session_rating``; ``done``). ``lost_events`` is the sum of the missing tickets, the
tickets without a terminal event, those missing events and the events a hall logged it could
not write at its stop ("final flush failed; N events were not written"); ``records_ok`` is
true when that, the seq gaps, the duplicated terminal events and the tickets nobody took are
all zero.

``--faults`` (arrival window 70 s unless given; the records database is a private PostgreSQL
cluster, initdb/pg_ctl in the bench's directory, and Redis the bench's own with an
append-only file, passed to local-cluster as ``--database-url`` and ``--redis-url``): at 15 %
of the window one hall process is SIGKILLed (N > 1), at 55 % Redis is stopped (SIGTERM) and
started again on its port 3 s later (N > 1), at 30 % PostgreSQL is stopped for 30 s (every
configuration). ``kib_per_connection`` is not measured once a hall is dead.
Clients whose socket drops resume on another process with ``{resume, last_seq}`` plus their
credential (``token`` or ``id_token``), and a refused event (``store_unavailable``, a lost
ack) is sent again; nothing may be lost (``lost_events`` 0). Reconnects, like first
connections, go at most 16 at a time and skip a process known dead: the hall caps
unauthenticated connections per address (20) and every client of the bench has the same
address, which a district's residents do not.

The halls' logs are searched for WARNING/ERROR lines (each placed in the bench phase it was
written in, as bench/cluster.py does). The last line printed is one JSON object: the headline
keys (``take_p99_ms``, ``join_offer_p99_ms``, ``store_unavailable``, ``breaks_forced``,
``kib_per_connection``, ``lost_events``, ...) of the configuration with the most processes,
every figure per configuration (``<figure>_embedded``, ``<figure>_<N>``), and
``ratio_<figure>_<N>``: the N-process figure over the embedded one measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import importlib
import itertools
import json
import math
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The project's packages before bench/ itself: bench/signaling.py would shadow `signaling`.
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import socketio  # noqa: E402
import uvloop  # noqa: E402

from bench.cluster import (  # noqa: E402
    CANDIDATE_TAIL,
    LOCAL_CLUSTER,
    SDP_TEMPLATE,
    BenchError,
    ClusterInfo,
    LocalCluster,
    OrjsonCodec,
    RedisProcess,
    alive,
    cpu_s,
    pct,
    phase_at,
)
from rooms.catalog import Catalog, ClerkProfile, load_catalog  # noqa: E402
from rooms.events import TERMINAL_KINDS, EventKind, HallEvent  # noqa: E402
from rooms.records import RecordsDB, normalize_database_url  # noqa: E402
from tests.pgproc import PgCluster, PgMissingError  # noqa: E402

DEMO_CATALOG = ROOT / "rooms" / "data" / "catalog.toml"
ACK_TIMEOUT_S = 15.0  # an ack not back by then is lost (and counts as this long)
CONNECT_CONCURRENCY = 16
HTTP_CONCURRENCY = 16
RETRY_PAUSE_S = 0.5
RETRIES = 40  # a step refused as transient (store down, socket gone) is sent again this often
RECONNECT_FOR_S = 90.0
FULL_ARRIVAL_S = 150.0  # the district's peak; human times are scaled by arrival_s / this
ZIPF_S = 1.0
CLOSE_OUT_S = 40.0  # the close-out's longest wait for every client to finish
UNWRITTEN = re.compile(r"final flush failed; (\d+) events were not written")
REDIS_DOWN_S = 3.0  # --faults: Redis stopped this long before it starts again
FREE_FOR_S = 1.0  # a clerk shown available this long is free (join → offer)
CLIENT_BUSY = 0.85  # the bench's own CPU share above which its latencies are suspect
# Codes a real client meets in passing and sends again after a pause.
TRANSIENT = frozenset({"store_unavailable", "ack_timeout", "disconnected", "too_many_requests",
                       "not_connected"})
OUTCOMES = [("resolved", 0.85, None), ("referred_offline", 0.08, "需到实体窗口办理"),
            ("technical_problem", 0.04, None), ("unresolved", 0.03, "材料不全，无法办结")]
# Figures that get a ratio to the embedded hall's.
RATIO_FIGURES = ["take_p50_ms", "take_p99_ms", "join_offer_p99_ms", "join_offer_all_p99_ms",
                 "offer_delivery_p99_ms", "accept_p99_ms", "available_p99_ms",
                 "position_staleness_p99_ms", "wall_interval_p99_ms", "cpu_ms_per_ticket",
                 "kib_per_connection"]


def now() -> float:
    return time.perf_counter()


def ms(values: Sequence[float], q: float) -> float | None:
    return round(pct(values, q) * 1000, 1) if values else None


# -- the plan: catalog, clerks, residents (the same for every configuration) --------------------


def serves(clerk: ClerkProfile, catalog: Catalog, matter_id: str) -> bool:
    """Whether the clerk serves the matter as a primary skill (offered at once)."""
    return matter_id in clerk.matters or catalog.matters[matter_id].department_id in \
        clerk.departments


@dataclass
class ResidentSpec:
    index: int
    arrive_s: float
    matter_id: str
    patience_s: float
    rates: bool
    score: int


@dataclass
class KioskSpec:
    point: str
    first_s: float
    gaps_s: list[float]
    matters: list[str]
    rates: list[bool]


@dataclass
class Plan:
    catalog_path: Path
    catalog: Catalog
    clerks: list[str]  # the logged-in ones, in login order
    eligible: dict[str, list[str]]  # matter -> logged-in clerks serving it (primary)
    residents: list[ResidentSpec]
    kiosks: list[KioskSpec]
    scale: float
    seed: int


def zipf_weights(matters: list[str], rng: random.Random) -> dict[str, float]:
    order = list(matters)
    rng.shuffle(order)
    return {m: 1.0 / (k + 1) ** ZIPF_S for k, m in enumerate(order)}


def bench_catalog(workdir: Path, total_clerks: int, weights: dict[str, float]) -> Path:
    """The demo catalog with ``clerk25``... appended (see the docstring); written and loaded
    once to check it."""
    demo = load_catalog(DEMO_CATALOG)
    demand = {d: 0.0 for d in demo.departments}
    for m in demo.matters.values():
        demand[m.department_id] += weights[m.id]
    staff = {d: 0.0 for d in demo.departments}
    for clerk in demo.clerks.values():
        for d in clerk.departments:
            staff[d] += 1 / len(clerk.departments)
    ranked = sorted(demand, key=lambda d: -demand[d])
    blocks = []
    for i in range(len(demo.clerks) + 1, total_clerks + 1):
        dept = max(demand, key=lambda d: demand[d] / (staff[d] + 1))
        staff[dept] += 1
        lines = [f'[[clerks]]\nid = "clerk{i:02d}"\nname = "帮办{i:03d}"\n'
                 f'departments = ["{dept}"]']
        if i % 3 == 0:
            other = next(d for d in ranked if d != dept)
            lines.append(f'secondary_departments = ["{other}"]')
        blocks.append("\n".join(lines) + "\n")
    path = workdir / "bench-catalog.toml"
    # The demo's per-matter queue caps (15-40) go: the peak's residents must reach the
    # queues (the hall's own cap, HALL_MAX_QUEUE, 500 by default, stays).
    demo_text = re.sub(r"(?m)^max_queue = \d+\n", "", DEMO_CATALOG.read_text(encoding="utf-8"))
    path.write_text(demo_text + "\n# bench/district.py\n\n" + "\n".join(blocks),
                    encoding="utf-8")
    load_catalog(path)  # a CatalogError here is the bench's bug
    return path


def make_plan(args: argparse.Namespace, workdir: Path) -> Plan:
    rng = random.Random(args.seed)
    demo = load_catalog(DEMO_CATALOG)
    weights = zipf_weights(sorted(demo.matters), rng)
    path = bench_catalog(workdir, max(100, args.clerks), weights)
    catalog = load_catalog(path)
    # Login order: greedily the clerk whose (first) department has the most demand per clerk.
    demand = {d: 0.0 for d in catalog.departments}
    for m in catalog.matters.values():
        demand[m.department_id] += weights[m.id]
    pools: dict[str, list[str]] = {d: [] for d in catalog.departments}
    for clerk in catalog.clerks.values():
        first = next(iter(sorted(clerk.departments)), None) or \
            catalog.matters[next(iter(sorted(clerk.matters)))].department_id
        pools[first].append(clerk.id)
    chosen: list[str] = []
    count = {d: 0 for d in pools}
    while len(chosen) < args.clerks and any(pools.values()):
        dept = max((d for d in pools if pools[d]), key=lambda d: demand[d] / (count[d] + 1))
        chosen.append(pools[dept].pop(0))
        count[dept] += 1
    eligible = {m: [c for c in chosen if serves(catalog.clerks[c], catalog, m)]
                for m in catalog.matters}
    served = [m for m in sorted(catalog.matters) if eligible[m]]
    served_weights = [weights[m] for m in served]
    scale = args.arrival_s / FULL_ARRIVAL_S
    arrivals = sorted(rng.uniform(0, args.arrival_s) for _ in range(args.residents))
    residents = [
        ResidentSpec(i, t, rng.choices(served, served_weights)[0],
                     rng.uniform(120, 600) * scale, rng.random() < 0.7,
                     rng.choices([5, 4, 3, 2], [60, 25, 10, 5])[0])
        for i, t in enumerate(arrivals)
    ]
    points = sorted(catalog.service_points)[: args.kiosks]
    kiosks = [
        KioskSpec(p, rng.uniform(0, args.arrival_s / 2),
                  [rng.uniform(5, 30) * scale for _ in range(args.kiosk_visits)],
                  rng.choices(served, served_weights, k=args.kiosk_visits),
                  [rng.random() < 0.7 for _ in range(args.kiosk_visits)])
        for p in points
    ]
    return Plan(path, catalog, chosen, eligible, residents, kiosks, scale, args.seed)


# -- measurements -------------------------------------------------------------------------------


@dataclass
class TicketLog:
    """What the clients know of one ticket (for the figures and the records check)."""

    matter_id: str
    joined_at: float
    take_sent: float
    free_clerk: bool
    first_offer: float | None = None
    offers: int = 0
    accepted: bool = False
    left: bool = False
    rated: bool = False
    done_seen: bool = False


@dataclass
class Waiter:
    """A waiting resident, for the position staleness."""

    ticket_id: str
    matter_id: str
    joined_at: float
    position: int | None
    last_push: float | None = None
    pending: deque[tuple[float, int]] = field(default_factory=deque)  # (change at, expected)


@dataclass
class Stats:
    acks: dict[str, list[float]] = field(default_factory=dict)
    offer_delivery: list[float] = field(default_factory=list)
    staleness: list[float] = field(default_factory=list)
    unreflected: int = 0
    position_gap: list[float] = field(default_factory=list)
    wall_times: list[float] = field(default_factory=list)
    wall_age: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    errors_close: Counter[str] = field(default_factory=Counter)
    refusals: list[str] = field(default_factory=list)  # the first refused connections
    store_unavailable: int = 0
    store_unavailable_faults: int = 0
    breaks_forced: int = 0
    offers: int = 0
    offers_expired_answered: int = 0
    misses_intended: int = 0
    resumes: int = 0
    resume_failures: int = 0
    replaced_gaps: int = 0
    tickets: dict[str, TicketLog] = field(default_factory=dict)
    first_offer_at: dict[str, float] = field(default_factory=dict)
    ratings: set[str] = field(default_factory=set)

    def ack(self, name: str, seconds: float) -> None:
        self.acks.setdefault(name, []).append(seconds)


class Run:
    """One configuration's load: the clients, the queue model and the figures."""

    def __init__(self, plan: Plan, info: ClusterInfo, args: argparse.Namespace) -> None:
        self.plan = plan
        self.info = info
        self.args = args
        self.stats = Stats()
        self.closing = False
        self.loading = False  # between the start and the close of the load (wall intervals)
        self.faults: list[tuple[float, float]] = []  # (start, end) perf times
        self.clerk_state: dict[str, tuple[str, float]] = {}  # clerk -> (state, since)
        self.queues: dict[str, list[tuple[float, str]]] = {}  # matter -> sorted (joined, id)
        self.waiters: dict[str, Waiter] = {}
        self.actors: list[Actor] = []
        self.socks: list[Sock] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.connect_sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self.http_sem = asyncio.Semaphore(HTTP_CONCURRENCY)
        self.rng = random.Random(plan.seed + 1)
        self.t0 = 0.0
        self.dead_halls: set[str] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.stats.errors[f"bench:{type(exc).__name__}"] += 1
            print(f"  bench task failed: {exc!r}", flush=True)

    def in_fault(self, t: float) -> bool:
        return any(start <= t <= end for start, end in self.faults)

    def error(self, event: str, code: str, at: float) -> None:
        # The close-out (everybody leaving at once, offers to residents gone) is apart.
        (self.stats.errors_close if self.closing else self.stats.errors)[f"{event}:{code}"] += 1
        if code == "store_unavailable":
            if self.in_fault(at):
                self.stats.store_unavailable_faults += 1
            else:
                self.stats.store_unavailable += 1

    def wake_all(self) -> None:
        for actor in self.actors:
            actor.changed.set()

    def url(self, index: int) -> str:
        halls = self.info.halls
        return halls[index % len(halls)]

    # -- clerks' availability (for join → offer "while a clerk was free")

    def clerk_seen(self, clerk_id: str, state: str) -> None:
        if self.clerk_state.get(clerk_id, ("", 0.0))[0] != state:
            self.clerk_state[clerk_id] = (state, now())

    def free_clerk_for(self, matter_id: str) -> bool:
        """A clerk serving the matter shown ``available`` for a second or more: one that
        just became available may already hold an offer the bench has not seen yet."""
        t = now()
        for clerk in self.plan.eligible[matter_id]:
            state, since = self.clerk_state.get(clerk, ("", t))
            if state == "available" and t - since >= FREE_FOR_S:
                return True
        return False

    # -- tickets and the queue model

    def took(self, ticket: dict[str, Any], sent: float, free: bool) -> None:
        tid, matter = str(ticket["id"]), str(ticket["matter_id"])
        joined = float(ticket["joined_at"])
        if tid in self.stats.tickets:
            return
        self.stats.tickets[tid] = TicketLog(matter, joined, sent, free)
        position = ticket.get("position")
        if ticket.get("state") in ("waiting", "offered"):
            bisect.insort(self.queues.setdefault(matter, []), (joined, tid))
            self.waiters[tid] = Waiter(tid, matter, joined,
                                       int(position) if position is not None else None)

    def offered(self, tid: str, at: float) -> None:
        self.stats.offers += 1
        self.stats.first_offer_at.setdefault(tid, at)
        log = self.stats.tickets.get(tid)
        if log is not None:
            log.offers += 1

    def departed(self, tid: str, cause_at: float) -> None:
        """The ticket left its queue (accepted, left): a change every resident behind it can
        observe; ``cause_at`` is when the event that made it was sent."""
        log = self.stats.tickets.get(tid)
        waiter = self.waiters.pop(tid, None)
        if waiter is not None:
            self._settle(waiter, now())
        if log is None:
            return
        queue = self.queues.get(log.matter_id, [])
        i = bisect.bisect_left(queue, (log.joined_at, tid))
        if i < len(queue) and queue[i][1] == tid:
            del queue[i]
        else:
            return
        if self.closing:
            return  # everybody leaves: the close-out is not part of the load
        for k in range(i, len(queue)):
            behind = self.waiters.get(queue[k][1])
            if behind is None:
                continue
            expected = k + 1  # tickets still ahead of it, plus itself
            if behind.position is not None and behind.position <= expected:
                continue  # the hall already shows it as far up (pushed before the ack came)
            behind.pending.append((cause_at, expected))

    def _settle(self, waiter: Waiter, at: float) -> None:
        """Its wait ended: changes it was never told of count up to now."""
        for cause_at, _ in waiter.pending:
            self.stats.staleness.append(max(0.0, at - cause_at))
            self.stats.unreflected += 1
        waiter.pending.clear()

    def position_push(self, data: dict[str, Any]) -> None:
        waiter = self.waiters.get(str(data.get("ticket_id")))
        if waiter is None or data.get("position") is None:
            return
        t = now()
        if waiter.last_push is not None:
            self.stats.position_gap.append(t - waiter.last_push)
        waiter.last_push = t
        position = int(data["position"])
        waiter.position = position
        while waiter.pending and waiter.pending[0][1] >= position:
            cause_at, _ = waiter.pending.popleft()
            self.stats.staleness.append(max(0.0, t - cause_at))


class Ack:
    __slots__ = ("code", "data", "ok", "sent")

    def __init__(self, data: Any, code: str | None, sent: float) -> None:
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.ok = code is None and bool(self.data.get("ok"))
        self.code = code
        self.sent = sent
        if code is None and not self.ok:
            error = self.data.get("error")
            self.code = str(error.get("code")) if isinstance(error, dict) else "bad_ack"


class Sock:
    """One participant's connection: numbered events deduplicated by ``seq``, acks with a
    time-out, and resume on another process when the socket drops."""

    def __init__(self, run: Run, name: str, cred: dict[str, str], home: int,
                 on_event: Callable[[str, dict[str, Any]], None]) -> None:
        self.run = run
        self.name = name
        self.cred = cred
        self.home = home
        self.on_event = on_event
        self.sio: socketio.AsyncClient | None = None
        self.up = asyncio.Event()
        self.last_seq = 0
        self.resume_token: str | None = None
        self.welcome: dict[str, Any] | None = None
        self.welcomed = asyncio.Event()
        self.pending: set[asyncio.Future[Any]] = set()
        self.closed = False
        self.reconnecting = False
        self.refusal: Any = None  # the last connect_error's data ({code, message})

    def _client(self) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(reconnection=False, handle_sigint=False, json=OrjsonCodec)
        sio.on("*", lambda event, data=None: self._event(sio, event, data))
        sio.on("disconnect", lambda *_a: self._dropped(sio))
        sio.on("connect_error", lambda data=None: setattr(self, "refusal", data))
        return sio

    def _event(self, sio: socketio.AsyncClient, event: str, data: Any) -> None:
        if sio is not self.sio or not isinstance(data, dict):
            return
        if event == "welcome":
            self.welcome = data
            self.resume_token = str(data.get("resume_token") or "") or None
            if not data.get("resumed"):
                self.last_seq = int(data.get("last_seq") or 0)
            self.welcomed.set()
        seq = data.get("seq")
        if isinstance(seq, int):
            if seq <= self.last_seq:
                return  # replayed and already seen
            if seq > self.last_seq + 1 and self.last_seq:
                self.run.stats.replaced_gaps += seq - self.last_seq - 1
            self.last_seq = seq
        self.on_event(event, data)

    async def connect(self) -> bool:
        """Open the socket (fresh, with the credential) and wait for the welcome: on the home
        process, else (it is dead or refuses) the next ones, as a load balancer would."""
        for attempt in range(2 * len(self.run.info.halls)):
            index = self.home + attempt
            url = self.run.url(index)
            if url in self.run.dead_halls:
                continue
            async with self.run.connect_sem:
                if await self._open(url, dict(self.cred)) is None:
                    self.home = index % len(self.run.info.halls)
                    return True
            await asyncio.sleep(0.3)
        return False

    async def _open(self, url: str, auth: dict[str, Any]) -> str | None:
        """Connect and wait for the welcome; the refusal's code, or None once welcomed."""
        sio = self._client()
        self.sio = sio
        self.welcomed.clear()
        self.refusal = None
        try:
            await sio.connect(url, auth=auth, transports=["websocket"], wait_timeout=10)
            await asyncio.wait_for(self.welcomed.wait(), 10)
        except (socketio.exceptions.ConnectionError, TimeoutError, OSError) as exc:
            code = _connect_code(exc, self.refusal)
            self.run.error("connect", code, now())
            if len(self.run.stats.refusals) < 5:
                self.run.stats.refusals.append(
                    f"{self.name} at {url}, {now() - self.run.t0:.1f} s into the load: "
                    f"{exc!r} {self.refusal!r}")
            self.sio = None
            with contextlib.suppress(Exception):
                await sio.disconnect()
            return code
        self.up.set()
        return None

    def _dropped(self, sio: socketio.AsyncClient) -> None:
        if sio is not self.sio:
            return
        self.up.clear()
        for fut in list(self.pending):
            if not fut.done():
                fut.set_result(("disconnected", None))
        if not self.closed and not self.reconnecting:
            self.reconnecting = True
            self.run.spawn(self._reconnect())

    async def _reconnect(self) -> None:
        """Resume (``{resume, last_seq}`` and the credential: harmless, and needed by a hall
        that checks the credential on resume too) on the home process, else the next ones."""
        deadline = now() + RECONNECT_FOR_S
        attempt = failures = 0
        try:
            while not self.closed and now() < deadline:
                index = self.home + attempt
                attempt += 1
                url = self.run.url(index)
                if url in self.run.dead_halls:
                    continue
                auth: dict[str, Any] = dict(self.cred)
                if self.resume_token:
                    auth.update(resume=self.resume_token, last_seq=self.last_seq)
                # At most CONNECT_CONCURRENCY handshakes at once, reconnects included: the
                # hall caps unauthenticated connections per address (20), and every client
                # of this bench has the same one (a district's residents do not).
                async with self.run.connect_sem:
                    refused = await self._open(url, auth)
                if refused is None:
                    if auth.get("resume"):
                        self.run.stats.resumes += 1
                    self.home = index % len(self.run.info.halls)
                    return
                failures += 1
                if self.resume_token and (refused == "resume_invalid" or failures >= 5):
                    # The replay is gone: connect fresh (the welcome has the current state).
                    self.resume_token = None
                    self.run.stats.resume_failures += 1
                await asyncio.sleep(0.3)
            self.run.error("connect", "gave_up", now())
        finally:
            self.reconnecting = False

    async def call(self, event: str, payload: dict[str, Any], stat: str | None = None,
                   retry: bool = True) -> Ack:
        """Emit with an ack; a transient refusal is sent again (``RETRIES`` times). The
        first attempt's time goes to ``stat`` (a lost ack as ``ACK_TIMEOUT_S``)."""
        ack = await self._call(event, payload)
        if stat is not None and not self.run.closing:  # the close-out is no load
            self.run.stats.ack(stat, min(now() - ack.sent, ACK_TIMEOUT_S))
        tries = 0
        while retry and not ack.ok and ack.code in TRANSIENT and tries < RETRIES \
                and not self.closed:
            tries += 1
            if ack.code in ("disconnected", "not_connected"):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.up.wait(), RECONNECT_FOR_S)
            elif ack.code == "too_many_requests":
                error = ack.data.get("error") or {}
                await asyncio.sleep(float(error.get("retry_after_s") or 1.0))
            else:
                await asyncio.sleep(RETRY_PAUSE_S)
            ack = await self._call(event, payload)
        return ack

    async def _call(self, event: str, payload: dict[str, Any]) -> Ack:
        sent = now()
        sio = self.sio
        if sio is None or not self.up.is_set():
            self.run.error(event, "not_connected", sent)
            return Ack(None, "not_connected", sent)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.add(fut)

        def answered(*args: Any) -> None:
            if not fut.done():
                fut.set_result((None, args[0] if args else None))

        try:
            await sio.emit(event, payload, callback=answered)
            code, data = await asyncio.wait_for(fut, ACK_TIMEOUT_S)
        except TimeoutError:
            code, data = "ack_timeout", None
        except (socketio.exceptions.SocketIOError, OSError):
            code, data = "disconnected", None
        finally:
            self.pending.discard(fut)
        ack = Ack(data, code, sent)
        if ack.code is not None:
            self.run.error(event, ack.code, sent)
        return ack

    async def emit(self, event: str, payload: dict[str, Any]) -> None:
        """Fire and forget, but the ack's error (if any) is counted."""
        self.run.spawn(self._call(event, payload))

    async def close(self) -> None:
        self.closed = True
        sio, self.sio = self.sio, None
        if sio is not None:
            with contextlib.suppress(Exception):
                await sio.disconnect()


def _connect_code(exc: BaseException, refusal: Any) -> str:
    if isinstance(refusal, dict) and refusal.get("code"):
        return str(refusal["code"])
    text = str(exc)
    for code in ("resume_invalid", "unauthenticated", "too_many_attempts", "store_unavailable",
                 "origin_refused", "internal_error"):
        if code in text:
            return code
    # Refused before Socket.IO answered (Engine.IO "Connection error": the handshake failed,
    # e.g. the hall's cap on unauthenticated connections per address).
    return "timeout" if isinstance(exc, TimeoutError) else "transport_refused"


# -- the actors ---------------------------------------------------------------------------------


class Actor:
    """A participant's behaviour; ``changed`` is set on every event it gets."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.changed = asyncio.Event()
        self.sock: Sock | None = None

    async def until(self, pred: Callable[[], bool], within: float) -> bool:
        deadline = now() + within
        while not pred():
            remaining = deadline - now()
            if remaining <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return True

    async def pause(self, seconds: float) -> None:
        """Sleep, cut short by the close."""
        await self.until(lambda: self.run.closing, seconds)

    async def live(self) -> None:
        """The participant's behaviour over the load (a wallboard only listens)."""


def sdp(n: int, kind: str) -> dict[str, str]:
    return {"type": kind, "sdp": SDP_TEMPLATE.format(n=n)}


def candidate(n: int) -> dict[str, Any]:
    return {"candidate": f"candidate:{n} {CANDIDATE_TAIL}", "sdpMid": "0", "sdpMLineIndex": 0,
            "usernameFragment": "Xy7k"}


class Resident(Actor):
    """An app resident (one ticket) or a kiosk (one ticket per visiting resident)."""

    def __init__(self, run: Run, name: str) -> None:
        super().__init__(run)
        self.name = name
        self.ticket_id: str | None = None
        self.state: str | None = None
        self.session_id: str | None = None
        self.ended = False
        self.earlier: set[str] = set()  # a kiosk's previous residents' tickets
        self.ticket: dict[str, Any] | None = None  # as last pushed

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        if event == "welcome":
            ticket, session = data.get("ticket"), data.get("session")
            if isinstance(ticket, dict):
                self._ticket(ticket)
            if isinstance(session, dict) and session.get("id") == self.ticket_id:
                self.session_id = str(session["id"])
        elif event == "ticket.update":
            self._ticket(data["ticket"])
        elif event == "ticket.position":
            self.run.position_push(data)
        elif event == "session.started":
            self.session_id = str(data["session"]["id"])
        elif event == "session.ended":
            if data.get("session_id") == self.session_id:
                self.ended = True
        elif event == "rtc.signal":
            description = data.get("description")
            if isinstance(description, dict) and description.get("type") == "offer":
                self.run.spawn(self._answer(str(data["session_id"])))
        self.changed.set()

    def _ticket(self, ticket: dict[str, Any]) -> None:
        tid = str(ticket["id"])
        if tid in self.earlier or (self.ticket_id is not None and tid != self.ticket_id):
            return  # the previous resident's, at a kiosk
        self.ticket_id = tid
        self.ticket = ticket
        self.state = str(ticket["state"])
        log = self.run.stats.tickets.get(tid)
        if log is not None and self.state == "done":
            log.done_seen = True
        if self.state in ("abandoned", "timed_out"):
            self.run.departed(tid, now())  # the hall ended its wait

    async def _answer(self, session_id: str) -> None:
        assert self.sock is not None
        await self.sock.emit("rtc.signal", {"session_id": session_id,
                                            "description": sdp(1, "answer")})
        for n in range(2):
            await self.sock.emit("rtc.signal", {"session_id": session_id,
                                                "candidate": candidate(n)})
        await self.sock.emit("rtc.signal", {"session_id": session_id, "candidate": None})

    @property
    def served(self) -> bool:
        return self.session_id is not None or self.state in ("in_session", "wrap_up", "done")

    async def visit(self, matter_id: str, patience_s: float, rates: bool, score: int,
                    kiosk: bool) -> None:
        """One ticket, from take to rating."""
        sock, run = self.sock, self.run
        assert sock is not None
        if self.ticket_id is not None:
            self.earlier.add(self.ticket_id)
        self.ticket_id = self.state = self.session_id = None
        self.ticket = None
        self.ended = False
        free = run.free_clerk_for(matter_id)
        ack = await sock.call("ticket.take", {"matter_id": matter_id, "when_unstaffed": "wait"},
                              stat="take")
        if ack.ok:
            ticket = ack.data["ticket"]
            self.ticket_id, self.state = str(ticket["id"]), str(ticket["state"])
            run.took(ticket, ack.sent, free)
        elif ack.code == "ticket_active":
            # An earlier attempt went through (its ack was lost): the pushes name the ticket.
            await self.until(lambda: self.ticket is not None, 10)
            if self.ticket is None:
                return
            run.took(self.ticket, ack.sent, free)
        else:
            return
        tid = self.ticket_id
        assert tid is not None
        give_up = now() + patience_s
        await self.until(lambda: self.served or self.state in ("abandoned", "timed_out")
                         or run.closing or now() > give_up, patience_s + 1)
        if not self.served and self.state in ("waiting", "offered"):
            left = await sock.call("ticket.leave", {"ticket_id": tid}, stat="leave")
            if left.ok:
                log = run.stats.tickets.get(tid)
                if log is not None:
                    log.left = True
                run.departed(tid, left.sent)
                return
            if left.code != "invalid_state":
                return
            await self.until(lambda: self.served, 10)  # accepted meanwhile: go on
        if not self.served:
            return
        # In the session: a line of chat, the clerk does the rest.
        await self.until(lambda: self.session_id is not None or self.ended, 10)
        if self.session_id is not None and not self.ended:
            await self.pause(run.rng.uniform(0.5, 3) * max(run.plan.scale, 0.2))
            if not self.ended:
                await sock.call("chat.send", {"session_id": self.session_id,
                                              "text": "您好，我想咨询一下办理流程。"})
        await self.until(lambda: self.ended or self.state in ("wrap_up", "done"), 120)
        if rates:
            rated = await sock.call("session.rate", {"ticket_id": tid, "score": score},
                                    stat="rate")
            if rated.ok:
                run.stats.ratings.add(tid)
        if kiosk:
            await self.until(lambda: self.state in ("done", "abandoned"), 60)


class AppResident(Resident):
    def __init__(self, run: Run, spec: ResidentSpec, id_token: str) -> None:
        super().__init__(run, f"resident{spec.index}")
        self.spec = spec
        self.sock = Sock(run, self.name, {"id_token": id_token}, spec.index, self.on_event)

    async def live(self) -> None:
        await asyncio.sleep(max(0.0, self.run.t0 + self.spec.arrive_s - now()))
        if self.run.closing:
            return
        assert self.sock is not None
        if await self.sock.connect():
            self.run.socks.append(self.sock)
            s = self.spec
            await self.visit(s.matter_id, s.patience_s, s.rates, s.score, kiosk=False)


class Kiosk(Resident):
    def __init__(self, run: Run, spec: KioskSpec, token: str, index: int) -> None:
        super().__init__(run, f"kiosk-{spec.point}")
        self.spec = spec
        self.sock = Sock(run, self.name, {"token": token}, index, self.on_event)

    async def live(self) -> None:
        run, spec = self.run, self.spec
        await asyncio.sleep(max(0.0, run.t0 + spec.first_s - now()))
        for matter, gap, rates in zip(spec.matters, spec.gaps_s, spec.rates, strict=True):
            if run.closing or now() > run.t0 + run.args.arrival_s:
                return
            patience = run.rng.uniform(120, 600) * run.plan.scale
            await self.visit(matter, patience, rates, run.rng.choice([5, 5, 4, 3]), kiosk=True)
            await self.pause(gap)


class Clerk(Actor):
    def __init__(self, run: Run, clerk_id: str, token: str, index: int) -> None:
        super().__init__(run)
        self.id = clerk_id
        self.sock = Sock(run, clerk_id, {"token": token}, index, self.on_event)
        self.rng = random.Random(f"{run.plan.seed}-{clerk_id}")
        self.state = "logged_out"
        self.break_reason: str | None = None
        self.ticket_id: str | None = None
        self.offers: deque[dict[str, Any]] = deque()
        self.withdrawn: set[str] = set()
        self.answered: set[str] = set()
        self.ended: set[str] = set()
        self.may_miss = True
        self.forced = False

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        run = self.run
        if event == "welcome":
            clerk = data.get("clerk")
            if isinstance(clerk, dict):
                self._clerk(clerk)
            offer = data.get("offer")
            if isinstance(offer, dict) and all(o["ticket_id"] != offer["ticket_id"]
                                               for o in self.offers):
                self.offers.append(offer)
        elif event == "clerk.state":
            self._clerk(data["clerk"])
        elif event == "offer.new":
            if not run.closing:  # the close-out's offers (to residents leaving) are no load
                run.stats.offer_delivery.append(
                    time.time() - (float(data["deadline"]) - float(data["timeout_s"])))
                run.offered(str(data["ticket_id"]), now())
            run.clerk_seen(self.id, "offered")  # its clerk.state may come after
            # A ticket offered again (after a decline's cooldown) is a new offer.
            self.withdrawn.discard(str(data["ticket_id"]))
            self.answered.discard(str(data["ticket_id"]))
            self.offers.append(data)
        elif event == "offer.withdrawn":
            tid = str(data["ticket_id"])
            self.withdrawn.add(tid)
            if data.get("reason") == "timeout" and tid in self.answered:
                run.stats.offers_expired_answered += 1
        elif event == "session.ended":
            self.ended.add(str(data["session_id"]))
        self.changed.set()

    def _clerk(self, clerk: dict[str, Any]) -> None:
        was = (self.state, self.break_reason)
        self.state, self.break_reason = str(clerk["state"]), clerk.get("break_reason")
        self.ticket_id = clerk.get("ticket_id")
        self.run.clerk_seen(self.id, self.state)
        if self.state == "on_break" and self.break_reason == "missed_offers" \
                and was != ("on_break", "missed_offers"):
            self.run.stats.breaks_forced += 1
            self.forced = True

    def _gone(self, ticket_id: str) -> bool:
        return ticket_id in self.withdrawn or self.run.closing

    async def live(self) -> None:
        run, sock = self.run, self.sock
        assert sock is not None
        while not run.closing:
            await self.until(lambda: bool(self.offers) or self.forced or run.closing, 3600)
            if run.closing:
                break
            if self.forced:
                self.forced = False
                await self.pause(2.0)
                await sock.call("clerk.available", {}, stat="available")
                continue
            offer = self.offers.popleft()
            tid = str(offer["ticket_id"])
            if tid in self.withdrawn:
                continue
            roll = self.rng.random()
            if roll < 0.05 and self.may_miss:
                self.may_miss = False
                run.stats.misses_intended += 1
                await self.until(functools.partial(self._gone, tid),
                                 float(offer.get("timeout_s") or 20) + 10)
                continue
            await self.pause(self.rng.uniform(1, 3))
            if tid in self.withdrawn:
                continue
            self.answered.add(tid)
            if roll < 0.15 or run.closing:
                await sock.call("offer.decline", {"ticket_id": tid}, stat="decline")
                continue
            ack = await sock.call("offer.accept", {"ticket_id": tid}, stat="accept")
            if ack.ok:
                session_id = str(ack.data["session"]["id"])
            elif self.state == "in_session" and self.ticket_id == tid:
                session_id = tid  # a retried accept after a lost ack: it went through
            else:
                continue
            self.may_miss = True
            log = run.stats.tickets.get(tid)
            if log is not None:
                log.accepted = True
            run.departed(tid, ack.sent)
            await self.serve(session_id)
        # The close: nothing new; an offer still pending is declined.
        pending, self.offers = list(self.offers), deque()
        for offer in pending:
            if str(offer["ticket_id"]) not in self.withdrawn:
                await sock.call("offer.decline", {"ticket_id": str(offer["ticket_id"])})

    async def serve(self, session_id: str) -> None:
        run, sock, rng = self.run, self.sock, self.rng
        assert sock is not None
        scale = run.plan.scale
        await sock.emit("rtc.signal", {"session_id": session_id,
                                       "description": sdp(0, "offer")})
        for n in range(3):
            await sock.emit("rtc.signal", {"session_id": session_id, "candidate": candidate(n)})
        await sock.emit("rtc.signal", {"session_id": session_id, "candidate": None})
        await sock.call("chat.send", {"session_id": session_id, "text": "您好，请问需要办理什么？"})
        end_at = now() + max(1.5, rng.uniform(3, 60) * scale)
        chat_every = max(2.0, 15 * scale)
        while now() < end_at and session_id not in self.ended and not run.closing:
            await self.until(lambda: session_id in self.ended or run.closing,
                             min(chat_every, end_at - now()))
            if now() < end_at and session_id not in self.ended and not run.closing:
                await sock.call("chat.send", {"session_id": session_id, "text": "好的，请稍等。"})
        if session_id not in self.ended:
            await sock.call("session.end", {"session_id": session_id}, stat="end")
        await self.pause(max(0.5, rng.uniform(2, 8) * scale))
        roll, outcome, reason = rng.random(), "resolved", None
        for code, share, why in OUTCOMES:
            if roll < share:
                outcome, reason = code, why
                break
            roll -= share
        payload: dict[str, Any] = {"outcome": outcome}
        if reason is not None:
            payload["reason"] = reason
        # 5 % ask for a break during the wrap-up (pending: it starts when the wrap-up ends,
        # so no offer comes in between and none expires on the bench's account).
        pause = rng.random() < 0.05 and not run.closing
        if pause:
            await sock.call("clerk.break", {"reason": "休息"})
        finished = await sock.call("wrapup.finish", payload, stat="finish")
        if pause and (finished.data.get("clerk") or {}).get("state") == "on_break":
            await self.pause(max(1.0, rng.uniform(10, 40) * scale))
            await sock.call("clerk.available", {}, stat="available")


class Wallboard(Actor):
    def __init__(self, run: Run, name: str, token: str, index: int, timed: bool) -> None:
        super().__init__(run)
        self.timed = timed
        self.sock = Sock(run, name, {"token": token}, index, self.on_event)

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        if event == "wall.update" and self.timed and self.run.loading:
            self.run.stats.wall_times.append(now())
            at = (data.get("wall") or {}).get("at")
            if isinstance(at, int | float):
                self.run.stats.wall_age.append(time.time() - float(at))


# -- processes: CPU, RSS, PostgreSQL ------------------------------------------------------------


def rss_kib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


class Sampler:
    """CPU seconds and RSS of the halls and Redis, once a second (a pid may die or change:
    a killed hall, a restarted Redis)."""

    def __init__(self, halls: list[int], redis: Callable[[], int | None]) -> None:
        self.halls = halls
        self.redis = redis
        self.first: dict[int, tuple[float, float]] = {}  # pid -> (time, cpu)
        self.last: dict[int, tuple[float, float]] = {}
        self.rss_max: dict[int, float] = {}
        self.redis_pids: list[int] = []
        self.task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        redis = self.redis()
        if redis is not None and redis not in self.redis_pids:
            self.redis_pids.append(redis)
        for pid in [*self.halls, *self.redis_pids]:
            if not alive(pid):
                continue
            try:
                reading = (now(), cpu_s(pid))
            except OSError:
                continue
            self.first.setdefault(pid, reading)
            self.last[pid] = reading
            rss = rss_kib(pid)
            if rss is not None:
                self.rss_max[pid] = max(self.rss_max.get(pid, 0.0), rss)

    async def _loop(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(1.0)

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        self.sample()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def cpu(self, pid: int) -> float:
        if pid not in self.first:
            return 0.0
        return self.last[pid][1] - self.first[pid][1]


def hall_rss(pids: Sequence[int]) -> float:
    return sum(rss_kib(pid) or 0.0 for pid in pids)


# -- one configuration --------------------------------------------------------------------------


async def post(http: aiohttp.ClientSession, run: Run, url: str, body: dict[str, Any]
               ) -> dict[str, Any]:
    async with run.http_sem, http.post(url, json=body) as response:
        data = await response.json(content_type=None)
    if response.status != 200 or not isinstance(data, dict):
        code = (data.get("error") or {}).get("code") if isinstance(data, dict) else None
        run.error("http", str(code or response.status), now())
        raise BenchError(f"POST {url}: HTTP {response.status}: {data}")
    return data


async def check_records(url: str, stats: Stats) -> dict[str, Any]:
    """The event log against what the clients saw (see the docstring)."""
    db = RecordsDB(normalize_database_url(url, default_sqlite_path="records.sqlite3"))
    await db.open()
    events: list[HallEvent] = []
    try:
        while True:
            batch = await db.events(since_seq=events[-1].seq if events else 0, limit=5000)
            if not batch:
                break
            events += batch
    finally:
        await db.close()
    seqs = [e.seq for e in events]
    gaps = (max(seqs) - min(seqs) + 1 - len(set(seqs))) if seqs else 0
    kinds: dict[str, Counter[str]] = {}
    for e in events:
        if e.ticket_id is not None:
            kinds.setdefault(e.ticket_id, Counter())[e.kind.value] += 1
    entered = {t for t, k in kinds.items() if k[EventKind.ENTER_QUEUE.value]}
    taken = set(stats.tickets)
    terminal = {t: sum(k[x.value] for x in TERMINAL_KINDS) for t, k in kinds.items()}

    def missing(flag: Callable[[TicketLog], bool], kind: EventKind) -> int:
        return sum(1 for t, log in stats.tickets.items()
                   if flag(log) and not kinds.get(t, Counter())[kind.value])

    result = {
        "events": len(events),
        "seq_gaps": gaps,
        "tickets_in_log": len(entered),
        "tickets_taken": len(taken),
        "tickets_missing_in_log": len(taken - entered),
        "tickets_unknown_to_clients": len(entered - taken),
        "tickets_without_terminal": sum(1 for t in entered if terminal.get(t, 0) == 0),
        "tickets_duplicate_terminal": sum(1 for t in entered if terminal.get(t, 0) > 1),
        "accepts_missing": missing(lambda log: log.accepted, EventKind.ACCEPT),
        # A leave acked ok ends the ticket: abandoned, or (accepted meanwhile: the resident
        # left the session) done after the clerk's wrap-up.
        "abandons_missing": sum(
            1 for t, log in stats.tickets.items()
            if log.left and not kinds.get(t, Counter())[EventKind.ABANDON.value]
            and not (kinds.get(t, Counter())[EventKind.ACCEPT.value]
                     and kinds.get(t, Counter())[EventKind.DONE.value])),
        "dones_missing": missing(lambda log: log.done_seen, EventKind.DONE),
        "ratings_missing": sum(1 for t in stats.ratings
                               if not kinds.get(t, Counter())[EventKind.SESSION_RATING.value]),
        "done_in_log": sum(1 for t in entered if kinds[t][EventKind.DONE.value]),
        "done_seen_by_clients": sum(1 for log in stats.tickets.values() if log.done_seen),
        "abandon_in_log": sum(1 for t in entered if kinds[t][EventKind.ABANDON.value]),
        "left_by_clients": sum(1 for log in stats.tickets.values() if log.left),
        "state_lost_in_log": sum(1 for t in entered if kinds[t][EventKind.STATE_LOST.value]),
    }
    result["lost_events"] = (result["tickets_missing_in_log"]
                             + result["tickets_without_terminal"] + result["accepts_missing"]
                             + result["abandons_missing"] + result["dones_missing"]
                             + result["ratings_missing"])
    result["records_ok"] = (result["lost_events"] == 0 and gaps == 0
                            and result["tickets_duplicate_terminal"] == 0
                            and result["tickets_unknown_to_clients"] == 0)
    return result


@dataclass
class Faults:
    """What --faults uses: the bench's own Redis (AOF) and PostgreSQL."""

    redis: RedisProcess | None
    pg: PgCluster


async def run_faults(run: Run, faults: Faults, processes: int) -> list[str]:
    """Kill a hall, restart Redis, stop PostgreSQL for 30 s, on the plan's schedule."""
    done: list[str] = []
    arrival = run.args.arrival_s

    async def at(fraction: float) -> None:
        await asyncio.sleep(max(0.0, run.t0 + fraction * arrival - now()))

    async def kill() -> None:
        await at(0.15)
        pid, url = run.info.pids[-1], run.info.halls[-1]
        start = now()
        os.kill(pid, signal.SIGKILL)
        run.dead_halls.add(url)
        run.faults.append((start, start + 25.0))
        done.append(f"SIGKILL hall {url} (pid {pid}) at {start - run.t0:.1f} s")
        print(f"  fault: {done[-1]}", flush=True)

    async def redis_restart() -> None:
        assert faults.redis is not None
        await at(0.55)
        start = now()
        run.faults.append((start, math.inf))
        await asyncio.to_thread(faults.redis.stop)
        await asyncio.sleep(REDIS_DOWN_S)  # a restart takes a moment (loading its AOF)
        await faults.redis.start()
        up = now()
        run.faults[-1] = (start, up + 10.0)
        done.append(f"Redis restarted (AOF) at {start - run.t0:.1f} s, down {up - start:.1f} s")
        print(f"  fault: {done[-1]}", flush=True)

    async def pg_outage() -> None:
        await at(0.30)
        start = now()
        run.faults.append((start, math.inf))
        await asyncio.to_thread(faults.pg.stop)
        await asyncio.sleep(30.0)
        await asyncio.to_thread(faults.pg.start)
        up = now()
        run.faults[-1] = (start, up + 10.0)
        done.append(f"records DB down {start - run.t0:.1f}..{up - run.t0:.1f} s")
        print(f"  fault: {done[-1]}", flush=True)

    jobs = [pg_outage()]
    if processes > 1:
        jobs += [kill(), redis_restart()]
    await asyncio.gather(*jobs)
    return done


@dataclass
class Config:
    name: str
    processes: int
    cluster: LocalCluster
    db_url: str
    starting: asyncio.Task[ClusterInfo] | None = None

    def start(self) -> asyncio.Task[ClusterInfo]:
        if self.starting is None:
            self.starting = asyncio.create_task(self.cluster.start())
        return self.starting


async def prepare(name: str, processes: int, plan: Plan, args: argparse.Namespace,
                  workdir: Path, faults: Faults | None) -> Config:
    """The configuration's local-cluster command line (and, with --faults, its database)."""
    data_dir = workdir / name
    cargs = ["--embedded"] if processes == 0 else ["--processes", str(processes)]
    cargs += ["--demo", "--catalog", str(plan.catalog_path), "--data-dir", str(data_dir)]
    db_url = f"sqlite+aiosqlite:///{data_dir / 'records.sqlite3'}"
    if faults is not None:
        db_url = await asyncio.to_thread(faults.pg.create, f"district_{name.replace('-', '_')}")
        cargs += ["--database-url", db_url]
        if processes > 0 and faults.redis is not None:
            cargs += ["--redis-url", faults.redis.url]
    cluster = LocalCluster(args.local_cluster, cargs, args.log_level,
                           workdir / f"{name}-local-cluster.log")
    if not args.no_rate_limits:
        cluster.env.pop("HALL_RATE_LIMITS", None)  # the hall's own limits: a real client's
    return Config(name, processes, cluster, db_url)


async def measure(config: Config, plan: Plan, args: argparse.Namespace,
                  faults: Faults | None, following: Config | None) -> dict[str, Any]:
    """Drive the load on the started configuration, stop it, check the records. With
    ``--overlap-starts`` the ``following`` configuration starts while this one is measured."""
    name, processes, cluster, db_url = (config.name, config.processes, config.cluster,
                                        config.db_url)
    walls: list[tuple[float, str]] = []
    marks: list[str] = []
    started = now()

    def mark(what: str) -> None:
        walls.append((time.time(), what))
        marks.append(f"{what} {now() - started:.1f}")

    info = await config.start()
    mark("start")
    run = Run(plan, info, args)
    redis_pid: Callable[[], int | None] = (
        (lambda: faults.redis.process.pid if faults and faults.redis and faults.redis.process
         else None) if faults is not None and processes > 0 else (lambda: info.redis_pid))
    sampler = Sampler(list(info.pids), redis_pid)
    empty_rss = hall_rss(info.pids)
    result: dict[str, Any] = {"config": name, "processes": processes}
    clerks: list[Clerk] = []
    try:
        async with aiohttp.ClientSession() as http:
            password = info.password
            accounts = importlib.import_module("signaling.accounts")
            secret_key = str(info.raw["secret_key"])

            async def login(i: int, username: str) -> str:
                body = {"username": username, "password": password}
                return str((await post(http, run, f"{run.url(i)}/api/auth/login", body))["token"])

            boards = [Wallboard(run, "supervisor", await login(0, "supervisor"), 0, True),
                      Wallboard(run, "supervisor_hrss", await login(1, "supervisor_hrss"), 1,
                                False)]
            tokens = await asyncio.gather(*(login(i, c) for i, c in enumerate(plan.clerks)))
            clerks = [Clerk(run, c, t, i) for i, (c, t) in
                      enumerate(zip(plan.clerks, tokens, strict=True))]

            async def kiosk_token(i: int, spec: KioskSpec) -> str:
                secret = str(accounts.demo_kiosk_secret(secret_key, spec.point))
                body = {"service_point_id": spec.point, "secret": secret}
                return str((await post(http, run, f"{run.url(i)}/api/auth/kiosk", body))["token"])

            kiosk_tokens = await asyncio.gather(*(kiosk_token(i, k)
                                                  for i, k in enumerate(plan.kiosks)))
            kiosks = [Kiosk(run, k, t, i) for i, (k, t) in
                      enumerate(zip(plan.kiosks, kiosk_tokens, strict=True))]

            async def id_token(spec: ResidentSpec) -> str:
                body = {"resident_id": f"district-{plan.seed}-{spec.index}",
                        "name": f"居民{spec.index}"}
                url = f"{run.url(spec.index)}/api/dev/resident-token"
                return str((await post(http, run, url, body))["id_token"])

            id_tokens = await asyncio.gather(*(id_token(s) for s in plan.residents))
        residents = [AppResident(run, s, t) for s, t in zip(plan.residents, id_tokens, strict=True)]
        run.actors = [*boards, *clerks, *kiosks, *residents]
        mark("tokens")
        staff: list[Actor] = [*boards, *clerks, *kiosks]

        async def open_staff(actor: Actor) -> None:
            assert actor.sock is not None
            if await actor.sock.connect():
                run.socks.append(actor.sock)
                if isinstance(actor, Kiosk):
                    await actor.sock.call("kiosk.health", {
                        "camera": "ok", "microphone": "ok", "speaker": "ok",
                        "document_camera": "ok", "agent": "bench/district.py"})

        await asyncio.gather(*(open_staff(a) for a in staff))
        staff_connected = sum(1 for s in run.socks if s.up.is_set())
        staff_rss = hall_rss(info.pids)
        mark("staff connected")
        if args.overlap_starts and following is not None:
            following.start()
        # The load.
        client_cpu0 = time.process_time()
        sampler.start()
        run.t0 = now()
        run.loading = True
        fault_task = (asyncio.create_task(run_faults(run, faults, processes))
                      if faults is not None else None)
        for actor in [*clerks, *kiosks, *residents]:
            run.spawn(actor.live())
        await asyncio.sleep(max(0.0, run.t0 + args.arrival_s + 1.0 - now()))
        connected = sum(1 for s in run.socks if s.up.is_set())
        peak_rss: float | None = hall_rss(info.pids)
        if not all(alive(p) for p in info.pids):
            peak_rss = None
        mark("arrivals")
        await asyncio.sleep(max(0.0, run.t0 + args.arrival_s + args.tail_s - now()))
        run.closing = True
        load_s = now() - run.t0  # CPU and the wall: the load, not the close-out
        run.loading = False
        await sampler.stop()
        client_cpu = (time.process_time() - client_cpu0) / load_s
        run.wake_all()
        mark("tail")
        if following is not None:
            following.start()  # the close-out is not measured: the next one starts meanwhile
        if run.tasks:
            await asyncio.wait(list(run.tasks), timeout=CLOSE_OUT_S)
        left_running = len(run.tasks)
        for task in list(run.tasks):
            task.cancel()
        mark("close-out")
        fault_log = await fault_task if fault_task is not None else []
        # Every ticket's end must be in the log: let the writers catch up, then stop.
        await asyncio.sleep(1.0)
        await asyncio.gather(*(s.close() for s in run.socks))
        cluster_stop = cluster.begin_stop()
        await cluster_stop
        mark("stop")
        records = await check_records(db_url, run.stats)
        mark("records")
    except BaseException:
        for task in list(run.tasks):
            task.cancel()
        await sampler.stop()
        await asyncio.gather(*(s.close() for s in run.socks), return_exceptions=True)
        await cluster.stop()
        print(info.log_tails(), flush=True)
        raise
    problems = [f"[{phase_at(line, walls)}] {line}" for line in info.log_problems()]
    # Events a hall itself says it could not write (its last flush at the stop): lost, even
    # when no ticket shows it (they may be the last ones: no gap after them).
    unwritten = sum(int(m[1]) for line in problems if (m := UNWRITTEN.search(line)))
    records["events_unwritten_at_stop"] = unwritten
    records["lost_events"] += unwritten
    records["records_ok"] = records["records_ok"] and unwritten == 0
    s = run.stats
    result.update(figures(run, sampler, info, redis_pid, load_s, client_cpu,
                          connected, staff_connected,
                          None if peak_rss is None else peak_rss - staff_rss,
                          None if peak_rss is None else peak_rss - empty_rss))
    result.update(records)
    result.update({
        "left_running_after_close": left_running,
        "faults": fault_log,
        "hall_log_problems": len(problems),
        "hall_log_excerpts": problems[:8],
        "resumes": s.resumes,
        "resume_failures": s.resume_failures,
        "seq_gaps_seen_by_clients": s.replaced_gaps,
        "timeline": marks,
        "elapsed_s": round(now() - started, 1),
    })
    return result


def figures(run: Run, sampler: Sampler, info: ClusterInfo, redis_pid: Callable[[], int | None],
            load_s: float, client_cpu: float, connected: int, staff: int,
            rss_growth: float | None, rss_growth_all: float | None) -> dict[str, Any]:
    s = run.stats
    join_all, join_free = [], []
    for tid, log in s.tickets.items():
        first = s.first_offer_at.get(tid)
        if first is None:
            continue
        join_all.append(first - log.take_sent)
        if log.free_clerk:
            join_free.append(first - log.take_sent)
    hall_cpu = {pid: sampler.cpu(pid) for pid in info.pids}
    redis_cpu = sum(sampler.cpu(pid) for pid in sampler.redis_pids)
    redis_rss = max((sampler.rss_max.get(pid, 0.0) for pid in sampler.redis_pids), default=0.0)
    walls = s.wall_times
    wall_gaps = [b - a for a, b in itertools.pairwise(walls)]
    out: dict[str, Any] = {
        "tickets": len(s.tickets),
        "offers": s.offers,
        "load_s": round(load_s, 1),
    }
    for key, values in [("take", s.acks.get("take", [])), ("join_offer", join_free),
                        ("join_offer_all", join_all),
                        ("offer_delivery", s.offer_delivery),
                        ("position_staleness", s.staleness), ("position_gap", s.position_gap),
                        ("wall_interval", wall_gaps), ("wall_age", s.wall_age),
                        *((k, s.acks.get(k, [])) for k in ("accept", "decline", "available",
                                                            "leave", "end", "finish", "rate"))]:
        out[f"{key}_n"] = len(values)
        out[f"{key}_p50_ms"] = ms(values, 0.5)
        out[f"{key}_p99_ms"] = ms(values, 0.99)
    out["wall_interval_max_ms"] = round(max(wall_gaps) * 1000, 1) if wall_gaps else None
    out.update({
        "position_unreflected": s.unreflected,
        "errors": dict(sorted(s.errors.items())),
        "errors_close_out": dict(sorted(s.errors_close.items())),
        "connect_refusals": s.refusals,
        "store_unavailable": s.store_unavailable,
        "store_unavailable_during_faults": s.store_unavailable_faults,
        "breaks_forced": s.breaks_forced,
        "offers_expired_answered": s.offers_expired_answered,
        "offers_missed_on_purpose": s.misses_intended,
        "hall_cpu_pct": [round(c / load_s * 100, 1) for c in hall_cpu.values()],
        "hall_rss_mib": [round(sampler.rss_max.get(p, 0.0) / 1024, 1) for p in info.pids],
        "redis_cpu_pct": round(redis_cpu / load_s * 100, 1),
        "redis_rss_mib": round(redis_rss / 1024, 1),
        "client_cpu_pct": round(client_cpu * 100, 1),
        "cpu_ms_per_ticket": round((sum(hall_cpu.values()) + redis_cpu)
                                   / max(len(s.tickets), 1) * 1000, 2),
        "connected_at_peak": connected,
        # A hall killed on purpose (--faults) took its memory along: no figure then.
        "kib_per_connection": (round(rss_growth / max(connected - staff, 1), 1)
                               if rss_growth is not None else None),
        "kib_per_connection_all": (round(rss_growth_all / max(connected, 1), 1)
                                   if rss_growth_all is not None else None),
    })
    return out


# -- main ---------------------------------------------------------------------------------------


def config_name(processes: int) -> str:
    return "embedded" if processes == 0 else f"redis-{processes}"


def key_of(processes: int) -> str:
    return "embedded" if processes == 0 else str(processes)


ROWS = [("ticket.take ack", "take"), ("join→offer (clerk free)", "join_offer"),
        ("join→offer (all)", "join_offer_all"), ("offer delivery", "offer_delivery"),
        ("offer.accept ack", "accept"), ("offer.decline ack", "decline"),
        ("clerk.available ack", "available"), ("ticket.leave ack", "leave"),
        ("session.end ack", "end"), ("wrapup.finish ack", "finish"),
        ("session.rate ack", "rate"), ("position staleness", "position_staleness"),
        ("position push gap", "position_gap"), ("wall.update interval", "wall_interval"),
        ("wall age", "wall_age")]


def print_config(r: dict[str, Any]) -> None:
    print(f"\n== {r['config']}: {r['tickets']} tickets, {r['offers']} offers, load "
          f"{r['load_s']} s ({', '.join(r['timeline'])})")
    print(f"   {'':26} {'n':>6} {'p50 ms':>9} {'p99 ms':>9}")
    for label, key in ROWS:
        print(f"   {label:26} {r[f'{key}_n']:>6} {_fmt(r[f'{key}_p50_ms'])} "
              f"{_fmt(r[f'{key}_p99_ms'])}")
    print(f"   wall.update interval max {r['wall_interval_max_ms']} ms; position changes never "
          f"pushed before the wait ended: {r['position_unreflected']}")
    print(f"   errors: {r['errors'] or 'none'}; in the close-out: "
          f"{r['errors_close_out'] or 'none'}")
    for refusal in r["connect_refusals"]:
        print(f"   refused connection: {refusal[:300]}")
    print(f"   store_unavailable {r['store_unavailable']} (during faults "
          f"{r['store_unavailable_during_faults']}), breaks forced {r['breaks_forced']}, "
          f"offers expired after an answer {r['offers_expired_answered']} "
          f"(missed on purpose {r['offers_missed_on_purpose']}), resumes {r['resumes']} "
          f"(failed {r['resume_failures']})")
    print(f"   CPU % per hall {r['hall_cpu_pct']}, Redis {r['redis_cpu_pct']} %, bench client "
          f"{r['client_cpu_pct']} %; RSS MiB per hall {r['hall_rss_mib']}, Redis "
          f"{r['redis_rss_mib']}; {r['cpu_ms_per_ticket']} CPU-ms per ticket; "
          f"{r['kib_per_connection']} KiB per connection ({r['connected_at_peak']} connected)")
    if r["client_cpu_pct"] > CLIENT_BUSY * 100:
        print(f"   WARNING: the bench client used {r['client_cpu_pct']} % of a core: its "
              f"latencies include its own queueing")
    print(f"   records: {r['events']} events, {r['tickets_in_log']} tickets in the log / "
          f"{r['tickets_taken']} taken, without terminal {r['tickets_without_terminal']}, "
          f"duplicate terminal {r['tickets_duplicate_terminal']}, seq gaps {r['seq_gaps']}, "
          f"done {r['done_in_log']} (clients saw {r['done_seen_by_clients']}), abandon "
          f"{r['abandon_in_log']} (left {r['left_by_clients']}), not written at the stop "
          f"{r['events_unwritten_at_stop']}, lost {r['lost_events']} -> "
          f"{'OK' if r['records_ok'] else 'FAILED'}")
    for fault in r["faults"]:
        print(f"   fault: {fault}")
    if r["hall_log_problems"]:
        print(f"   {r['hall_log_problems']} WARNING/ERROR lines in the hall logs, first:")
        for line in r["hall_log_excerpts"]:
            print(f"     {line[:300]}")


def _fmt(value: float | None) -> str:
    return f"{value:9.1f}" if value is not None else f"{'-':>9}"


HEADLINE = ["take_p50_ms", "take_p99_ms", "join_offer_p99_ms", "join_offer_all_p99_ms",
            "offer_delivery_p99_ms", "accept_p99_ms", "available_p99_ms",
            "position_staleness_p99_ms", "wall_interval_p50_ms", "wall_interval_p99_ms",
            "wall_interval_max_ms", "store_unavailable", "breaks_forced", "kib_per_connection",
            "lost_events", "records_ok", "cpu_ms_per_ticket"]
SKIP = {"config", "processes", "timeline", "hall_log_excerpts"}


async def run_all(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    started = now()
    plan = make_plan(args, workdir)
    print(f"district: {len(plan.residents)} residents over {args.arrival_s:g} s (+{args.tail_s:g}"
          f" s), {len(plan.clerks)} clerks, {len(plan.kiosks)} kiosks x {args.kiosk_visits} "
          f"visits, human times x{plan.scale:.2f}; configurations "
          f"{[config_name(p) for p in args.processes]}", flush=True)
    faults: Faults | None = None
    configs: list[Config] = []
    results: dict[int, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    try:
        if args.faults:
            pg = PgCluster(workdir / "pg", max_connections=300)
            try:
                await asyncio.to_thread(pg.init)
                await asyncio.to_thread(pg.start)
            except PgMissingError as exc:
                raise SystemExit(f"error: {exc} (needed by --faults)") from None
            redis = None
            if any(p > 0 for p in args.processes):
                rdir = workdir / "redis"
                rdir.mkdir(parents=True, exist_ok=True)
                redis = RedisProcess(rdir, persistent=True)
                await redis.start()
            faults = Faults(redis, pg)
        configs = [await prepare(config_name(p), p, plan, args, workdir, faults)
                   for p in args.processes]
        for i, config in enumerate(configs):
            print(f"-- {config.name} ...", flush=True)
            following = configs[i + 1] if i + 1 < len(configs) else None
            try:
                results[config.processes] = await measure(config, plan, args, faults, following)
                print_config(results[config.processes])
            except (BenchError, OSError, socketio.exceptions.SocketIOError) as exc:
                errors[config.name] = str(exc)[:3000]
                print(f"  {config.name}: FAILED: {exc}", flush=True)
                await config.cluster.stop()
    finally:
        for config in configs:
            if config.starting is not None:
                if not config.starting.done():
                    config.starting.cancel()
                    with contextlib.suppress(BaseException):
                        await config.starting
                await config.cluster.stop()
        if faults is not None:
            if faults.redis is not None:
                faults.redis.stop()
            await asyncio.to_thread(faults.pg.remove)
    summary: dict[str, Any] = {}
    for processes, r in results.items():
        key = key_of(processes)
        for name, value in r.items():
            if name not in SKIP:
                summary[f"{name}_{key}"] = value
    base = results.get(0)
    print()
    for processes, r in results.items():
        if processes == 0 or base is None:
            continue
        line = []
        for fig in RATIO_FIGURES:
            a, b = r.get(fig), base.get(fig)
            if isinstance(a, int | float) and isinstance(b, int | float) and b:
                summary[f"ratio_{fig}_{processes}"] = round(a / b, 2)
                line.append(f"{fig} {a / b:.2f}x")
        print(f"{processes} processes / embedded: " + ", ".join(line))
    head = results[max(results)] if results else {}
    for name in HEADLINE:
        summary[name] = head.get(name)
    summary.update({
        "headline_config": head.get("config"),
        "lost_events_total": sum(int(r["lost_events"]) for r in results.values()),
        "records_ok_all": bool(results) and all(r["records_ok"] for r in results.values()),
        "residents": len(plan.residents), "clerks": len(plan.clerks),
        "kiosks": len(plan.kiosks), "arrival_s": args.arrival_s, "tail_s": args.tail_s,
        "scale": round(plan.scale, 3), "faults": args.faults, "seed": args.seed,
        "rate_limits": not args.no_rate_limits, "cpu_count": os.cpu_count(),
        "errors": errors, "elapsed_s": round(now() - started, 1),
    })
    print(f"total {summary['elapsed_s']} s")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="60 residents, 8 clerks, 5 kiosks over 10 s (the smoke test)")
    size.add_argument("--full", action="store_true",
                      help="the district's real peak: arrivals over 150 s")
    parser.add_argument("--processes", default="0,2",
                        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
                        help="configurations, 0 = embedded (default 0,2)")
    parser.add_argument("--residents", type=int)
    parser.add_argument("--clerks", type=int)
    parser.add_argument("--kiosks", type=int)
    parser.add_argument("--kiosk-visits", type=int, default=3,
                        help="residents each kiosk takes a ticket for, at most (default 3)")
    parser.add_argument("--arrival-s", type=float,
                        help="arrival window (default 30; --full 150, --quick 8, --faults 70)")
    parser.add_argument("--tail-s", type=float, help="load after the window before the close")
    parser.add_argument("--faults", action="store_true",
                        help="SIGKILL a hall, restart Redis, stop the records DB for 30 s")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--no-rate-limits", action="store_true",
                        help="HALL_RATE_LIMITS=off (default: the hall's own limits)")
    parser.add_argument("--log-level", default="WARNING", help="the halls' HALL_LOG_LEVEL")
    parser.add_argument("--overlap-starts", action=argparse.BooleanOptionalAction, default=None,
                        help="start the next configuration while one is measured (rougher "
                        "figures; default: only with --quick)")
    parser.add_argument("--keep-logs", metavar="DIR", help="keep the data dirs and logs in DIR")
    parser.add_argument("--local-cluster", type=Path, default=LOCAL_CLUSTER)
    args = parser.parse_args()
    quick = args.quick
    for key, small, big in (("residents", 60, 1000), ("clerks", 8, 100), ("kiosks", 5, 100)):
        if getattr(args, key) is None:
            setattr(args, key, small if quick else big)
    if args.arrival_s is None:
        args.arrival_s = (8.0 if quick else FULL_ARRIVAL_S if args.full
                          else 70.0 if args.faults else 30.0)
    if args.tail_s is None:
        args.tail_s = 3.0 if quick else max(8.0, 0.3 * args.arrival_s)
    if args.overlap_starts is None:
        args.overlap_starts = quick
    if args.faults and args.arrival_s < 50:
        parser.error("--faults needs --arrival-s of 50 s or more (a 30 s records-DB outage)")
    if any(p < 0 for p in args.processes) or not args.processes:
        parser.error("--processes: 0 (embedded) or a number of processes")
    if args.kiosks > 100:
        parser.error("--kiosks: the catalog has 100 service points")
    with tempfile.TemporaryDirectory(prefix="hall-bench-district-") as tmp:
        workdir = Path(args.keep_logs or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        summary = uvloop.run(run_all(args, workdir))
    print(json.dumps(summary, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
