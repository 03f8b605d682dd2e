"""A second hall process for tests/test_redis_store.py: ``python -m tests.redis_worker MODE ...``.

* ``count URL PREFIX N``: print ``ready``, wait for a line on stdin, run N read-increment-write
  transactions on the shared counter record, print ``done <start> <end>`` (wall-clock times).
* ``hold URL PREFIX LEASE_S``: enter a transaction, buffer a write, print ``holding`` and sleep
  until killed (the lock is left to its lease).
"""

from __future__ import annotations

import asyncio
import sys
import time

from rooms.clerks import Clerk
from rooms.redis_store import RedisStore
from rooms.store import Store

COUNTER_ID = "counter"
HELD_ID = "held"


async def bump(store: Store, clerk_id: str = COUNTER_ID) -> None:
    """One read-increment-write of a record, yielding between the read and the write so that
    a store which did not serialise transactions would lose updates."""
    async with store.transaction():
        clerk = await store.get_clerk(clerk_id)
        if clerk is None:
            clerk = Clerk(clerk_id, "counter", [])
        await asyncio.sleep(0)
        clerk.sessions_handled += 1
        await store.put_clerk(clerk)


async def _count(url: str, prefix: str, times: int) -> None:
    store = RedisStore(url, prefix=prefix)
    await store.open()
    try:
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.time()
        for _ in range(times):
            await bump(store)
        print(f"done {start} {time.time()}", flush=True)
    finally:
        await store.close()


async def _hold(url: str, prefix: str, lease_s: float) -> None:
    store = RedisStore(url, prefix=prefix, lease_s=lease_s)
    await store.open()
    async with store.transaction():
        await store.put_clerk(Clerk(HELD_ID, "never committed", []))
        print("holding", flush=True)
        await asyncio.sleep(3600)


def main(argv: list[str]) -> None:
    mode, url, prefix, value = argv
    if mode == "count":
        asyncio.run(_count(url, prefix, int(value)))
    elif mode == "hold":
        asyncio.run(_hold(url, prefix, float(value)))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
