"""Scale-out: the hall on 1, 2 and 4 processes sharing Redis, against the embedded hall and
python-socketio's ``AsyncRedisManager``, all in the same run.

    .venv/bin/python bench/cluster.py [--quick] [--processes 1,2,4] [--phase-s 2]

Every configuration is started with ``deploy/local-cluster`` (its JSON line gives the URLs,
the pids and the demo password) and stopped with SIGTERM before the next one starts (or
``STOP_WAIT_S`` after it, if a hall is slow to exit: that is reported, not waited for):

* ``embedded``: ``--embedded --demo``, one process, no Redis: the baseline of the latencies;
* ``redis-N``: ``--processes N --demo`` for N = 1, 2, 4, each with its private redis-server.

The same python-socketio ``AsyncClient`` code (websocket transport, orjson, uvloop) drives each.
``--pairs`` demo clerks log in (each serving a matter no other logged-in clerk serves; the
matter comes from the clerk's own ``queues.update``) and as many app residents get identity
tokens from the demo's ``/api/dev/resident-token``. Clerk k connects to process ``k mod N`` and
its resident to process ``k+1 mod N``, so with N > 1 every event between the two crosses
processes (through Redis). Two workloads:

* **cycles**: ``ticket.take`` (resident) → ``offer.new`` (clerk) → ``offer.accept`` →
  ``session.end`` → ``wrapup.finish {outcome: "resolved"}`` → the resident's ``ticket.update``
  (state ``done``), then the next ticket. Latency is ``ticket.take`` sent → ``offer.new``
  received, with one cycle in flight (the pairs take turns); throughput is every pair cycling
  at once for ``--phase-s`` seconds.
* **relays**: each pair in a live session, the resident sends ``rtc.signal`` to its clerk,
  alternating a ~1 KB SDP offer and a ~150-byte ICE candidate (as bench/signaling.py does).
  Latency (send → clerk receives) p50/p99 with one message in flight; throughput with
  ``--window`` messages in flight (spread over the pairs) for ``--phase-s`` seconds. Every
  message must arrive (at most 10 s of silence) and be acked ``ok``; each arrival is matched
  to its send by the number it carries, and one that arrives after a later message of the same
  sender is counted (``relay_out_of_order_*``): trickle ICE needs a sender's order kept.

Server CPU is utime + stime from ``/proc/<pid>/stat`` (``SC_CLK_TCK`` ticks) of every hall
process, and separately of the cluster's redis-server, read just before and after each
throughput phase. **Efficiency counts hall CPU + Redis CPU** (Redis does real work for the hall
in that mode; the embedded hall has none): ``cycles_per_cpu_s_N`` = cycles / (hall + Redis
CPU-s), likewise ``relays_per_cpu_s_N``; ``*_per_hall_cpu_s_*`` are the hall-only figures.
``efficiency_N`` (N = 2, 4) is ops per CPU-s with N processes over the same with 1 (Redis mode,
same run), per workload; the headline ``efficiency_N`` is **the lower of the two**.
``redis_p99_added_ms`` is the one-in-flight p99 of ``ticket.take`` → ``offer.new`` with Redis
and one process minus the embedded hall's (``relay_p99_added_ms`` the same for relays).

The alternative design: 1, 2 and 4 bare ``socketio.AsyncServer(client_manager=
AsyncRedisManager(url, channel=<unique>))`` aiohttp processes (``MANAGER_SERVER`` below, one
private redis-server, an idle client on every process so each one subscribes). A client on
process 0 emits ``relay {to, data}``; process 0 does ``sio.emit("rtc.signal", data,
to=<sid of the receiver on process 1>)`` (process 0 itself when N = 1). The manager publishes
every emit to every process, which each decode it; ``manager_cpu_per_msg_us_N`` is the CPU of
all server processes + Redis per delivered message, ``manager_growth_4`` its ratio 4 over 1,
set against ``hall_relay_cpu_per_msg_us_N`` (hall + Redis per relay, owner-routed: one PUBLISH
to the one process that holds the receiver) and ``hall_relay_growth_4``.

What the hall does wrong is reported, not hidden: a refused cycle step is printed and sent
again (``refusals_*``; a step still refused after 5 tries fails the configuration, which then
appears under ``errors`` with the halls' log tails); after each configuration the halls' logs
(in a data dir of the bench's own, ``--keep-logs DIR`` keeps them) are searched for WARNING and
ERROR lines, each placed in the bench phase it was written in; and the time each hall takes to
exit after SIGTERM is reported (``hall_stop_s_*``; local-cluster kills it at 10 s).

On a 2-core machine with the bench client in the same box, throughput (ops/s) is bounded by
the client and the cores; the per-CPU-second figures are the ones that compare (the machine may
be shared: run it twice before trusting a difference under ~15%). ``--quick`` (about 25 s)
shortens every phase and starts the next cluster while the current one is measured, so its
figures are rougher. The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as aioredis
import socketio
import uvloop

ROOT = Path(__file__).resolve().parent.parent
LOCAL_CLUSTER = ROOT / "deploy" / "local-cluster"
CLUSTER_START_TIMEOUT_S = 90.0
EVENT_TIMEOUT_S = 10.0
# Demo clerks tried in this order; a clerk is used when one of its primary matters is served by
# no clerk used before it (odd numbers first: they have no secondary departments).
CLERK_CANDIDATES = [f"clerk{i:02d}" for i in (*range(1, 25, 2), *range(2, 25, 2))]
CLK_TCK = os.sysconf("SC_CLK_TCK")
RETRIES, RETRY_PAUSE_S = 5, 0.05  # a refused cycle step is reported, then sent again
STOP_WARN_S = 5.0  # a hall slower than this to exit after SIGTERM is reported
# After this long stopping a cluster, the next one starts anyway (its halls are still watched
# and how long they took is reported): a hall stuck in its shutdown then costs no bench time.
STOP_WAIT_S = 3.0
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")  # the halls' log lines

# A Chrome-like SDP offer of about 1 KB; nobody parses it, only the size matters. ``{n}``
# (the SDP session id) numbers the message, so order can be checked on arrival.
SDP_TEMPLATE = (
    "v=0\r\no=- {n} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2\r\n"
    "a=msid-semantic: WMS stream0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n"
    "c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Xy7k\r\n"
    "a=ice-pwd:4ZcD7eKq1pB8r0vYwS2mNfTg\r\na=ice-options:trickle\r\n"
    "a=fingerprint:sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:"
    "C2:43:F0:A1:58:D0:A1:2C:19:08\r\na=setup:actpass\r\na=mid:0\r\n"
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=sendrecv\r\n"
    "a=msid:stream0 audio0\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
    "a=fmtp:111 minptime=10;useinbandfec=1\r\na=ssrc:1001 cname:hall\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Xy7k\r\na=ice-pwd:4ZcD7eKq1pB8r0vYwS2mNfTg\r\n"
    "a=setup:actpass\r\na=mid:1\r\na=sendrecv\r\na=msid:stream0 video0\r\na=rtcp-mux\r\n"
    "a=rtcp-rsize\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\n"
    "a=rtpmap:102 H264/90000\r\n"
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n"
    "a=sctp-port:5000\r\n"
)
CANDIDATE_TAIL = (
    "1 udp 1677729535 203.0.113.7 50123 typ srflx raddr 192.168.1.20 rport 50123 generation 0"
)

# One bare python-socketio server process behind AsyncRedisManager, run as
# `python -c MANAGER_SERVER <port> <redis url> <channel>`; the same loop (uvloop) and JSON codec
# (orjson) as the hall, so the difference is the routing.
MANAGER_SERVER = r"""
import sys
import orjson, socketio, uvloop
from aiohttp import web

