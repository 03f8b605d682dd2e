"""Time sources for the domain core.

The core never calls ``time`` itself: it asks a :class:`Clock`, so tests can drive every timer
(offer timeouts, wrap-up, grace periods, widening) deterministically with :class:`ManualClock`.
Times are POSIX seconds as floats (wall clock, so that several processes agree on deadlines).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    """Wall-clock time; shared by every process of the hall (NTP-synchronised hosts)."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told to (tests, simulations, benchmarks)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        return self._now

    def set(self, when: float) -> None:
        if when < self._now:
            raise ValueError("a clock cannot go backwards")
        self._now = when
