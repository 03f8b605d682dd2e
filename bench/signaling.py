"""Signaling relay: the hall against a minimal Node.js Socket.IO relay, in the same run.

    .venv/bin/python bench/signaling.py [--count 5000] [--window 32] [--variants]

Two servers run side by side on loopback, each in its own process:

* the hall, ``hall serve --demo`` (``python -m server.cli``), with a temporary data dir;
* ``bench/node_relay/relay.js``: stock ``socket.io`` 4.x relaying ``rtc.signal`` within a room,
  the baseline (its npm packages are installed here with ``npm ci`` when missing).

The same python-socketio ``AsyncClient`` code (websocket transport, uvloop, orjson) drives both:
a sender and a receiver share one session; the sender emits ``rtc.signal`` with an ack,
alternating a ~1 KB SDP offer and ~150-byte ICE candidates, and a message counts when the
receiver gets it. Measured:

* latency (send → receive) p50/p99 with one message in flight;
* throughput with ``--window`` messages in flight until ``--count`` messages have arrived and
  been acked (best of ``--rounds``, the machine is shared);
* server RSS per idle, authenticated websocket connection at 1,000 and 5,000 connections
  (VmRSS delta of the server process over the connection count).

``ratio_vs_node`` is hall throughput / Node throughput; ``cpu_ratio_vs_node`` is Node's server
CPU per message / the hall's, the server-only comparison (when the bench client saturates its
core, throughput understates Node). ``--variants`` also measures halls patched at start-up
(asyncio loop instead of uvloop, stdlib json instead of orjson, no binary scan, no task per
event; see ``VARIANTS``), interleaved with the others, to show what each choice is worth. The
last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import socketio
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NODE_DIR = ROOT / "bench" / "node_relay"
CLERK = "clerk01"
READY_TIMEOUT_S = 20.0
EVENT_TIMEOUT_S = 10.0
# Patches --variants can apply to the hall process (see HALL_WRAPPER).
VARIANTS = {
    "default": "the hall as shipped",
    "asyncio": "asyncio's own event loop instead of uvloop",
    "stdjson": "stdlib json as python-socketio's codec",
    "orjson": "orjson as python-socketio's codec",
    "nobinary": "Packet.uses_binary_events = False (no per-packet binary scan)",
    "inline": "AsyncServer(async_handlers=False): no task per event",
}
CONNECT_CONCURRENCY = 200  # parallel handshakes while opening idle connections

# A realistic Chrome offer (audio, video, data channel), cut to about 1 KB; the relay never
# parses it, so only the size matters.
SDP_OFFER = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0 1 2\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Xy7k\r\na=ice-pwd:4ZcD7eKq1pB8r0vYwS2mNfTg\r\n"
    "a=ice-options:trickle\r\na=fingerprint:sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:"
    "46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\na=setup:actpass\r\na=mid:0\r\n"
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=sendrecv\r\n"
    "a=msid:stream0 audio0\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n"
    "a=fmtp:111 minptime=10;useinbandfec=1\r\na=ssrc:1001 cname:hall\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=ice-ufrag:Xy7k\r\na=ice-pwd:4ZcD7eKq1pB8r0vYwS2mNfTg\r\na=setup:actpass\r\na=mid:1\r\n"
    "a=sendrecv\r\na=msid:stream0 video0\r\na=rtcp-mux\r\na=rtcp-rsize\r\n"
    "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\na=rtpmap:102 H264/90000\r\n"
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n"
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n"
    "a=sctp-port:5000\r\n"
)
CANDIDATE_TAIL = (
    "1 udp 1677729535 203.0.113.7 50123 typ srflx raddr 192.168.1.20 rport 50123 generation 0"
)
CANDIDATE: dict[str, Any] = {
    "candidate": f"candidate:842163049 {CANDIDATE_TAIL}",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
    "usernameFragment": "Xy7k",
}


class OrjsonCodec:
    """orjson behind the ``json`` module interface python-socketio expects (dumps → str)."""

    @staticmethod
    def dumps(obj: Any, **_kwargs: Any) -> str:
        # orjson's output is already compact, which is what the separators argument asks for.
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(text: str | bytes, **_kwargs: Any) -> Any:
        return orjson.loads(text)


# Run as `python -c HALL_WRAPPER <variant> <hall args...>`: patches the server process before
# the hall starts, so the same hall code can be measured with a different loop or JSON codec.
HALL_WRAPPER = r"""
import sys
variants, argv = sys.argv[1].split("+"), sys.argv[2:]
import engineio.json, engineio.packet, orjson, socketio, socketio.packet
overrides = {}
if "orjson" in variants or "stdjson" in variants:
    class OrjsonCodec:
        @staticmethod
        def dumps(obj, **_kw):
            return orjson.dumps(obj).decode()
        @staticmethod
        def loads(text, **_kw):
            return orjson.loads(text)
    codec = OrjsonCodec if "orjson" in variants else engineio.json
    socketio.packet.Packet.json = codec
    engineio.packet.Packet.json = codec
    overrides["json"] = codec