class OrjsonCodec:
    @staticmethod
    def dumps(obj, **_kw):
        return orjson.dumps(obj).decode()
    @staticmethod
    def loads(text, **_kw):
        return orjson.loads(text)

port, url, channel = int(sys.argv[1]), sys.argv[2], sys.argv[3]
sio = socketio.AsyncServer(
    async_mode="aiohttp", json=OrjsonCodec,
    client_manager=socketio.AsyncRedisManager(url, channel=channel),
)
app = web.Application()
sio.attach(app)

@sio.on("whoami")
async def whoami(sid, data):
    return {"ok": True, "sid": sid}

@sio.on("relay")
async def relay(sid, data):
    await sio.emit("rtc.signal", data["data"], to=data["to"])
    return {"ok": True}

async def main():
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"manager server listening on {port}", flush=True)
    while True:
        await __import__("asyncio").sleep(3600)

uvloop.run(main())
"""


class OrjsonCodec:
    """orjson behind the ``json`` module interface python-socketio expects (dumps → str)."""

    @staticmethod
    def dumps(obj: Any, **_kwargs: Any) -> str:
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(text: str | bytes, **_kwargs: Any) -> Any:
        return orjson.loads(text)


class BenchError(RuntimeError):
    """The system under test misbehaved (a refusal, a lost or late event)."""


# -- processes and CPU --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    # Output goes to a file, never a pipe: a pipe nobody drains would block a chatty server.
    with log_path.open("wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class CpuMeter:
    """CPU seconds used by a set of server processes and (separately) one Redis, per phase."""

    pids: list[int]
    redis_pid: int | None
    start: tuple[float, float] = (0.0, 0.0)

    def read(self) -> tuple[float, float]:
        servers = sum(cpu_s(pid) for pid in self.pids)
        return servers, (cpu_s(self.redis_pid) if self.redis_pid else 0.0)

    def begin(self) -> None:
        self.start = self.read()

    def end(self) -> tuple[float, float]:
        servers, redis_cpu = self.read()
        return servers - self.start[0], redis_cpu - self.start[1]


@dataclass
class ClusterInfo:
    halls: list[str]
    pids: list[int]
    redis_pid: int | None
    password: str
    data_dir: Path
    raw: dict[str, Any]
    # Seconds from SIGTERM until each hall process exited (filled in by the stop).
    exit_s: dict[int, float] = field(default_factory=dict)

    def logs(self) -> list[Path]:
        return sorted(self.data_dir.glob("hall-*.log"))

    def log_tails(self, lines: int = 15) -> str:
        parts = []
        for path in self.logs():
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError as exc:
                text = [f"(cannot read: {exc})"]
            parts.append(f"--- {path} (last {lines} lines)\n" + "\n".join(text))
        return "\n".join(parts)

    def log_problems(self) -> list[str]:
        """WARNING / ERROR / CRITICAL lines of every hall log, named by the log; a traceback
        is given by its exception line, after the time stamp of the line it follows."""
        found = []
        for path in self.logs():
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            stamp = ""
            for i, line in enumerate(lines):
                match = STAMP.match(line)
                if match:
                    stamp = match[0]
                if any(w in line for w in (" WARNING ", " ERROR ", " CRITICAL ")):
                    found.append(f"{path.name}: {line.strip()}")
                elif line.startswith("Traceback"):
                    # The exception is the first line after it that is not indented.
                    end = next((lines[j] for j in range(i + 1, len(lines))
                                if lines[j] and not lines[j][0].isspace()), "?")
                    found.append(f"{path.name}: {stamp} traceback: {end.strip()}")
        return found


def phase_at(line: str, walls: Sequence[tuple[float, str]]) -> str:
    """The bench phase during which a hall log line (``2026-01-31 12:00:00,123 LEVEL ...``,
    after ``hall-N.log: ``) was written, from the phases' wall-clock ends."""
    match = STAMP.search(line)
    if match is None:
        return "?"
    stamp = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S")) + int(match[2]) / 1000
    for end, phase in walls:
        if stamp <= end:
            return f"during {phase}"
    return "after the stop"


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, exited but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class LocalCluster:
    """``deploy/local-cluster ARGS`` in the foreground: :meth:`start` returns its JSON line,
    :meth:`stop` sends it SIGTERM (it stops its halls: SIGTERM, SIGKILL after 10 s)."""

    def __init__(self, script: Path, args: list[str], log_level: str, log_path: Path) -> None:
        self.script = script
        self.args = args
        self.log_path = log_path  # the launcher's own stderr
        self.env = dict(os.environ)
        # Per-event INFO lines would measure the log handler, not the hall (bench/signaling.py).
        self.env["HALL_LOG_LEVEL"] = log_level
        # A bench resident cycles tickets and relays far beyond any real client's budget
        # (signaling/ratelimit.py): the bench measures capacity.
        self.env["HALL_RATE_LIMITS"] = "off"
        self.proc: asyncio.subprocess.Process | None = None
        self.info: ClusterInfo | None = None
        self.started_s = 0.0
        self._drain: asyncio.Task[bytes] | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> ClusterInfo:
        t0 = time.perf_counter()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as stderr:
            self.proc = proc = await asyncio.create_subprocess_exec(
                sys.executable, str(self.script), *self.args,
                stdout=asyncio.subprocess.PIPE, stderr=stderr, env=self.env, cwd=ROOT,
                start_new_session=True,  # a Ctrl-C of the bench reaches it only through stop()
            )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), CLUSTER_START_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if not line.strip():
            await self.stop()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise BenchError(f"local-cluster {' '.join(self.args)} gave no JSON line:\n{tail}")
        info = json.loads(line)
        # Nothing more is expected on stdout, but a pipe nobody reads could block it.
        self._drain = asyncio.create_task(proc.stdout.read())
        self.info = ClusterInfo(
            halls=list(info["halls"]),
            pids=[int(p) for p in info["pids"]],
            redis_pid=int(info["redis_pid"]) if info.get("redis_pid") else None,
            password=str(info["demo_password"]),
            data_dir=Path(info["data_dir"]),
            raw=info,
        )
        self.started_s = time.perf_counter() - t0
        return self.info

    def begin_stop(self) -> asyncio.Task[None]:
        """SIGTERM now; the task ends once the launcher has stopped (idempotent)."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._stop())
        return self._stopping

    async def stop(self) -> None:
        await self.begin_stop()

    async def _stop(self) -> None:
        """Records how long each hall took to exit in ``info.exit_s``."""
        if self.proc is not None:
            exits = await _stop(self.proc, self.info.pids if self.info else [])
            if self.info is not None:
                self.info.exit_s = exits
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(BaseException):
                await self._drain
            self._drain = None


async def _stop(proc: asyncio.subprocess.Process, pids: Sequence[int]) -> dict[int, float]:
    """SIGTERM the launcher (it stops its halls: SIGTERM, SIGKILL after 10 s); returns how
    long each hall took to exit."""
    exits: dict[int, float] = {}
    if proc.returncode is not None:
        return exits
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    waiting = asyncio.ensure_future(proc.wait())
    deadline = sent + 30
    while not waiting.done() and time.perf_counter() < deadline:
        for pid in pids:
            if pid not in exits and not alive(pid):
                exits[pid] = time.perf_counter() - sent
        await asyncio.wait([waiting], timeout=0.05)
    if not waiting.done():
        proc.kill()
    await waiting
    for pid in pids:
        exits.setdefault(pid, time.perf_counter() - sent)
    return exits


class RedisProcess:
    """A private redis-server without persistence on a free port (for the manager part);
    ``persistent``: an append-only file fsynced on every write, so a restart (``stop`` then
    ``start``, same port) keeps the data (bench/district.py --faults)."""

    def __init__(self, workdir: Path, *, persistent: bool = False) -> None:
        self.persistent = persistent
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("error: redis-server is not on PATH")
        self.process = spawn(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
               else ["--appendonly", "no"]), "--dir", str(self.workdir)],
            self.workdir / "redis.log",
        )
        client = aioredis.Redis.from_url(self.url)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    await client.ping()
                    return
                except (OSError, aioredis.ConnectionError):
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise BenchError("private redis-server did not start") from None
                    await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- clients ------------------------------------------------------------------------------------


class Peer:
    """One python-socketio client. ``rtc.signal`` goes to :attr:`on_signal`; every other
    server event is kept per name until :meth:`expect` takes it."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False, json=OrjsonCodec)
        self.inbox: defaultdict[str, deque[Any]] = defaultdict(deque)
        self.arrived = asyncio.Event()
        self.on_signal: Callable[[Any], None] = lambda _data: None
        self.dropped = False
        self.sio.on("rtc.signal", self._signal)
        self.sio.on("*", self._any)
        self.sio.on("disconnect", self._disconnect)

    def _signal(self, data: Any) -> None:
        self.on_signal(data)

    def _any(self, event: str, data: Any = None) -> None:
        self.inbox[event].append(data)
        self.arrived.set()

    def _disconnect(self, *_args: Any) -> None:
        self.dropped = True
        self.arrived.set()

    async def connect(self, auth: dict[str, Any]) -> None:
        await self.sio.connect(self.url, auth=auth, transports=["websocket"], wait_timeout=10)

    def forget(self) -> None:
        """Drop every kept event (the previous cycle's leftovers)."""
        self.inbox.clear()

    async def expect(self, event: str, match: Callable[[Any], bool] | None = None) -> Any:
        """The next ``event`` (matching ``match``); earlier non-matching ones are dropped."""
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while True:
            queue = self.inbox[event]
            while queue:
                data = queue.popleft()
                if match is None or match(data):
                    return data
            if self.dropped:
                raise BenchError(f"{self.name} ({self.url}) was disconnected")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = sorted(k for k, v in self.inbox.items() if v)
                raise BenchError(
                    f"{self.name} ({self.url}): no {event!r} within {EVENT_TIMEOUT_S} s "
                    f"(kept events: {seen})"
                )
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)

    async def ask(self, event: str, payload: dict[str, Any]) -> Any:
        """Emit with an ack and return the ack, whatever it says."""
        try:
            return await self.sio.call(event, payload, timeout=EVENT_TIMEOUT_S)
        except socketio.exceptions.TimeoutError:
            raise BenchError(f"{self.name} ({self.url}): no ack to {event}") from None

    async def call(self, event: str, payload: dict[str, Any],
                   notes: list[str] | None = None) -> dict[str, Any]:
        """Emit with an ack that must be ``ok``. With ``notes``, a refusal is written there and
        the event sent again (up to ``RETRIES`` times, ``RETRY_PAUSE_S`` apart), so that a
        transient refusal is reported without losing the configuration's figures."""
        started = time.perf_counter()
        for attempt in range(RETRIES + 1 if notes is not None else 1):
            ack = await self.ask(event, payload)
            if isinstance(ack, dict) and ack.get("ok"):
                if attempt:
                    assert notes is not None
                    notes.append(f"  ... {event} ok on attempt {attempt + 1}, "
                                 f"{(time.perf_counter() - started) * 1000:.0f} ms later")
                return ack
            refusal = f"{self.name} ({self.url}): {event} {payload} answered {ack}"
            if notes is None:
                raise BenchError(refusal)
            notes.append(refusal)
            await asyncio.sleep(RETRY_PAUSE_S)
        raise BenchError(f"{refusal} ({RETRIES + 1} attempts)")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()


