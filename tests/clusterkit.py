"""A hall cluster for the tests: N ``python -m server.cli serve`` processes in Redis mode.

Every process gets its own port, process id and log file, and shares with the others the
secret key, the demo password, one SQLite records file, one data directory, the Redis URL and
a key prefix of its own (docs: /work/briefs/cluster-contract.md). The test can SIGKILL one
process (:meth:`HallProc.kill`), stop and restart Redis, and read the records database
read-only (:meth:`Cluster.events_of`).

Clients are the real participants of tests/rtcpeer.py (:class:`HallClient` over Socket.IO
websocket, :class:`MediaPeer` aiortc peers), so everything a test sees went through the hall
processes exactly as a browser's traffic would.

The processes are started directly (not through ``deploy/local-cluster``) so that the test
holds each process's pid and log: the log tails are printed at teardown, which pytest shows
only when the test failed.
"""

# ruff: noqa: ASYNC109  (explicit ``timeout`` arguments read best at the call, as in rtcpeer)

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.redisproc import RedisServer, answers, drop_prefix, free_port, new_prefix
from tests.rtcpeer import HallClient, MediaPeer, Payload

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "cluster-demo-password"
TIMEOUT = 10.0  # a single wait for a message
READY_TIMEOUT = 60.0  # a process starting (two cores, aiortc imports)
STOP_GRACE_S = 6.0  # a hall stops in about a second
LOG_TAIL_CHARS = 3000
RESUME_GRACE_S = 20.0
# A consultation matter of 人社 (hrss): served by clerk01 and clerk02 (primary skill), and by no
# clerk of another department that a test logs in.
MATTER = "social_insurance_record"
CLERK = "clerk01"
CLERK2 = "clerk02"


# -- processes ---------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The end of a log, without the access log's lines (the /readyz polls)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    lines = [line for line in text.splitlines(keepends=True) if " aiohttp.access: " not in line]
    return "".join(lines)[-chars:]


@dataclass
class HallProc:
    """One hall process of the cluster."""

    name: str  # its HALL_PROCESS_ID, e.g. hall-a
    port: int
    log: Path
    proc: subprocess.Popen[bytes]
    killed: bool = False  # by the test, on purpose

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill: no clean-up runs in the process."""
        self.killed = True
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait_or_kill(self, grace_s: float) -> bool:
        """Wait up to ``grace_s`` for the process to end (after a SIGTERM), else SIGKILL it;
        returns whether it ended by itself."""
        try:
            self.proc.wait(timeout=grace_s)
            return True
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
            return False

    def tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return tail(self.log, chars)


@contextlib.contextmanager
def persistent_redis(workdir: Path) -> Iterator[RedisServer]:
    """A private redis-server whose data survives stop/start (an append-only file)."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = RedisServer(workdir, persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- the cluster -------------------------------------------------------------------------------


