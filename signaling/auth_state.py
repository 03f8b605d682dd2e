"""What authentication remembers between requests, shared by every hall process: revoked
tokens (by token id, and a principal's last logout), failure counters of the throttle, and
the (account, address) pairs that have logged in successfully.

The port holds the policy-free primitives only; the policy (limits, back-off, what is refused)
is :class:`signaling.throttle.AuthThrottle`'s and :class:`signaling.identity.TokenService`'s.
Two backends: :class:`MemoryAuthState` (one process, the embedded hall) and
:class:`RedisAuthState` (every process of a Redis hall sees the same counters and revocations).

Redis keys (after the hall's prefix, ``auth:`` then the caller's key):

=========================  ======  ==================================================
key                        type    contents
=========================  ======  ==================================================
``auth:s:<key>``           hash    ``n`` failures, ``last`` failure (POSIX time); TTL
``auth:f:<key>``           string  a flag and its value (revoked token id, a principal's last
                                   logout time, known login pair); TTL
=========================  ======  ==================================================

Every key expires by itself, so nothing here grows without bound. Flags are written only on
behalf of someone authenticated (a refresh, a logout, a successful login), counters by anyone:
the memory backend bounds them apart, so a flood of failures never evicts a revocation.
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from rooms.redis_link import RedisLink

__all__ = ["AuthState", "MemoryAuthState", "RedisAuthState", "Strikes"]


@dataclass(frozen=True, slots=True)
class Strikes:
    """Failures counted under one key: how many, the last one, and when the count is
    forgotten (POSIX times)."""

    count: int
    last: float
    expires_at: float


class AuthState(abc.ABC):
    """Counters and flags with a time to live."""

    @abc.abstractmethod
    async def strike(self, key: str, now: float, ttl_s: float, *, slide: bool) -> Strikes:
        """Count one failure under ``key``. The count is forgotten ``ttl_s`` after the first
        failure, or after the last one if ``slide``."""

    @abc.abstractmethod
    async def strikes(self, key: str, now: float) -> Strikes | None:
        """The failures still counted under ``key``, or None."""

    @abc.abstractmethod
    async def clear(self, key: str) -> None:
        """Forget the failures under ``key``."""

    @abc.abstractmethod
    async def flag(self, key: str, now: float, ttl_s: float, value: float = 1.0) -> None:
        """Set ``key`` to ``value`` for ``ttl_s`` seconds."""

    @abc.abstractmethod
    async def flag_value(self, key: str, now: float) -> float | None:
        """The value of ``key``, or None if it is not set."""

    async def flagged(self, key: str, now: float) -> bool:
        """Whether ``key`` is set."""
        return await self.flag_value(key, now) is not None

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release connections; idempotent."""


class MemoryAuthState(AuthState):
    """In one process. Bounded: at most ``max_keys`` counters and as many flags (the oldest
    written go first; expired ones are dropped as they are met)."""

    def __init__(self, *, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("MemoryAuthState: max_keys must be >= 1")
        self._max = max_keys
        self._strikes: OrderedDict[str, Strikes] = OrderedDict()
        # key -> (expiry, value)
        self._flags: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def strike(self, key: str, now: float, ttl_s: float, *, slide: bool) -> Strikes:
        old = await self.strikes(key, now)
        if old is None:
            new = Strikes(1, now, now + ttl_s)
        else:
            new = Strikes(old.count + 1, now, now + ttl_s if slide else old.expires_at)
        self._strikes[key] = new
        self._strikes.move_to_end(key)
        while len(self._strikes) > self._max:
            self._strikes.popitem(last=False)
        return new

    async def strikes(self, key: str, now: float) -> Strikes | None:
        found = self._strikes.get(key)
        if found is not None and found.expires_at <= now:
            del self._strikes[key]
            return None
        return found

    async def clear(self, key: str) -> None:
        self._strikes.pop(key, None)

    async def flag(self, key: str, now: float, ttl_s: float, value: float = 1.0) -> None:
        if ttl_s <= 0:
            return
        self._flags[key] = (now + ttl_s, value)
        self._flags.move_to_end(key)
        while len(self._flags) > self._max:
            self._flags.popitem(last=False)

    async def flag_value(self, key: str, now: float) -> float | None:
        found = self._flags.get(key)
        if found is None:
            return None
        if found[0] <= now:
            del self._flags[key]
            return None
        return found[1]


# KEYS[1] the counter; ARGV: now, ttl (ms), slide (1/0). Returns {count, ttl left (ms)}.
_STRIKE = """
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[1], 'last', ARGV[1])
if n == 1 or ARGV[3] == '1' or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {n, redis.call('PTTL', KEYS[1])}
"""

_READ = """
local n = redis.call('HGET', KEYS[1], 'n')
if not n then return false end
return {tonumber(n), redis.call('HGET', KEYS[1], 'last'), redis.call('PTTL', KEYS[1])}
"""


class RedisAuthState(AuthState):
    """In Redis, shared by every process with the same URL and prefix. Times to live are
    Redis's own (PEXPIRE), so the processes' clocks need not agree to the millisecond."""

    def __init__(self, url: str, *, prefix: str = "hall:", timeout_s: float = 2.0) -> None:
        self._link = RedisLink(url, timeout_s, "Redis auth state")
        self._p = prefix + "auth:"
        self._scripts: dict[str, Any] = {}

    def _script(self, name: str) -> Any:
        if name not in self._scripts:
            client = self._link.connect()  # the pool is made on first use; no I/O
            self._scripts["strike"] = client.register_script(_STRIKE)
            self._scripts["read"] = client.register_script(_READ)
        return self._scripts[name]

    async def strike(self, key: str, now: float, ttl_s: float, *, slide: bool) -> Strikes:
        script = self._script("strike")
        count, left_ms = await self._link.io(script(
            keys=[self._p + "s:" + key],
            args=[repr(now), max(1, int(ttl_s * 1000)), "1" if slide else "0"]))
        return Strikes(int(count), now, now + max(0, int(left_ms)) / 1000)

    async def strikes(self, key: str, now: float) -> Strikes | None:
        script = self._script("read")
        found = await self._link.io(script(keys=[self._p + "s:" + key], args=[]))
        if not found:
            return None
        count, last, left_ms = found
        return Strikes(int(count), float(last), now + max(0, int(left_ms)) / 1000)

    async def clear(self, key: str) -> None:
        self._script("read")
        await self._link.io(self._link.client.delete(self._p + "s:" + key))

    async def flag(self, key: str, now: float, ttl_s: float, value: float = 1.0) -> None:
        if ttl_s <= 0:
            return
        self._script("read")
        await self._link.io(self._link.client.set(self._p + "f:" + key, repr(value),
                                                  px=max(1, int(ttl_s * 1000))))

    async def flag_value(self, key: str, now: float) -> float | None:
        self._script("read")
        found = await self._link.io(self._link.client.get(self._p + "f:" + key))
        return None if found is None else float(found)

    async def close(self) -> None:
        self._scripts.clear()
        await self._link.close(None)

