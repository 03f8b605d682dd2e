"""Per-principal rate limits on client events: token buckets per participant and event class.

Each participant (``resident:<id>``, ``kiosk:<point>``, ``clerk:<id>``, ...; an unauthenticated
socket by its sid) has one bucket per class of event it sends:

* ``general``: every event, whatever its name (20 a second sustained, bursts of 40): far above
  what a real client sends, far below a flood;
* ``take``: ``ticket.take`` (5 a minute): taking and leaving tickets in a loop fills the wall
  with abandons. A take the hall refused (no clerk on duty, queue full, ...) is given back;
* ``position``: ``ticket.position`` (1 a second, bursts of 5): positions are pushed anyway,
  the query is for a page that comes back to the foreground;
* ``relay``: ``rtc.signal``, on a budget of its own instead of ``general`` (50 a second,
  bursts of 200): trickle ICE sends a candidate per interface and protocol in a burst, and a
  dropped candidate can cost the call; it only ever reaches the sender's own session.

``ticket.leave`` is never refused for rate: a resident must always be able to leave.

A bucket holds ``burst`` tokens and gains ``per_s`` a second; an event takes one token or is
refused with :class:`~rooms.errors.RateLimitedError` (``too_many_requests``) and the seconds
until the next token (``retry_after_s``). Buckets are keyed by principal, not socket, so a
reconnect does not reset them. They are per process (a participant's events go to the
process holding its socket). Memory is bounded: at most ``max_keys`` principals are tracked,
the least recently seen dropped first (it starts again full, as an idle one would be).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from rooms.errors import RateLimitedError

__all__ = ["Rate", "RateLimiter", "RateLimits", "event_class"]


@dataclass(frozen=True, slots=True)
class Rate:
    per_s: float
    burst: float


@dataclass(frozen=True, slots=True)
class RateLimits:
    general: Rate = Rate(per_s=20.0, burst=40)
    take: Rate = Rate(per_s=5 / 60, burst=5)
    position: Rate = Rate(per_s=1.0, burst=5)
    relay: Rate = Rate(per_s=50.0, burst=200)


# The class of an event with a budget of its own: it also takes from ``general``, unless it
# is in _OWN_ONLY.
_CLASSES = {"ticket.take": "take", "ticket.position": "position", "rtc.signal": "relay"}
_OWN_ONLY = frozenset({"rtc.signal"})
_UNLIMITED = frozenset({"ticket.leave"})


def event_class(event: str) -> str | None:
    return _CLASSES.get(event)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class _Principal:
    buckets: dict[str, _Bucket] = field(default_factory=dict)


class RateLimiter:
    def __init__(self, limits: RateLimits | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.limits = limits or RateLimits()
        self._clock = clock
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _Principal] = OrderedDict()

    def _rate(self, name: str) -> Rate:
        rate: Rate = getattr(self.limits, name)
        return rate

    def _bucket(self, key: str, name: str, now: float) -> _Bucket:
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _Principal()
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        rate = self._rate(name)
        bucket = entry.buckets.get(name)
        if bucket is None:
            bucket = entry.buckets[name] = _Bucket(float(rate.burst), now)
        else:
            bucket.tokens = min(float(rate.burst), bucket.tokens + (now - bucket.at) * rate.per_s)
            bucket.at = now
        return bucket

    def _wait(self, name: str, bucket: _Bucket) -> float:
        rate = self._rate(name)
        seconds = (1.0 - bucket.tokens) / rate.per_s if rate.per_s > 0 else math.inf
        return max(0.1, round(seconds, 1))

    def check(self, key: str, event: str) -> None:
        """Take a token for ``event`` from ``key``'s buckets, or raise RateLimitedError (no
        token is taken from any bucket then)."""
        if event in _UNLIMITED:
            return
        now = self._clock()
        special = event_class(event)
        names = [] if event in _OWN_ONLY else ["general"]
        if special is not None:
            names.append(special)
        buckets = [(name, self._bucket(key, name, now)) for name in names]
        for name, bucket in buckets:
            if bucket.tokens < 1.0:
                wait = self._wait(name, bucket)
                raise RateLimitedError(
                    f"too many {event if name != 'general' else 'events'}; "
                    f"try again in {wait:g} s", retry_after_s=wait)
        for _, bucket in buckets:
            bucket.tokens -= 1.0

    def refund(self, key: str, event: str) -> None:
        """Give back the token of an event the hall refused (``take`` only: general stays)."""
        special = event_class(event)
        entry = self._keys.get(key)
        # Only a take: a refused position query or relay (a bogus id, another's session) still
        # cost the hall its work, and rtc.signal has no general budget behind it.
        if special != "take" or entry is None or special not in entry.buckets:
            return
        bucket = entry.buckets[special]
        bucket.tokens = min(float(self._rate(special).burst), bucket.tokens + 1.0)

    def forget(self, key: str) -> None:
        self._keys.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)