if "nobinary" in variants:
    # The hall sends no binary attachments; skip the per-packet walk that looks for them.
    socketio.packet.Packet.uses_binary_events = False
if "inline" in variants:
    overrides["async_handlers"] = False  # run each event in the reader, not in a new task
original_init = socketio.AsyncServer.__init__
def patched_init(self, *args, **kwargs):
    kwargs.update(overrides)  # wins over whatever the hub passes
    original_init(self, *args, **kwargs)
socketio.AsyncServer.__init__ = patched_init
import server.cli
if "asyncio" in variants:
    server.cli._new_event_loop = lambda: None
raise SystemExit(server.cli.main(argv))
"""


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; child processes inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 65536
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def ensure_node_deps(directory: Path) -> None:
    """Install the Node project's locked packages once; the run itself needs no network."""
    if shutil.which("node") is None:
        raise SystemExit("error: `node` is not on PATH; Node.js 18+ is needed for the baseline")
    if (directory / "node_modules").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit(f"error: `npm` is not on PATH; run `npm ci` in {directory} by hand")
    print(f"installing the Node relay's packages (npm ci in {directory}) ...", flush=True)
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=directory,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise SystemExit(f"error: npm ci failed in {directory}:\n{result.stdout}{result.stderr}")


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        """Resident set size of the server process, from /proc (kB there means KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"{self.name}: no VmRSS for pid {self.pid}")

    def cpu_s(self) -> float:
        """User + system CPU seconds the server process has used, from /proc/<pid>/stat."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        # Fields after the command name (which may hold spaces) start at field 3 (state);
        # utime and stime are fields 14 and 15.
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def wait_ready(server: Server, marker: str) -> None:
    """Wait for the server's own "listening" line: it is printed once the port is bound."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if marker in server.log_path.read_text(errors="replace"):
            return
        if server.process.poll() is not None:
            break
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{server.name} did not start:\n{server.log_tail()}")


def spawn(name: str, args: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> Server:
    # Output goes to a file, never a pipe: a pipe nobody drains would block a chatty server.
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    port = args[-1]
    return Server(name, f"http://127.0.0.1:{port}", process, log_path)


@dataclass(frozen=True)
class HallConfig:
    password: str
    idp_key: str
    data_dir: Path


async def start_node(workdir: Path) -> Server:
    port = free_port()
    server = spawn(
        "node",
        ["node", str(NODE_DIR / "relay.js"), str(port)],
        dict(os.environ),
        NODE_DIR,
        workdir / "node.log",
    )
    await wait_ready(server, "node relay listening on")
    return server


async def start_hall(workdir: Path, config: HallConfig, variant: str, log_level: str) -> Server:
    port = free_port()
    data_dir = config.data_dir / variant
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "HALL_DEMO_PASSWORD": config.password,
            "HALL_DATA_DIR": str(data_dir),
            # Lets the bench sign residents' identity tokens itself (the app's IdP role), so
            # 5,000 idle residents need no 5,000 HTTP round trips first.
            "HALL_APP_IDP_KEY": config.idp_key,
            # The Node relay logs nothing per message; INFO lines per connection would measure
            # the log handler, not the relay.
            "HALL_LOG_LEVEL": log_level,
            # One bench socket relays thousands of messages a second, far beyond any real
            # client's budget (signaling/ratelimit.py): the bench measures capacity.
            "HALL_RATE_LIMITS": "off",
        }
    )
    args = [sys.executable, "-c", HALL_WRAPPER, variant, "serve", "--demo", "--port", str(port)]
    server = spawn(f"hall[{variant}]", args, env, ROOT, workdir / f"hall-{variant}.log")
    await wait_ready(server, "Virtual Hall listening on")
    return server


# -- clients ------------------------------------------------------------------------------------


def new_client() -> Any:
    # The client's own cost is in every figure for both servers; orjson keeps it small.
    return socketio.AsyncClient(reconnection=False, json=OrjsonCodec)


class Peer:
    """One python-socketio client; server events other than rtc.signal are queued by name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sio = new_client()
        self.queues: dict[str, asyncio.Queue[Any]] = {}
        self.on_signal: Callable[[Any], None] = lambda _data: None
        self.sio.on("rtc.signal", self._signal)
        self.sio.on("*", self._any)

    def _signal(self, data: Any) -> None:
        self.on_signal(data)

    def _any(self, event: str, data: Any = None) -> None:
        self.queue(event).put_nowait(data)

    def queue(self, event: str) -> asyncio.Queue[Any]:
        return self.queues.setdefault(event, asyncio.Queue())

    async def next(self, event: str) -> Any:
        try:
            return await asyncio.wait_for(self.queue(event).get(), EVENT_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(f"{self.name}: no {event!r} within {EVENT_TIMEOUT_S} s") from None

    async def connect(self, url: str, auth: dict[str, Any]) -> None:
        await self.sio.connect(url, auth=auth, transports=["websocket"], wait_timeout=10)

    async def call(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        ack: dict[str, Any] = await self.sio.call(event, payload, timeout=10)
        if not ack.get("ok"):
            raise RuntimeError(f"{self.name}: {event} refused: {ack}")
        return ack


async def post_json(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with http.post(url, json=body) as response:
        data = await response.json(content_type=None)
        if response.status != 200:
            raise RuntimeError(f"POST {url}: HTTP {response.status}: {data}")
        return data


def clerk_matter() -> str:
    """A matter the demo clerk serves, from the same catalog file the hall loads."""
    from rooms.catalog import load_catalog

    catalog = load_catalog()
    clerk = catalog.clerks[CLERK]
    for matter in catalog.matters.values():
        if matter.id in clerk.matters or matter.department_id in clerk.departments:
            return matter.id
    raise RuntimeError(f"{CLERK} serves no matter in the demo catalog")


@contextlib.asynccontextmanager
async def hall_pair(server: Server, password: str) -> AsyncIterator[tuple[Peer, Peer, str]]:
    """A clerk and a resident in one live session, set up as docs/protocol.md describes."""
    clerk, resident = Peer("clerk"), Peer("resident")
    try:
        async with aiohttp.ClientSession() as http:
            login = await post_json(
                http, f"{server.url}/api/auth/login", {"username": CLERK, "password": password}
            )
            minted = await post_json(
                http,
                f"{server.url}/api/dev/resident-token",
                {"resident_id": "bench-resident", "name": "测试居民"},
            )
        await clerk.connect(server.url, {"token": login["token"]})
        await clerk.next("welcome")
        await resident.connect(server.url, {"id_token": minted["id_token"]})
        await resident.next("welcome")
        await resident.call("ticket.take", {"matter_id": clerk_matter(), "when_unstaffed": "wait"})
        offer = await clerk.next("offer.new")
        await clerk.call("offer.accept", {"ticket_id": offer["ticket_id"]})
        started = await clerk.next("session.started")
        await resident.next("session.started")
        # The clerk is the initiator: it sends offers and candidates to the resident.
        yield clerk, resident, started["session"]["id"]
    finally:
        for peer in (clerk, resident):
            with contextlib.suppress(Exception):
                await peer.sio.disconnect()


@contextlib.asynccontextmanager
async def node_pair(server: Server) -> AsyncIterator[tuple[Peer, Peer, str]]:
    sender, receiver = Peer("a"), Peer("b")
    room = "bench-room"
    try:
        await sender.connect(server.url, {"room": room, "peer": "a"})
        await receiver.connect(server.url, {"room": room, "peer": "b"})
        yield sender, receiver, room
    finally:
        for peer in (sender, receiver):
            with contextlib.suppress(Exception):
                await peer.sio.disconnect()


def message(session_id: str, n: int) -> dict[str, Any]:
    """Message ``n``: an offer when even, a candidate when odd; ``n`` is written where a real
    one has an arbitrary number (the SDP session id, the candidate foundation)."""
    if n % 2 == 0:
        sdp = f"v=0\r\no=- {n} " + SDP_OFFER[SDP_OFFER.index(" 2 IN IP4") + 1 :]
        return {"session_id": session_id, "description": {"type": "offer", "sdp": sdp}}
    candidate = dict(CANDIDATE, candidate=f"candidate:{n} {CANDIDATE_TAIL}")
    return {"session_id": session_id, "candidate": candidate}


def message_number(data: dict[str, Any]) -> int:
    description = data.get("description")
    if description is not None:
        return int(description["sdp"].split(" ", 2)[1])
    text: str = data["candidate"]["candidate"]
    return int(text[len("candidate:") : text.index(" ")])


@dataclass
class Relay:
    """Sends through one pair and matches arrivals to sends in order (one socket, FIFO)."""

    sender: Peer
    receiver: Peer
    session_id: str
    sent_at: deque[float] = field(default_factory=deque)
    latencies: list[float] = field(default_factory=list)
    received: int = 0
    acked: int = 0
    refused: list[Any] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    sent: int = 0
    out_of_order: int = 0

    def __post_init__(self) -> None:
        self.receiver.on_signal = self._on_signal

    def _on_signal(self, data: Any) -> None:
        now = time.perf_counter()
        self.latencies.append(now - self.sent_at.popleft())
        # Arrivals are matched to sends by order, and trickle ICE needs that order anyway
        # (a candidate must not overtake its offer): count any message that breaks it.
        if message_number(data) != self.received:
            self.out_of_order += 1
        self.received += 1
        self.arrived.set()

    def _on_ack(self, ack: Any = None) -> None:
        self.acked += 1
        self.arrived.set()
        if not (isinstance(ack, dict) and ack.get("ok")):
            self.refused.append(ack)

    async def run(self, count: int, window: int) -> float:
        """Send ``count`` messages, at most ``window`` unreceived; seconds until all acked."""
        self.latencies.clear()
        start_received, start_acked = self.received, self.acked
        started = time.perf_counter()
        for _ in range(count):
            while len(self.sent_at) >= window:
                self.arrived.clear()
                await asyncio.wait_for(self.arrived.wait(), 10)
            payload = message(self.session_id, self.sent)
            self.sent += 1
            self.sent_at.append(time.perf_counter())
            await self.sender.sio.emit("rtc.signal", payload, callback=self._on_ack)
        deadline = time.monotonic() + 10
        while self.received - start_received < count or self.acked - start_acked < count:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"lost messages: {self.received - start_received}/{count} received, "
                    f"{self.acked - start_acked}/{count} acked"
                )
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 1)
        elapsed = time.perf_counter() - started
        if self.refused:
            raise RuntimeError(f"rtc.signal refused: {self.refused[:3]}")
        if self.out_of_order:
            raise RuntimeError(f"{self.out_of_order} messages arrived out of order")
        return elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class RelayResult:
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    client_cpu: float  # bench-process CPU seconds per wall second during the throughput run
    server_cpu_us: float  # server CPU microseconds per relayed message (throughput run)


PairContext = contextlib.AbstractAsyncContextManager[tuple[Peer, Peer, str]]


async def measure_relays(
    targets: Sequence[tuple[Server, PairContext]],
    *,
    count: int,
    window: int,
    latency_samples: int,
    rounds: int,
) -> list[RelayResult]:
    """Latency and best-of-``rounds`` throughput for each (server, pair), rounds interleaved.

    Each pair is set up once and reused: a hall session is a ticket, and a resident holds one
    ticket at a time. Interleaving the rounds means a burst of load from elsewhere on the
    (shared) machine hits every server, not just the one measured at that moment.
    """
    async with contextlib.AsyncExitStack() as stack:
        relays = [Relay(*await stack.enter_async_context(pair)) for _server, pair in targets]
        latencies: list[list[float]] = []
        for relay in relays:
            await relay.run(300, window)  # warm-up: caches, V8's JIT, allocator arenas
            await relay.run(latency_samples, 1)
            latencies.append(list(relay.latencies))
        throughputs: list[list[tuple[float, float, float]]] = [[] for _ in relays]
        for _ in range(rounds):
            for (server, _pair), relay, runs in zip(targets, relays, throughputs, strict=True):
                cpu0, server_cpu0 = time.process_time(), server.cpu_s()
                elapsed = await relay.run(count, window)
                cpu = (time.process_time() - cpu0) / elapsed
                runs.append((elapsed, cpu, server.cpu_s() - server_cpu0))
    results = []
    for lat, runs in zip(latencies, throughputs, strict=True):
        elapsed, cpu, server_cpu = min(runs)  # the fastest round
        results.append(
            RelayResult(
                msgs_per_s=count / elapsed,
                p50_ms=pct(lat, 0.50) * 1000,
                p99_ms=pct(lat, 0.99) * 1000,
                client_cpu=cpu,
                server_cpu_us=server_cpu / count * 1e6,
            )
        )
    return results


# -- idle connections ---------------------------------------------------------------------------


class IdleConnections:
    """Authenticated, idle Socket.IO connections, spoken at the Engine.IO level.

    A python-socketio client per connection would cost the bench process ~100 KiB and a
    ClientSession each; idle sockets only need the handshake and an answer to each ping, so
    one aiohttp session carries them all and the server sees the same protocol.
    """

    def __init__(self, server: Server, expect_welcome: bool) -> None:
        self.server = server
        self.expect_welcome = expect_welcome
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self, auths: list[dict[str, Any]]) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(auth: dict[str, Any]) -> None:
            async with gate:
                await self._connect(auth)

        await asyncio.gather(*(one(a) for a in auths))

    async def _connect(self, auth: dict[str, Any]) -> None:
        url = self.server.url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        ws = await self.http.ws_connect(url, max_msg_size=0)
        self.sockets.append(ws)
        opened = await ws.receive_str(timeout=10)
        if not opened.startswith("0"):
            raise RuntimeError(f"{self.server.name}: unexpected Engine.IO open {opened[:80]!r}")
        await ws.send_str("40" + json.dumps(auth))
        # python-socketio sends what the connect handler emits (the hall's welcome) before
        # the CONNECT answer itself, so take the two in either order.
        connected, welcomed = False, not self.expect_welcome
        while not (connected and welcomed):
            message = await ws.receive_str(timeout=10)
            if message.startswith("40"):
                connected = True
            elif message.startswith('42["welcome"'):
                welcomed = True
            elif message == "2":
                await ws.send_str("3")
            elif message.startswith("44"):
                raise RuntimeError(f"{self.server.name}: connect refused: {message[:200]}")
        self.tasks.append(asyncio.create_task(self._keepalive(ws)))

    @staticmethod
    async def _keepalive(ws: aiohttp.ClientWebSocketResponse) -> None:
        # Engine.IO pings are text frames "2"; a silent client is dropped after 10 s.
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT and message.data == "2":
                await ws.send_str("3")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        await self.http.close()


