"""A real hall on a free port, and Socket.IO clients that record every event they receive."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp import web

from server import keys
from server.app import create_app
from server.config import Settings
from tests.redisproc import RedisServer, drop_prefix, new_prefix

PASSWORD = "demo-password-for-tests"
# Set by the hall_backend fixture: live_hall then starts Redis-mode halls.
_TEST_REDIS_URL = "HALL_TEST_REDIS_URL"
_TEST_REDIS_PREFIX = "HALL_TEST_REDIS_PREFIX"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LiveHall:
    url: str
    app: web.Application

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.post(self.url + path, json=body) as r:
            data: dict[str, Any] = await r.json()
            return data

    async def clerk_token(self, username: str = "clerk01") -> str:
        reply = await self.post("/api/auth/login", {"username": username, "password": PASSWORD})
        assert reply["ok"], reply
        return str(reply["token"])

    async def resident_id_token(self, resident_id: str, name: str = "居民") -> str:
        reply = await self.post("/api/dev/resident-token", {"resident_id": resident_id,
                                                            "name": name})
        assert reply["ok"], reply
        return str(reply["id_token"])

    async def kiosk_token(self, service_point_id: str = "XH-001") -> str:
        secret = self.app[keys.KIOSK_KEYS].demo_secret(service_point_id)
        reply = await self.post("/api/auth/kiosk", {"service_point_id": service_point_id,
                                                    "secret": secret})
        assert reply["ok"], reply
        return str(reply["token"])


def matter_of(hall: LiveHall, clerk_id: str) -> str:
    """A matter the clerk serves (primary skill), the first in catalog order."""
    catalog = hall.app[keys.CATALOG]
    profile = catalog.clerks[clerk_id]
    for matter in catalog.matters.values():
        if matter.id in profile.matters or matter.department_id in profile.departments:
            return str(matter.id)
    raise AssertionError(f"no matter served by {clerk_id}")


@pytest.fixture(params=["memory", "redis"])
def hall_backend(request: pytest.FixtureRequest,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test on an embedded hall, then on a Redis-mode hall (a private redis-server,
    a key prefix of its own): the halls :func:`live_hall` starts follow it."""
    if request.param == "memory":
        yield "memory"
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = new_prefix()
    monkeypatch.setenv(_TEST_REDIS_URL, server.url)
    monkeypatch.setenv(_TEST_REDIS_PREFIX, prefix)
    yield "redis"
    drop_prefix(server.url, prefix)


def _backend_env() -> dict[str, str]:
    url = os.environ.get(_TEST_REDIS_URL)
    if not url:
        return {}
    return {"HALL_REDIS_URL": url, "HALL_REDIS_PREFIX": os.environ[_TEST_REDIS_PREFIX],
            "HALL_SECRET_KEY": "redis-mode-test-secret-" + "x" * 16}


@asynccontextmanager
async def live_hall(env: Mapping[str, str] | None = None) -> AsyncIterator[LiveHall]:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="hall-test-")
    settings = Settings.from_env({
        **_backend_env(),
        "HALL_DATA_DIR": data_dir,
        "HALL_DEMO_PASSWORD": PASSWORD,
        # A file, as in production: an in-memory SQLite is one shared connection, on which
        # two concurrent writers (an upload and a sweep) collide.
        "HALL_DATABASE_URL": f"sqlite+aiosqlite:///{data_dir}/records.sqlite3",
        "HALL_PORT": str(port),
        **(env or {}),
    })
    app = create_app(settings, demo=True)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield LiveHall(f"http://127.0.0.1:{port}", app)
    finally:
        await runner.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


@dataclass
class Client:
    """A Socket.IO client that keeps every event, in order, for assertions."""

    sio: socketio.AsyncClient = field(default_factory=lambda: socketio.AsyncClient(
        reconnection=False))
    events: list[tuple[str, Any]] = field(default_factory=list)
    cursor: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        @self.sio.on("*")  # type: ignore[untyped-decorator]
        async def _any(event: str, data: Any = None) -> None:
            self.events.append((event, data))
            self.arrived.set()

    async def connect(self, url: str, auth: dict[str, Any] | None = None,
                      headers: dict[str, str] | None = None) -> None:
        await self.sio.connect(url, auth=auth, transports=["websocket"], headers=headers or {},
                               wait_timeout=5)

    async def call(self, event: str, payload: Any = None) -> dict[str, Any]:
        reply: dict[str, Any] = await self.sio.call(event, payload if payload is not None
                                                    else {}, timeout=10)
        return reply

    async def next(self, event: str, match: Callable[[Any], bool] | None = None,
                   within: float = 5.0) -> Any:
        """The next not-yet-consumed event of that name (and matching), waiting for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            for i in range(self.cursor, len(self.events)):
                name, data = self.events[i]
                if name == event and (match is None or match(data)):
                    self.events.pop(i)
                    return data
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = [name for name, _ in self.events]
                raise AssertionError(f"no {event} within {within}s; got {seen}")
            self.arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


@asynccontextmanager
async def clients(n: int) -> AsyncIterator[list[Client]]:
    made = [Client() for _ in range(n)]
    try:
        yield made
    finally:
        for c in made:
            await c.close()