@dataclass
class Cluster:
    """The running processes, and every client and peer a test opened (closed at teardown)."""

    redis: RedisServer
    prefix: str
    secret_key: str
    db_path: Path
    data_dir: Path
    halls: list[HallProc]
    http: aiohttp.ClientSession
    clients: list[HallClient] = field(default_factory=list)
    peers: list[MediaPeer] = field(default_factory=list)

    @property
    def a(self) -> HallProc:
        return self.halls[0]

    @property
    def b(self) -> HallProc:
        return self.halls[1]

    # ---- HTTP

    async def request(self, hall: HallProc, method: str, path: str,
                      body: dict[str, Any] | None = None) -> tuple[int, Payload]:
        async with self.http.request(method, hall.url + path, json=body,
                                     timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as response:
            data = await response.json(content_type=None)
            assert isinstance(data, dict), (path, data)
            return response.status, data

    async def post(self, hall: HallProc, path: str, body: dict[str, Any]) -> Payload:
        status, data = await self.request(hall, "POST", path, body)
        assert status == 200, f"{hall.name} POST {path}: {status} {data!r}"
        return data

    async def readyz(self, hall: HallProc) -> tuple[int, Payload]:
        return await self.request(hall, "GET", "/readyz")

    async def status(self, hall: HallProc, path: str) -> int | None:
        """The HTTP status of a GET, or None when the process does not answer."""
        try:
            async with self.http.get(hall.url + path,
                                     timeout=aiohttp.ClientTimeout(total=3)) as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def wait_readyz(self, hall: HallProc, status: int, *, timeout: float,
                          seen: list[Payload] | None = None) -> Payload:
        """Poll /readyz until it answers ``status``; returns the body. ``seen`` collects the
        distinct bodies answered meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Any = None
        while True:
            try:
                code, body = await self.readyz(hall)
                last = (code, body)
                if seen is not None and (not seen or seen[-1] != body):
                    seen.append(body)
                if code == status:
                    return body
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = exc
            if not hall.alive():
                raise AssertionError(f"{hall.name} exited ({hall.proc.returncode}) while "
                                     f"waiting for /readyz {status}:\n{hall.tail()}")
            if loop.time() > deadline:
                raise AssertionError(f"{hall.name}: /readyz not {status} within {timeout} s; "
                                     f"last {last!r}")
            await asyncio.sleep(0.1)

    async def wait_check(self, hall: HallProc, check: str, value: str, *,
                         timeout: float) -> Payload:
        """Poll /readyz until ``checks[check]`` is ``value`` (whatever the other checks say);
        returns the body."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        body: Payload = {}
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                _, body = await self.readyz(hall)
                if body.get("checks", {}).get(check) == value:
                    return body
            if loop.time() > deadline:
                raise AssertionError(f"{hall.name}: /readyz check {check} not {value!r} "
                                     f"within {timeout} s; last {body!r}")
            await asyncio.sleep(0.1)

    # ---- participants

    def client(self, name: str) -> HallClient:
        client = HallClient(name)
        self.clients.append(client)
        return client

    async def staff(self, hall: HallProc, username: str) -> HallClient:
        """Log a clerk or supervisor in over HTTP on ``hall`` and connect there."""
        login = await self.post(hall, "/api/auth/login",
                                {"username": username, "password": PASSWORD})
        assert isinstance(login.get("token"), str), login
        client = self.client(f"{username}@{hall.name}")
        welcome = await client.connect(hall.url, {"token": login["token"]}, timeout=TIMEOUT)
        assert welcome["role"] == login["role"], (welcome, login)
        return client

    async def resident_token(self, hall: HallProc, resident_id: str, name: str) -> str:
        signed = await self.post(hall, "/api/dev/resident-token",
                                 {"resident_id": resident_id, "name": name})
        assert isinstance(signed.get("id_token"), str), signed
        return str(signed["id_token"])

    async def resident(self, hall: HallProc, resident_id: str, name: str) -> HallClient:
        """A resident of the app (demo identity token) connected to ``hall``."""
        token = await self.resident_token(hall, resident_id, name)
        client = self.client(f"{resident_id}@{hall.name}")
        welcome = await client.connect(hall.url, {"id_token": token}, timeout=TIMEOUT)
        assert welcome["role"] == "resident", welcome
        return client

    def peer(self, name: str, session: Payload, *, tag: int) -> MediaPeer:
        peer = MediaPeer.for_session(name, session, tag=tag)
        self.peers.append(peer)
        return peer

    # ---- records (the event log in the shared SQLite file)

    def events_of(self, ticket_id: str) -> list[tuple[int, str, str | None]]:
        """``(seq, kind, clerk_id)`` of the ticket's events, read-only, in seq order."""
        uri = f"file:{self.db_path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            rows = db.execute(
                "SELECT seq, kind, clerk_id FROM hall_events WHERE ticket_id = ? ORDER BY seq",
                (ticket_id,),
            ).fetchall()
        return [(int(seq), str(kind), clerk) for seq, kind, clerk in rows]

    async def wait_event(self, ticket_id: str, kind: str, *,
                         timeout: float = TIMEOUT) -> list[tuple[int, str, str | None]]:
        """Poll the records until the ticket has a ``kind`` event; returns its events."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            events = self.events_of(ticket_id)
            if any(k == kind for _, k, _ in events):
                return events
            if loop.time() > deadline:
                raise AssertionError(f"no {kind} event of ticket {ticket_id} in the records "
                                     f"within {timeout} s; have {events}")
            await asyncio.sleep(0.2)

    # ---- teardown

    async def close_participants(self) -> None:
        for peer in self.peers:
            with contextlib.suppress(Exception):
                await peer.close()
        for client in self.clients:
            await client.close()

    def stop(self) -> list[str]:
        """ONE SIGTERM to every process (they flush their records; a second SIGTERM would
        cut their shut-down short), SIGKILL after STOP_GRACE_S. Returns what went wrong: a
        process that was not killed on purpose and did not exit with status 0."""
        for hall in self.halls:
            if hall.alive():
                with contextlib.suppress(ProcessLookupError):
                    hall.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        problems = []
        for hall in self.halls:
            if hall.killed:
                continue
            if not hall.wait_or_kill(max(0.1, deadline - time.monotonic())):
                problems.append(f"{hall.name} did not stop within {STOP_GRACE_S:g} s of one "
                                f"SIGTERM (SIGKILLed)")
            elif hall.proc.returncode != 0:
                problems.append(f"{hall.name} exited with status {hall.proc.returncode}")
        return problems

    def report(self) -> str:
        """Every process's log tail (printed at teardown; pytest shows it on failure)."""
        parts = []
        for hall in self.halls:
            state = "running" if hall.alive() else f"exit {hall.proc.returncode}"
            parts.append(f"===== {hall.name} pid {hall.pid} port {hall.port} ({state}) "
                         f"{hall.log} =====\n{hall.tail()}")
        return "\n".join(parts)