async def settled_rss(server: Server, pause: float = 1.0) -> int:
    """RSS once the server has finished the work the last connections caused."""
    await asyncio.sleep(pause)
    return server.rss_kib()


async def measure_idle(
    server: Server, auths: Callable[[int, int], list[dict[str, Any]]], expect_welcome: bool
) -> dict[int, float]:
    """KiB of server RSS per idle connection at 1,000 and 5,000 connections."""
    base = await settled_rss(server, 0.5)
    idle = IdleConnections(server, expect_welcome)
    result: dict[int, float] = {}
    try:
        opened = 0
        for target in (1000, 5000):
            await idle.open(auths(opened, target))
            opened = target
            result[target] = (await settled_rss(server) - base) / target
    finally:
        await idle.close()
    return result


def hall_auths(idp_key: str) -> Callable[[int, int], list[dict[str, Any]]]:
    import jwt

    def make(start: int, stop: int) -> list[dict[str, Any]]:
        exp = int(time.time()) + 3600
        return [
            {
                "id_token": jwt.encode(
                    {"sub": f"idle-{i}", "name": f"居民{i}", "iss": "suishenban", "exp": exp},
                    idp_key,
                    algorithm="HS256",
                )
            }
            for i in range(start, stop)
        ]

    return make


def node_auths(start: int, stop: int) -> list[dict[str, Any]]:
    return [{"room": f"idle-{i}", "peer": "a"} for i in range(start, stop)]


