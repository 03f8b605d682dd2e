"""A private redis-server for the tests, on a free port of 127.0.0.1 (never the machine's own).

``redis_server`` is one server for the whole session (tests share it, each under its own key
prefix); tests that stop, restart or kill Redis take a private one from :func:`own_redis`
instead, so they never disturb the others.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

_SYSTEM_PORT = 6379  # the machine's own Redis, if it has one: never started, stopped or used


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != _SYSTEM_PORT:
            return port


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server subprocess; restarts on the same port. Without persistence by
    default (a restart empties it); ``persistent``: an append-only file fsynced on every
    write, so the data survives stop/start."""

    def __init__(self, workdir: Path, *, persistent: bool = False) -> None:
        self.persistent = persistent
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart, on the same port) and wait until it answers PING."""
        if self._proc is not None and self._proc.poll() is None:
            return
        log = (self._dir / "redis.log").open("ab")
        with log:
            self._proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--dir", str(self._dir),
                 *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent
                   else ["--appendonly", "no"])],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while not answers(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = (self._dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{tail}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Shut down cleanly (SIGTERM) and wait; idempotent."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Die at once (SIGKILL), as a crash would."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        end_process(proc, sig, 10)


def end_process(proc: subprocess.Popen[bytes] | None, sig: signal.Signals,
                grace_s: float) -> None:
    """Send ``sig`` to a still-running process and wait, SIGKILL after ``grace_s``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def own_redis() -> Iterator[RedisServer]:
    """A running private server, stopped and removed afterwards."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    with tempfile.TemporaryDirectory(prefix="hall-redis-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with own_redis() as server:
        yield server


def new_prefix() -> str:
    """A key prefix of one's own on a shared server."""
    return f"hall-test-{secrets.token_hex(5)}:"


def drop_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (and nothing else); returns how many."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        dropped = 0
        batch: list[bytes] = []
        pattern = "".join("\\" + c if c in "\\*?[]" else c for c in prefix) + "*"
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                dropped += int(client.delete(*batch))
                batch.clear()
        if batch:
            dropped += int(client.delete(*batch))
        return dropped
    finally:
        client.close()
