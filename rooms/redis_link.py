"""What every Redis user of the hall shares: how to connect, what a failure becomes, and a
subscription that comes back by itself. The store (rooms/redis_store.py) and the signaling
state (signaling/redis_hub_state.py) each hold one RedisLink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rooms.aio import stop_tasks
from rooms.errors import StoreUnavailableError

T = TypeVar("T")


# How many requests of one link may be in flight at once, and how long a request waits for a
# free connection before it counts as Redis being unavailable. redis-py's default pool holds
# 100 and refuses the 101st at once ("Too many connections"): a burst of 400 position reads
# on one process answered 294 of them store_unavailable and failed the heartbeat with them.
# A bounded pool that makes the excess wait keeps Redis's connection count predictable (N
# processes x 2 links x POOL_SIZE) and turns a burst into a short queue; one Redis serves
# requests one at a time anyway, so more connections would not answer sooner.
POOL_SIZE = 64
POOL_WAIT_S = 5.0
# The liveness work (heartbeat, sweep) has a pool of its own: however long the main pool's
# queue, a process must not be declared dead because its heartbeat queued behind a burst.
URGENT_POOL_SIZE = 2


class RedisLink:
    """A connection pool with the hall's failure rules: socket timeouts of ``timeout_s``, one
    immediate retry on a fresh connection (a pooled one is stale after a Redis restart), never
    the default's seconds of backoff (callers retry whole commands), and connection trouble
    surfacing as :class:`StoreUnavailableError`. At most ``pool_size`` connections; a request
    finding them all busy waits up to ``pool_wait_s`` for one (then: unavailable).
    :attr:`urgent` is a second, small pool for work that must not queue behind the rest."""

    def __init__(self, url: str, timeout_s: float, what: str, *,
                 pool_size: int = POOL_SIZE, pool_wait_s: float = POOL_WAIT_S) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.pool_size = pool_size
        self.pool_wait_s = pool_wait_s
        self._what = what
        self._redis: aioredis.Redis | None = None
        # Told each request's duration in seconds and whether the connection failed
        # (server/metrics.py: hall_store_request_seconds); None: nothing measured.
        self.on_request: Callable[[float, bool], None] | None = None
        self._urgent: aioredis.Redis | None = None

    def _pool(self, size: int) -> aioredis.Redis:
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=size, timeout=self.pool_wait_s,
            socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
        return aioredis.Redis.from_pool(pool)

    @property
    def is_open(self) -> bool:
        return self._redis is not None

    def connect(self) -> aioredis.Redis:
        """The pool (created on first use; no I/O)."""
        if self._redis is None:
            self._redis = self._pool(self.pool_size)
            self._urgent = self._pool(URGENT_POOL_SIZE)
        return self._redis

    def detach(self) -> aioredis.Redis | None:
        """Forget the pool and hand it to the caller to close (after its last requests)."""
        client, self._redis = self._redis, None
        return client

    async def close(self, listener: asyncio.Task[None] | None,
                    last_word: Callable[[aioredis.Redis], Awaitable[Any]] | None = None
                    ) -> None:
        """Stop the listener, say ``last_word`` (best effort: Redis may be gone), close the
        pool; idempotent, and bounded by ``timeout_s`` each (never hangs on a dead Redis)."""
        if listener is not None:
            # Bounded: closing must not hang on a listener stuck in a client library.
            await stop_tasks([listener], patience_s=self.timeout_s)
        client = self.detach()
        urgent, self._urgent = self._urgent, None
        if urgent is not None:
            await urgent.aclose()
        if client is None:
            return
        if last_word is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(last_word(client), self.timeout_s)
        await client.aclose()

    @property
    def client(self) -> aioredis.Redis:
        if self._redis is None:
            raise StoreUnavailableError(f"{self._what} is not open")
        return self._redis

    @property
    def urgent(self) -> aioredis.Redis:
        """The small pool of the liveness work (heartbeat, sweep): never behind a burst."""
        if self._urgent is None:
            raise StoreUnavailableError(f"{self._what} is not open")
        return self._urgent

    async def io(self, request: Awaitable[T]) -> T:
        """Await one Redis request; connection trouble becomes StoreUnavailableError."""
        observe = self.on_request
        start = time.perf_counter() if observe is not None else 0.0
        try:
            result = await request
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if observe is not None:
                observe(time.perf_counter() - start, True)
            raise StoreUnavailableError(f"{self._what} unavailable: {exc}") from exc
        if observe is not None:
            observe(time.perf_counter() - start, False)
        return result

    async def ping(self) -> bool:
        """True if Redis answers now; never raises (for /readyz)."""
        client = self._redis
        if client is None:
            return False
        try:
            return bool(await asyncio.wait_for(client.ping(), self.timeout_s))
        except Exception:
            return False

    async def subscribe_forever(
        self, channel: str, on_message: Callable[[bytes], Awaitable[None]], *,
        logger: logging.Logger, what: str,
        on_subscribed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Hand every message of ``channel`` to ``on_message`` until cancelled; resubscribe
        by itself after an outage (``on_subscribed`` runs after each subscription), logging
        the outage once, not at every attempt."""
        # A client of its own, without a read timeout: a subscription may be silent for long,
        # and redis-py turns a cancel that races its read timeout into "no message", which
        # kept a listener alive after close() (seen in the tests).
        client = aioredis.from_url(self.url, socket_timeout=None,
                                   socket_connect_timeout=self.timeout_s,
                                   retry=Retry(NoBackoff(), 0))
        down = False
        try:
            while True:
                pubsub = client.pubsub()
                try:
                    await pubsub.subscribe(channel)
                    if down:
                        logger.info("%s back", what)
                        down = False
                    if on_subscribed is not None:
                        await on_subscribed()
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                           timeout=None)
                        if message is not None:
                            await on_message(message["data"])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not down:
                        logger.warning("%s down, reconnecting: %r", what, exc)
                        down = True
                finally:
                    with contextlib.suppress(Exception):
                        # redis-py leaves PubSub.aclose unannotated.
                        await cast(Any, pubsub).aclose()
                await asyncio.sleep(0.5)
        finally:
            await client.aclose()