async def post_json(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with http.post(url, json=body) as response:
        data = await response.json(content_type=None)
        if response.status != 200:
            raise BenchError(f"POST {url}: HTTP {response.status}: {data}")
        return data


@dataclass
class Pair:
    """A demo clerk and an app resident, on different processes when there are several."""

    clerk: Peer
    resident: Peer
    matter_id: str
    notes: list[str]  # refusals seen (and retried) in this configuration
    session_id: str | None = None


async def make_pairs(info: ClusterInfo, count: int) -> list[Pair]:
    """``count`` clerks, each with a matter of its own, and as many residents, connected."""
    halls, n = info.halls, len(info.halls)
    clerks: list[Peer] = []
    matters: list[str] = []
    served: set[str] = set()  # every matter some connected clerk serves
    tag = secrets.token_hex(3)
    async with aiohttp.ClientSession() as http:
        for clerk_id in CLERK_CANDIDATES:
            if len(clerks) == count:
                break
            url = halls[len(clerks) % n]
            login = await post_json(
                http, f"{url}/api/auth/login", {"username": clerk_id, "password": info.password}
            )
            # Named after its process as local-cluster numbers them (hall-1.log...).
            clerk = Peer(f"{clerk_id}@hall-{len(clerks) % n + 1}", url)
            await clerk.connect({"token": login["token"]})
            await clerk.expect("welcome")
            queues = (await clerk.expect("queues.update"))["queues"]
            mine = [q["matter_id"] for q in queues if q["primary"]]
            choice = next((m for m in mine if m not in served), None)
            everything = {q["matter_id"] for q in queues}
            if choice is None or everything & set(matters):
                # Its matters overlap with a clerk already used: tickets could go either way.
                await clerk.close()
                continue
            clerks.append(clerk)
            matters.append(choice)
            served |= everything
        if len(clerks) < count:
            raise BenchError(f"only {len(clerks)} demo clerks with a matter of their own")
        residents = []
        for k in range(count):
            url = halls[(k + 1) % n]
            minted = await post_json(
                http,
                f"{url}/api/dev/resident-token",
                {"resident_id": f"bench-{tag}-{k}", "name": f"测试居民{k}"},
            )
            residents.append(Peer(f"resident{k}@hall-{(k + 1) % n + 1}", url))
            await residents[-1].connect({"id_token": minted["id_token"]})
            await residents[-1].expect("welcome")
    notes: list[str] = []
    return [Pair(c, r, m, notes) for c, r, m in zip(clerks, residents, matters, strict=True)]


async def cycle(pair: Pair) -> float:
    """One ticket from take to done; returns seconds from ``ticket.take`` to ``offer.new``."""
    clerk, resident = pair.clerk, pair.resident
    clerk.forget()
    resident.forget()
    notes = pair.notes
    started = time.perf_counter()
    taken = await resident.call(
        "ticket.take", {"matter_id": pair.matter_id, "when_unstaffed": "wait"}, notes
    )
    ticket_id = taken["ticket"]["id"]
    await clerk.expect("offer.new", lambda d: d["ticket_id"] == ticket_id)
    latency = time.perf_counter() - started
    accepted = await clerk.call("offer.accept", {"ticket_id": ticket_id}, notes)
    await clerk.call("session.end", {"session_id": accepted["session"]["id"]}, notes)
    await clerk.call("wrapup.finish", {"outcome": "resolved"}, notes)
    await resident.expect(
        "ticket.update", lambda d: d["ticket"]["id"] == ticket_id and d["ticket"]["state"] == "done"
    )
    return latency


async def open_session(pair: Pair) -> None:
    pair.clerk.forget()
    pair.resident.forget()
    taken = await pair.resident.call(
        "ticket.take", {"matter_id": pair.matter_id, "when_unstaffed": "wait"}, pair.notes
    )
    ticket_id = taken["ticket"]["id"]
    await pair.clerk.expect("offer.new", lambda d: d["ticket_id"] == ticket_id)
    accepted = await pair.clerk.call("offer.accept", {"ticket_id": ticket_id}, pair.notes)
    pair.session_id = str(accepted["session"]["id"])
    await pair.resident.expect("session.started")


def message(session_id: str, n: int) -> dict[str, Any]:
    """Message ``n``: an SDP offer when even, an ICE candidate when odd; ``n`` numbers it."""
    if n % 2 == 0:
        return {
            "session_id": session_id,
            "description": {"type": "offer", "sdp": SDP_TEMPLATE.format(n=n)},
        }
    return {
        "session_id": session_id,
        "candidate": {
            "candidate": f"candidate:{n} {CANDIDATE_TAIL}",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": "Xy7k",
        },
    }


def message_number(data: dict[str, Any]) -> int:
    description = data.get("description")
    if description is not None:
        return int(description["sdp"].split(" ", 2)[1])
    text: str = data["candidate"]["candidate"]
    return int(text[len("candidate:") : text.index(" ")])


@dataclass
class Relay:
    """Messages from one sender to one receiver; each arrival is matched to its send by the
    number it carries. An arrival numbered below one already received was overtaken: trickle
    ICE needs a sender's messages in order (a candidate must not pass its offer), so those are
    counted (``out_of_order``) and reported, with the first few as (expected, got)."""

    name: str
    send: Callable[[dict[str, Any], Callable[[Any], None]], Awaitable[None]]
    make: Callable[[int], dict[str, Any]]
    sent_at: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    acked: int = 0
    highest: int = -1
    out_of_order: int = 0
    examples: list[tuple[int, int]] = field(default_factory=list)
    refused: list[Any] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def on_signal(self, data: Any) -> None:
        now = time.perf_counter()
        n = message_number(data)
        sent_at = self.sent_at.pop(n, None)
        if sent_at is None:
            self.refused.append(f"message {n} arrived twice or was never sent")
        else:
            self.latencies.append(now - sent_at)
        if n < self.highest:
            self.out_of_order += 1
            if len(self.examples) < 5:
                self.examples.append((self.received, n))
        self.highest = max(self.highest, n)
        self.received += 1
        self.arrived.set()

    def _on_ack(self, ack: Any = None) -> None:
        self.acked += 1
        if not (isinstance(ack, dict) and ack.get("ok")):
            self.refused.append(ack)
        self.arrived.set()

    async def run(self, *, window: int, count: int | None = None, until: float = math.inf) -> int:
        """Send ``count`` messages (or until ``until``), at most ``window`` in flight; wait
        until every one has arrived and been acked. Returns how many were sent."""
        first = self.sent
        while (count is None or self.sent - first < count) and time.perf_counter() < until:
            while self.sent - self.received >= window:
                await self._wait("arrive")
            payload = self.make(self.sent)
            self.sent_at[self.sent] = time.perf_counter()
            self.sent += 1
            await self.send(payload, self._on_ack)
        while self.received < self.sent or self.acked < self.sent:
            await self._wait("arrive or be acked")
        if self.refused:
            raise BenchError(f"{self.name}: refused: {self.refused[:3]}")
        return self.sent - first

    async def _wait(self, what: str) -> None:
        self.arrived.clear()
        try:
            await asyncio.wait_for(self.arrived.wait(), EVENT_TIMEOUT_S)
        except TimeoutError:
            raise BenchError(
                f"{self.name}: nothing happened for {EVENT_TIMEOUT_S} s waiting for messages to "
                f"{what}: sent {self.sent}, received {self.received}, acked {self.acked}"
            ) from None


def hall_relay(pair: Pair) -> Relay:
    resident, session_id = pair.resident, pair.session_id
    assert session_id is not None

    async def send(payload: dict[str, Any], on_ack: Callable[[Any], None]) -> None:
        await resident.sio.emit("rtc.signal", payload, callback=on_ack)

    relay = Relay(f"{resident.name}->{pair.clerk.name}", send, lambda n: message(session_id, n))
    pair.clerk.on_signal = relay.on_signal
    return relay


async def latency_round(relays: Sequence[Relay], samples: int) -> list[float]:
    """``samples`` messages one at a time, the relays taking turns."""
    for relay in relays:
        relay.latencies.clear()
    for i in range(samples):
        await relays[i % len(relays)].run(window=1, count=1)
    return [x for relay in relays for x in relay.latencies]


async def throughput_round(relays: Sequence[Relay], window: int, seconds: float) -> tuple[int,
                                                                                          float]:
    """Every relay at once, ``window`` messages in flight in all; (delivered, elapsed s)."""
    per = max(1, window // len(relays))
    started = time.perf_counter()
    sent = await asyncio.gather(*(r.run(window=per, until=started + seconds) for r in relays))
    return sum(sent), time.perf_counter() - started


# -- measurements -------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Phase:
    """One throughput phase: operations, wall seconds, server CPU seconds."""

    ops: int
    elapsed: float
    hall_cpu: float
    redis_cpu: float
    client_cpu: float  # bench-process CPU seconds per wall second

    @property
    def per_s(self) -> float:
        return self.ops / self.elapsed

    @property
    def per_cpu_s(self) -> float:
        return self.ops / max(self.hall_cpu + self.redis_cpu, 1e-9)

    @property
    def per_hall_cpu_s(self) -> float:
        return self.ops / max(self.hall_cpu, 1e-9)

    @property
    def cpu_us_per_op(self) -> float:
        return (self.hall_cpu + self.redis_cpu) / max(self.ops, 1) * 1e6


async def measured(meter: CpuMeter, work: Callable[[], Awaitable[tuple[int, float]]]) -> Phase:
    meter.begin()
    client0 = time.process_time()
    ops, elapsed = await work()
    hall_cpu, redis_cpu = meter.end()
    client = (time.process_time() - client0) / elapsed
    return Phase(ops, elapsed, hall_cpu, redis_cpu, client)


@dataclass
class ConfigResult:
    name: str
    processes: int
    cycle_lat: list[float]
    cycles: Phase
    relay_lat: list[float]
    relays: Phase
    relayed: int  # rtc.signal messages in all (warm-up, latency and throughput)
    out_of_order: int  # of those, overtaken by a later message of the same sender
    examples: list[tuple[str, int, int]]  # (relay, arrival index, message number)
    refusals: list[str]  # cycle steps refused, then retried
    info: ClusterInfo
    walls: list[tuple[float, str]]  # (wall clock at its end, phase): to place log lines
    exits: list[float] = field(default_factory=list)  # each hall's exit after SIGTERM, s
    log_problems: list[str] = field(default_factory=list)

    @property
    def stop_s(self) -> float:
        return max(self.exits, default=0.0)

    def finish(self) -> None:
        """Once the cluster has stopped: how long its halls took, what their logs say."""
        self.exits = [round(self.info.exit_s.get(pid, math.nan), 1) for pid in self.info.pids]
        self.log_problems = [f"[{phase_at(line, self.walls)}] {line}"
                             for line in self.info.log_problems()]


async def measure_config(name: str, cluster: LocalCluster, args: argparse.Namespace
                         ) -> ConfigResult:
    """The workload on a started cluster, then its stop."""
    t0 = time.perf_counter()
    marks: list[tuple[str, float]] = []
    walls: list[tuple[float, str]] = []  # (wall clock at its end, phase): to place log lines

    def mark(what: str) -> None:
        marks.append((what, time.perf_counter()))
        walls.append((time.time(), what))

    info = cluster.info
    assert info is not None
    meter = CpuMeter(info.pids, info.redis_pid)
    pairs: list[Pair] = []
    try:
        pairs = await make_pairs(info, args.pairs)
        mark("clients")
        await asyncio.gather(*(cycle(p) for p in pairs))  # warm-up
        cycle_lat = [await cycle(pairs[i % len(pairs)]) for i in range(args.cycle_samples)]

        async def cycling() -> tuple[int, float]:
            begun = time.perf_counter()
            until = begun + args.phase_s

            async def loop(pair: Pair) -> int:
                done = 0
                while time.perf_counter() < until:
                    await cycle(pair)
                    done += 1
                return done

            done = await asyncio.gather(*(loop(p) for p in pairs))
            return sum(done), time.perf_counter() - begun

        mark("cycle latency")
        cycles = await measured(meter, cycling)
        mark("cycles")
        await asyncio.gather(*(open_session(p) for p in pairs))
        relays = [hall_relay(p) for p in pairs]
        await throughput_round(relays, args.window, 0.2)  # warm-up
        relay_lat = await latency_round(relays, args.relay_samples)
        relay_phase = await measured(
            meter, lambda: throughput_round(relays, args.window, args.phase_s)
        )
        mark("relays")
    except (BenchError, OSError, socketio.exceptions.SocketIOError) as exc:
        raise BenchError(f"{name}: {exc}\n{info.log_tails()}") from exc
    finally:
        await asyncio.gather(*(p.close() for pair in pairs for p in (pair.clerk, pair.resident)))
        mark("close")
        stopping = cluster.begin_stop()
        await asyncio.wait({stopping}, timeout=STOP_WAIT_S)
        mark("stop" if stopping.done() else "stop (still stopping: going on)")
    result = ConfigResult(
        name, len(info.halls), cycle_lat, cycles, relay_lat, relay_phase,
        relayed=sum(r.sent for r in relays),
        out_of_order=sum(r.out_of_order for r in relays),
        examples=[(r.name, i, n) for r in relays for i, n in r.examples][:5],
        refusals=pairs[0].notes,
        info=info,
        walls=walls,
    )
    steps, last = [f"start {cluster.started_s:.1f}"], t0
    for what, at in marks:
        steps.append(f"{what} {at - last:.1f}")
        last = at
    print(f"  {name:9} measured in {last - t0:4.1f} s ({', '.join(steps)})", flush=True)
    return result


async def measure_configs(configs: Sequence[tuple[str, list[str]]], args: argparse.Namespace,
                          results: dict[str, ConfigResult], errors: dict[str, str]
                          ) -> list[LocalCluster]:
    """Each configuration on its own cluster, measured one after the other and stopped right
    after. By default a cluster starts once the previous one is stopped, so nothing else of
    the bench's runs while one is measured. With ``--overlap-starts`` (the default of
    ``--quick``) the next cluster starts while the current one is measured: start-up is
    CPU-bound, so that run's figures are rougher (latencies and ops/s more than CPU per op).
    Returns the clusters, some perhaps still stopping: :func:`join_stops` waits for them."""
    clusters = {
        # A data dir of the bench's own: the halls' logs outlive the cluster, to be read after.
        name: LocalCluster(args.local_cluster, [*cargs, "--data-dir", str(args.workdir / name)],
                           args.log_level, args.workdir / f"{name}-local-cluster.log")
        for name, cargs in configs
    }
    names = list(clusters)
    starting: dict[str, asyncio.Task[ClusterInfo]] = {}
    try:
        for i, name in enumerate(names):
            cluster = clusters[name]
            try:
                if name in starting:
                    await starting[name]
                else:
                    await cluster.start()
                if args.overlap_starts and i + 1 < len(names):
                    following = names[i + 1]
                    starting[following] = asyncio.create_task(clusters[following].start())
                results[name] = await measure_config(name, cluster, args)
            except BenchError as exc:
                errors[name] = str(exc)
                print(f"  {name}: FAILED: {exc}", flush=True)
    finally:
        for task in starting.values():
            task.cancel()
        await asyncio.gather(*starting.values(), return_exceptions=True)
        for cluster in clusters.values():
            cluster.begin_stop()  # a no-op for those already stopping
    return list(clusters.values())


async def join_stops(clusters: Sequence[LocalCluster], results: dict[str, ConfigResult]) -> None:
    await asyncio.gather(*(c.stop() for c in clusters), return_exceptions=True)
    for result in results.values():
        result.finish()


@dataclass
class ManagerResult:
    processes: int
    phase: Phase
    server_cpu_us: float  # server processes only, per message
    out_of_order: int


class ManagerGroup:
    """``n`` bare AsyncRedisManager servers on one channel of their own (spawned at once)."""

    def __init__(self, n: int, redis: RedisProcess, workdir: Path) -> None:
        self.n = n
        self.channel = f"bench-{secrets.token_hex(4)}"
        self.ports = [free_port() for _ in range(n)]
        self.logs = [workdir / f"manager-{n}-{i}.log" for i in range(n)]
        self.procs = [
            spawn([sys.executable, "-c", MANAGER_SERVER, str(port), redis.url, self.channel], log)
            for port, log in zip(self.ports, self.logs, strict=True)
        ]

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    async def ready(self) -> None:
        deadline = time.monotonic() + 30
        for i, (proc, log) in enumerate(zip(self.procs, self.logs, strict=True)):
            while "listening" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"manager server {i} of {self.n} did not start:\n"
                                     f"{log.read_text(errors='replace')[-2000:]}")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    proc.kill()
                await asyncio.sleep(0.02)


async def measure_manager(group: ManagerGroup, redis: RedisProcess, args: argparse.Namespace
                          ) -> ManagerResult:
    """AsyncRedisManager on ``n`` processes: process 0 emits to a client of process 1."""
    n, peers = group.n, []
    try:
        await group.ready()
        # A client on every process (as in a real deployment), so every one subscribes.
        peers = [Peer(f"m{i}", url) for i, url in enumerate(group.urls)]
        sender = Peer("sender", group.urls[0])
        peers.append(sender)
        await asyncio.gather(*(p.connect({}) for p in peers))
        receiver = peers[1 % n]
        receiver_sid = (await receiver.call("whoami", {}))["sid"]
        client = aioredis.Redis.from_url(redis.url)
        try:
            deadline = time.monotonic() + 10
            while (await client.pubsub_numsub(group.channel))[0][1] < n:
                if time.monotonic() > deadline:
                    raise BenchError("not every manager process subscribed")
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

        async def send(payload: dict[str, Any], on_ack: Callable[[Any], None]) -> None:
            await sender.sio.emit(
                "relay", {"to": receiver_sid, "data": payload}, callback=on_ack
            )

        relay = Relay(f"manager-{n}", send, lambda k: message("s", k))
        receiver.on_signal = relay.on_signal
        await relay.run(window=args.window, count=200)  # warm-up
        meter = CpuMeter([p.pid for p in group.procs], redis.pid)
        phase = await measured(meter, lambda: throughput_round([relay], args.window,
                                                               args.manager_phase_s))
    finally:
        await asyncio.gather(*(p.close() for p in peers))
        await group.stop()
    return ManagerResult(n, phase, phase.hall_cpu / max(phase.ops, 1) * 1e6, relay.out_of_order)


# -- main ---------------------------------------------------------------------------------------


def ms(values: Sequence[float], q: float) -> float:
    return pct(values, q) * 1000


def print_table(results: Sequence[ConfigResult]) -> None:
    head = (f"{'config':9} {'procs':>5} | {'cycles/s':>8} {'/CPU-s':>7} {'/hall-s':>7} "
            f"{'p50 ms':>7} {'p99 ms':>7} | {'relays/s':>8} {'/CPU-s':>7} {'/hall-s':>7} "
            f"{'p50 ms':>7} {'p99 ms':>7} | {'hall CPU':>8} {'redis CPU':>9} {'client':>6}")
    print(head)
    print("-" * len(head))
    for r in results:
        c, s = r.cycles, r.relays
        hall_cpu = (c.hall_cpu + s.hall_cpu) / (c.elapsed + s.elapsed)
        redis_cpu = (c.redis_cpu + s.redis_cpu) / (c.elapsed + s.elapsed)
        client = max(c.client_cpu, s.client_cpu)
        print(f"{r.name:9} {r.processes:>5} | {c.per_s:8.1f} {c.per_cpu_s:7.1f} "
              f"{c.per_hall_cpu_s:7.1f} {ms(r.cycle_lat, .5):7.2f} {ms(r.cycle_lat, .99):7.2f} | "
              f"{s.per_s:8.0f} {s.per_cpu_s:7.0f} {s.per_hall_cpu_s:7.0f} "
              f"{ms(r.relay_lat, .5):7.2f} {ms(r.relay_lat, .99):7.2f} | "
              f"{hall_cpu:7.0%}  {redis_cpu:8.0%}  {client:5.0%}")
    print("(CPU columns: cores busy during the throughput phases; /CPU-s counts hall + Redis)")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    if not args.local_cluster.exists():
        raise SystemExit(f"error: {args.local_cluster} is missing")
    configs: list[tuple[str, list[str]]] = [("embedded", ["--embedded", "--demo"])]
    configs += [(f"redis-{n}", ["--processes", str(n), "--demo"]) for n in args.processes]
    print(f"hall: {args.pairs} clerk/resident pairs, throughput phases of {args.phase_s} s, "
          f"relay window {args.window}", flush=True)
    results: dict[str, ConfigResult] = {}
    errors: dict[str, str] = {}
    manager: dict[int, ManagerResult] = {}
    redis: RedisProcess | None = None
    groups: list[ManagerGroup] = []
    clusters: list[LocalCluster] = []
    try:
        if not args.skip_manager:
            tmp = args.workdir / "manager"
            tmp.mkdir(parents=True, exist_ok=True)
            redis = RedisProcess(tmp)
            await redis.start()
            if args.overlap_starts:  # they sit idle (subscribed, no traffic) until measured
                groups = [ManagerGroup(n, redis, tmp) for n in args.processes]
        clusters = await measure_configs(configs, args, results, errors)
        if redis is not None:
            # Every group starts at once (each on its own channel: an idle group gets nothing).
            groups = groups or [ManagerGroup(n, redis, tmp) for n in args.processes]
            for group in groups:
                t0 = time.perf_counter()
                try:
                    manager[group.n] = await measure_manager(group, redis, args)
                    print(f"  manager-{group.n} measured in {time.perf_counter() - t0:4.1f} s",
                          flush=True)
                except BenchError as exc:
                    errors[f"manager-{group.n}"] = str(exc)
                    print(f"  manager-{group.n}: FAILED: {exc}", flush=True)
    finally:
        await asyncio.gather(*(g.stop() for g in groups))
        if redis is not None:
            redis.stop()
        await join_stops(clusters, results)

    print()
    print_table(list(results.values()))
    summary: dict[str, Any] = {}

    def get(name: str) -> ConfigResult | None:
        return results.get(name)

    base = get("redis-1")
    anomalies: dict[str, list[str]] = {}
    for name, r in results.items():
        key = name.removeprefix("redis-")
        summary[f"cycles_per_s_{key}"] = round(r.cycles.per_s, 1)
        summary[f"cycles_per_cpu_s_{key}"] = round(r.cycles.per_cpu_s, 1)
        summary[f"cycles_per_hall_cpu_s_{key}"] = round(r.cycles.per_hall_cpu_s, 1)
        summary[f"cycle_p50_ms_{key}"] = round(ms(r.cycle_lat, .5), 3)
        summary[f"cycle_p99_ms_{key}"] = round(ms(r.cycle_lat, .99), 3)
        summary[f"relays_per_s_{key}"] = round(r.relays.per_s)
        summary[f"relays_per_cpu_s_{key}"] = round(r.relays.per_cpu_s)
        summary[f"relays_per_hall_cpu_s_{key}"] = round(r.relays.per_hall_cpu_s)
        summary[f"relay_p50_ms_{key}"] = round(ms(r.relay_lat, .5), 3)
        summary[f"relay_p99_ms_{key}"] = round(ms(r.relay_lat, .99), 3)
        summary[f"relay_out_of_order_{key}"] = r.out_of_order
        summary[f"relay_messages_{key}"] = r.relayed
        if r.out_of_order:
            print(f"ANOMALY {name}: {r.out_of_order} of {r.relayed} rtc.signal messages arrived "
                  f"after a later message of the same sender; first (relay, arrival index, "
                  f"message number): {r.examples}")
        refused = [n for n in r.refusals if not n.startswith("  ...")]
        summary[f"refusals_{key}"] = len(refused)
        if r.refusals:
            print(f"ANOMALY {name}: {len(refused)} cycle steps refused (then sent again):")
            for line in r.refusals[:6]:
                print(f"    {line}")
            anomalies[f"{name} refusals"] = r.refusals[:6]
        summary[f"hall_stop_s_{key}"] = round(r.stop_s, 1)
        if r.stop_s > STOP_WARN_S:
            print(f"ANOMALY {name}: a hall took {r.stop_s:.1f} s to exit after SIGTERM "
                  f"(local-cluster sends SIGKILL at 10 s); exit seconds by hall: {r.exits}")
            anomalies[f"{name} stop"] = [f"hall exit seconds after SIGTERM: {r.exits}"]
        summary[f"hall_log_problems_{key}"] = len(r.log_problems)
        if r.log_problems:
            print(f"ANOMALY {name}: {len(r.log_problems)} WARNING/ERROR lines in the hall logs, "
                  f"first: " + " | ".join(r.log_problems[:3]))
            anomalies[name] = r.log_problems[:5]
        summary[f"hall_relay_cpu_per_msg_us_{key}"] = round(r.relays.cpu_us_per_op, 1)
        summary[f"redis_cpu_share_{key}"] = round(
            (r.cycles.redis_cpu + r.relays.redis_cpu)
            / max(r.cycles.hall_cpu + r.relays.hall_cpu + r.cycles.redis_cpu
                  + r.relays.redis_cpu, 1e-9), 3)
    print()
    for n in args.processes:
        scaled = get(f"redis-{n}")
        if n == 1 or base is None or scaled is None:
            continue
        eff_c = scaled.cycles.per_cpu_s / base.cycles.per_cpu_s
        eff_r = scaled.relays.per_cpu_s / base.relays.per_cpu_s
        eff_c_hall = scaled.cycles.per_hall_cpu_s / base.cycles.per_hall_cpu_s
        eff_r_hall = scaled.relays.per_hall_cpu_s / base.relays.per_hall_cpu_s
        summary[f"efficiency_{n}_cycles"] = round(eff_c, 3)
        summary[f"efficiency_{n}_relays"] = round(eff_r, 3)
        summary[f"efficiency_{n}_cycles_hall_only"] = round(eff_c_hall, 3)
        summary[f"efficiency_{n}_relays_hall_only"] = round(eff_r_hall, 3)
        summary[f"efficiency_{n}"] = round(min(eff_c, eff_r), 3)
        print(f"efficiency {n} processes vs 1 (ops per CPU-s, hall + Redis): cycles {eff_c:.2f}, "
              f"relays {eff_r:.2f} -> headline (the lower) {min(eff_c, eff_r):.2f}; "
              f"hall CPU only: cycles {eff_c_hall:.2f}, relays {eff_r_hall:.2f}")
    embedded = get("embedded")
    if base is not None and embedded is not None:
        added = ms(base.cycle_lat, .99) - ms(embedded.cycle_lat, .99)
        added_relay = ms(base.relay_lat, .99) - ms(embedded.relay_lat, .99)
        added_p50 = ms(base.cycle_lat, .5) - ms(embedded.cycle_lat, .5)
        added_relay_p50 = ms(base.relay_lat, .5) - ms(embedded.relay_lat, .5)
        summary["redis_p99_added_ms"] = round(added, 3)
        summary["relay_p99_added_ms"] = round(added_relay, 3)
        summary["redis_p50_added_ms"] = round(added_p50, 3)
        summary["relay_p50_added_ms"] = round(added_relay_p50, 3)
        print(f"p99 added by Redis (1 process vs embedded): ticket.take->offer.new "
              f"{added:+.2f} ms (headline), rtc.signal {added_relay:+.2f} ms; p50 added: "
              f"{added_p50:+.2f} ms and {added_relay_p50:+.2f} ms")

    if manager:
        print()
        print("AsyncRedisManager (every emit published to every process) vs the hall's "
              "owner-routed relay, CPU per delivered message (servers + Redis):")
        print(f"{'procs':>5} {'msgs/s':>8} {'manager µs':>11} {'servers-only':>12} "
              f"{'redis µs':>9} {'hall µs':>8} {'reordered':>9}")
        for n, m in manager.items():
            hall = get(f"redis-{n}")
            hall_us = f"{hall.relays.cpu_us_per_op:8.0f}" if hall else f"{'-':>8}"
            redis_us = m.phase.redis_cpu / max(m.phase.ops, 1) * 1e6
            print(f"{n:>5} {m.phase.per_s:8.0f} {m.phase.cpu_us_per_op:11.0f} "
                  f"{m.server_cpu_us:12.0f} {redis_us:9.0f} {hall_us} {m.out_of_order:9}")
            summary[f"manager_cpu_per_msg_us_{n}"] = round(m.phase.cpu_us_per_op, 1)
            summary[f"manager_server_cpu_per_msg_us_{n}"] = round(m.server_cpu_us, 1)
            summary[f"manager_msgs_per_s_{n}"] = round(m.phase.per_s)
            summary[f"manager_out_of_order_{n}"] = m.out_of_order
        first = manager.get(1)
        for n, m in manager.items():
            if n != 1 and first is not None:
                growth = m.phase.cpu_us_per_op / first.phase.cpu_us_per_op
                summary[f"manager_growth_{n}"] = round(growth, 3)
                hall_n, hall_1 = get(f"redis-{n}"), base
                line = f"growth {n} vs 1 process: AsyncRedisManager {growth:.2f}x"
                if hall_n is not None and hall_1 is not None:
                    hall_growth = hall_n.relays.cpu_us_per_op / hall_1.relays.cpu_us_per_op
                    summary[f"hall_relay_growth_{n}"] = round(hall_growth, 3)
                    line += f", hall (owner-routed) {hall_growth:.2f}x"
                print(line)
    client_share = max(
        [max(r.cycles.client_cpu, r.relays.client_cpu) for r in results.values()]
        + [m.phase.client_cpu for m in manager.values()],
        default=0.0,
    )
    summary.update({
        "pairs": args.pairs,
        "window": args.window,
        "phase_s": args.phase_s,
        "cycle_samples": args.cycle_samples,
        "relay_samples": args.relay_samples,
        "overlap_starts": args.overlap_starts,
        "bench_client_cpu_share": round(client_share, 2),
        "cpu_count": os.cpu_count(),
        "errors": errors,
        "hall_log_excerpts": anomalies,
        "elapsed_s": round(time.perf_counter() - started, 1),
    })
    print(f"total {summary['elapsed_s']} s")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter phases and fewer samples (about 15-25 s in all)")
    parser.add_argument("--processes", default="1,2,4",
                        type=lambda s: [int(x) for x in s.split(",") if x],
                        help="Redis-mode process counts (1 is the efficiency baseline)")
    parser.add_argument("--pairs", type=int, default=4, help="clerk/resident pairs")
    parser.add_argument("--phase-s", type=float, help="seconds per throughput phase")
    parser.add_argument("--manager-phase-s", type=float)
    parser.add_argument("--cycle-samples", type=int, help="one-in-flight cycles (latency)")
    parser.add_argument("--relay-samples", type=int, help="one-in-flight relays (latency)")
    parser.add_argument("--window", type=int, default=16, help="relays in flight in all")
    parser.add_argument("--skip-manager", action="store_true")
    parser.add_argument("--log-level", default="WARNING", help="the halls' HALL_LOG_LEVEL")
    parser.add_argument("--overlap-starts", action=argparse.BooleanOptionalAction, default=None,
                        help="start the next cluster while the current one is measured "
                        "(default: only with --quick)")
    parser.add_argument("--keep-logs", metavar="DIR",
                        help="keep each configuration's data dir (hall logs) under DIR")
    parser.add_argument("--local-cluster", type=Path, default=LOCAL_CLUSTER,
                        help="the cluster launcher (deploy/local-cluster's interface)")
    args = parser.parse_args()
    quick = args.quick
    defaults = {"phase_s": (0.8, 2.0), "manager_phase_s": (0.6, 1.2),
                "cycle_samples": (20, 80), "relay_samples": (60, 300)}
    for key, (short, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, short if quick else full)
    if args.overlap_starts is None:
        args.overlap_starts = quick
    if 1 not in args.processes:
        parser.error("--processes must include 1 (the baseline of the efficiency)")
    with tempfile.TemporaryDirectory(prefix="hall-bench-cluster-") as workdir:
        args.workdir = Path(args.keep_logs or workdir)
        summary = uvloop.run(run(args))
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
