"""Protocol compatibility with the official JavaScript client (socket.io-client 4.x, on node).

A real hall listens on a free loopback port (the app built by ``create_app``, served by
aiohttp's runner in the test's own loop) and ``tests/node/client_roundtrip.js`` connects as an
app resident, over the client's default transports (long-polling, then the upgrade to
websocket) and over websocket only, and completes ``ticket.take`` round trips.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rooms.catalog import load_catalog
from server.app import create_app
from server.config import Settings

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "client_roundtrip.js"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None, reason="node and npm are needed to run socket.io-client"
)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """The locked npm packages of tests/node, installed once when missing."""
    modules = NODE_DIR / "node_modules"
    if not (modules / "socket.io-client").is_dir():
        assert NPM is not None
        result = subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        # A failed install is a broken set-up, not a reason to skip: fail with npm's words.
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}{result.stderr}"
    return modules


def served_matter() -> str:
    """A matter a demo clerk serves, so `wait` is allowed even with nobody logged in."""
    catalog = load_catalog()
    served = {
        m.id
        for clerk in catalog.clerks.values()
        for m in catalog.matters.values()
        if m.id in clerk.matters or m.department_id in clerk.departments
    }
    return next(m for m in catalog.matters if m in served)


@pytest.fixture
async def hall_url(tmp_path: Path) -> AsyncIterator[str]:
    """A demo hall served over real TCP on a free loopback port."""
    settings = Settings.from_env(
        {"HALL_DATA_DIR": str(tmp_path), "HALL_DEMO_PASSWORD": "demo-pass-123"}
    )
    runner = web.AppRunner(create_app(settings, demo=True))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def run_client(url: str, transport: str) -> tuple[int, dict[str, Any], str]:
    """Run the node script without blocking the loop the hall is served from."""
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE,
        str(SCRIPT),
        "--url",
        url,
        "--matter",
        served_matter(),
        "--transport",
        transport,
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    lines = stdout.decode().strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    assert process.returncode is not None
    return process.returncode, result, stderr.decode()


@pytest.mark.parametrize("transport", ["default", "websocket"])
async def test_js_client_ticket_round_trip(
    node_modules: Path, hall_url: str, transport: str
) -> None:
    """socket.io-client gets welcome, a refused malformed ticket.take and an acked valid one."""
    code, result, stderr = await run_client(hall_url, transport)
    assert code == 0, (result, stderr)
    assert result["ok"] is True
    expected = {"first_transport", "welcome", "malformed_refused", "ticket_taken", "ticket_left"}
    if transport == "default":
        expected.add("upgraded")  # long-polling first, then the upgrade to websocket
    assert result["checks"] == dict.fromkeys(expected, True)