def hall_env(*, redis_url: str, prefix: str, secret_key: str, db_path: Path, data_dir: Path,
             process_id: str | None) -> dict[str, str]:
    """The test process's environment without its own HALL_* settings, plus the cluster's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HALL_")}
    env.update({
        "HALL_SECRET_KEY": secret_key,
        "HALL_DEMO_PASSWORD": PASSWORD,
        "HALL_DATABASE_URL": f"sqlite+aiosqlite:///{db_path}",
        "HALL_DATA_DIR": str(data_dir),
        "HALL_REDIS_URL": redis_url,
        "HALL_REDIS_PREFIX": prefix,
        "HALL_RESUME_GRACE_S": str(RESUME_GRACE_S),
        "HALL_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    if process_id is not None:
        env["HALL_PROCESS_ID"] = process_id
    return env


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def spawn_hall(name: str, port: int, workdir: Path, env: dict[str, str]) -> HallProc:
    """Start ``hall serve --demo`` on ``port``; its output goes to ``<workdir>/<name>.log``."""
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--demo",
             "--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            cwd=ROOT, preexec_fn=_die_with_parent,
        )
    return HallProc(name, port, log, proc)


@contextlib.asynccontextmanager
async def running_cluster(redis: RedisServer, workdir: Path, *,
                          processes: int = 2) -> AsyncIterator[Cluster]:
    """Start ``processes`` halls on ``redis`` under a new prefix; wait until all are ready.

    The records database is migrated once first (``hall db upgrade``), so that the processes
    do not race each other creating its tables.
    """
    prefix = new_prefix()
    secret_key = secrets.token_hex(32)
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / "records.sqlite3"

    def env(process_id: str | None) -> dict[str, str]:
        return hall_env(redis_url=redis.url, prefix=prefix, secret_key=secret_key,
                        db_path=db_path, data_dir=data_dir, process_id=process_id)

    upgrade_log = workdir / "db-upgrade.log"
    with upgrade_log.open("ab") as out:
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "server.cli", "db", "upgrade"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env(None),
            cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, f"hall db upgrade failed:\n{tail(upgrade_log)}"

    halls = [spawn_hall(f"hall-{'abcdefgh'[i]}", port, workdir, env(f"hall-{'abcdefgh'[i]}"))
             for i, port in enumerate(_free_ports(processes))]

    async with aiohttp.ClientSession() as http:
        cluster = Cluster(redis, prefix, secret_key, db_path, data_dir, halls, http)
        try:
            t0 = time.monotonic()
            await asyncio.gather(*(cluster.wait_readyz(h, 200, timeout=READY_TIMEOUT)
                                   for h in halls))
            print(f"[timing] {processes} halls ready in {time.monotonic() - t0:.1f} s")
            yield cluster
        finally:
            await cluster.close_participants()
            problems = await asyncio.to_thread(cluster.stop)
            print(cluster.report())
            if answers(redis.port):
                with contextlib.suppress(Exception):
                    drop_prefix(redis.url, prefix)
        # Shutting down cleanly is part of the contract: a failed teardown says so.
        assert not problems, f"unclean shut-down: {problems} (logs above)"
