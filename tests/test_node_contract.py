"""The client contract, checked the way an outside client author would: from docs/protocol.md.

``tests/node/contract_scenario.js`` is written from the document alone and drives a whole
session with the official JavaScript client (socket.io-client 4.x on node) against a real demo
hall on a free loopback port: HTTP login and the demo identity token, both handshakes and
welcomes, a ticket, the offer and its accept, signaling and chat, a transport cut and a resume
whose replay must fill the gap with the original ``seq`` numbers, the end, wrap-up and rating,
then the error answers the document promises (event acks, refused handshakes, HTTP bodies).
Each check prints one line; the test fails with those lines when any check fails.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from rooms.errors import RateLimitedError
from signaling.ratelimit import Rate, RateLimiter, RateLimits
from tests.signalkit import PASSWORD, live_hall

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "contract_scenario.js"
NODE = shutil.which("node")

# The scenario's checks (one per line it prints); a check dropped from the script fails here.
MIN_CHECKS = 80


async def run_scenario(url: str) -> tuple[int, dict[str, Any], str]:
    """Run the node script without blocking the loop the hall is served from."""
    assert NODE is not None, "node is needed to run socket.io-client"
    assert (NODE_DIR / "node_modules" / "socket.io-client").is_dir(), "run npm ci in tests/node"
    process = await asyncio.create_subprocess_exec(
        NODE, str(SCRIPT), "--url", url, "--password", PASSWORD,
        cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    out = stdout.decode()
    lines = out.strip().splitlines()
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    assert process.returncode is not None
    return process.returncode, result, out + stderr.decode()


async def test_js_client_follows_the_documented_contract() -> None:
    """Every documented promise the scenario checks holds against a live hall."""
    async with live_hall() as hall:
        code, result, output = await run_scenario(hall.url)
    assert code == 0 and result.get("ok") is True, output
    failed = [name for name, passed in result["checks"].items() if not passed]
    assert not failed, output
    assert len(result["checks"]) >= MIN_CHECKS, output


def test_only_a_refused_take_is_given_back() -> None:
    """A refused ticket.position or rtc.signal spends its token (docs/protocol.md, "Rate
    limits"): a flood of bogus ids must meet the budget, and rtc.signal has no general budget
    behind its own."""
    limiter = RateLimiter(RateLimits(position=Rate(per_s=1e-9, burst=2),
                                     relay=Rate(per_s=1e-9, burst=2)), clock=lambda: 0.0)
    for event in ("ticket.position", "rtc.signal"):
        for _ in range(2):
            limiter.check("resident:a", event)
            limiter.refund("resident:a", event)  # the hub refunds every refused HallError
        with pytest.raises(RateLimitedError):
            limiter.check("resident:a", event)
    # ...while a refused take is still given back.
    limiter = RateLimiter(RateLimits(take=Rate(per_s=1e-9, burst=1)), clock=lambda: 0.0)
    for _ in range(3):
        limiter.check("resident:a", "ticket.take")
        limiter.refund("resident:a", "ticket.take")