# -- main ---------------------------------------------------------------------------------------


def fmt(result: RelayResult) -> str:
    return (
        f"{result.msgs_per_s:8.0f} msg/s   p50 {result.p50_ms:6.3f} ms   "
        f"p99 {result.p99_ms:6.3f} ms   server CPU {result.server_cpu_us:5.0f} µs/msg   "
        f"(bench client CPU {result.client_cpu:.0%})"
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    fds = raise_fd_limit()
    if fds < 5000 + 200:
        print(f"warning: RLIMIT_NOFILE is {fds}; 5,000 connections may not fit", flush=True)
    ensure_node_deps(NODE_DIR)
    config = HallConfig(
        password=secrets.token_urlsafe(12),
        idp_key=secrets.token_hex(32),
        data_dir=Path(args.workdir),
    )
    workdir = Path(args.workdir)
    servers: list[Server] = []
    try:
        # Every server is up before any is measured: the rounds are interleaved over all of
        # them, so the comparison holds even when the machine's load changes mid-run.
        node, hall, *others = await asyncio.gather(
            start_node(workdir),
            start_hall(workdir, config, "default", args.log_level),
            *(start_hall(workdir, config, v, args.log_level) for v in args.variants),
        )
        servers += [node, hall, *others]
        results = await measure_relays(
            [(node, node_pair(node)), (hall, hall_pair(hall, config.password))]
            + [(server, hall_pair(server, config.password)) for server in others],
            count=args.count,
            window=args.window,
            latency_samples=args.latency_samples,
            rounds=args.rounds,
        )
        for server in others:
            server.stop()  # their idle sockets and timers must not weigh on what follows
        node_r, hall_r = results[0], results[1]
        ratio = hall_r.msgs_per_s / node_r.msgs_per_s
        print(f"relay, {args.count} messages, window {args.window}, best of {args.rounds}:")
        print(f"  {'node':16} {fmt(node_r)}")
        print(f"  {'hall':16} {fmt(hall_r)}")
        variants: dict[str, dict[str, float]] = {}
        for variant, r in zip(args.variants, results[2:], strict=True):
            variants[variant] = {
                "msgs_per_s": round(r.msgs_per_s),
                "p50_ms": round(r.p50_ms, 3),
                "p99_ms": round(r.p99_ms, 3),
                "ratio_vs_node": round(r.msgs_per_s / node_r.msgs_per_s, 3),
                "server_cpu_us_per_msg": round(r.server_cpu_us, 1),
            }
            print(f"  {'hall[' + variant + ']':16} {fmt(r)}")
        print(f"  ratio hall/node throughput {ratio:.2f}", flush=True)

        memory: dict[str, dict[int, float]] = {}
        if not args.skip_memory:
            memory["hall"] = await measure_idle(hall, hall_auths(config.idp_key), True)
            memory["node"] = await measure_idle(node, node_auths, False)
            print("server RSS per idle websocket connection:")
            for name, per in memory.items():
                print(f"  {name:5} {per[1000]:6.1f} KiB at 1,000   {per[5000]:6.1f} KiB at 5,000")
    finally:
        for server in servers:
            server.stop()

    summary: dict[str, Any] = {
        "ratio_vs_node": round(ratio, 3),
        "hall_msgs_per_s": round(hall_r.msgs_per_s),
        "node_msgs_per_s": round(node_r.msgs_per_s),
        "hall_p50_ms": round(hall_r.p50_ms, 3),
        "hall_p99_ms": round(hall_r.p99_ms, 3),
        "node_p50_ms": round(node_r.p50_ms, 3),
        "node_p99_ms": round(node_r.p99_ms, 3),
        "hall_server_cpu_us_per_msg": round(hall_r.server_cpu_us, 1),
        "node_server_cpu_us_per_msg": round(node_r.server_cpu_us, 1),
        # Node's CPU per message over the hall's: the server-only comparison, which holds
        # even when the bench client saturates its core (then throughput flatters the hall).
        "cpu_ratio_vs_node": round(node_r.server_cpu_us / hall_r.server_cpu_us, 3),
        "bench_client_cpu_share": round(max(hall_r.client_cpu, node_r.client_cpu), 2),
    }
    for name, per in memory.items():
        for n, kib in per.items():
            summary[f"{name}_kib_per_idle_conn_{n}"] = round(kib, 1)
    summary.update(
        {
            "count": args.count,
            "window": args.window,
            "latency_samples": args.latency_samples,
            "rounds": args.rounds,
            "variants": variants,
            "elapsed_s": round(time.perf_counter() - started, 1),
        }
    )
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="messages per throughput run")
    parser.add_argument("--window", type=int, default=32, help="messages in flight")
    parser.add_argument("--latency-samples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2, help="throughput runs, best counts")
    parser.add_argument(
        "--variants",
        nargs="?",
        const="asyncio,stdjson,nobinary,inline,nobinary+inline",
        default="",
        type=lambda s: [v for v in s.split(",") if v],
        help="also measure the hall patched at start-up; a variant joins patches with '+': "
        + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()),
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--log-level", default="WARNING", help="the hall's HALL_LOG_LEVEL")
    args = parser.parse_args()
    for variant in args.variants:
        unknown = set(variant.split("+")) - set(VARIANTS)
        if unknown:
            parser.error(f"unknown variant {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="hall-bench-") as workdir:
        args.workdir = workdir
        summary = uvloop.run(run(args))
    print(json.dumps(summary, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
