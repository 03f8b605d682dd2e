"""Per-address counting of failed authentication attempts (logins, kiosk secrets, socket
tokens, resume tokens).

After ``limit`` failures within ``window_s`` seconds, :meth:`FailureThrottle.check` refuses
every further attempt from that address until the oldest counted failure ages out. Memory is
bounded: aged-out failures are pruned, and at most ``max_addresses`` addresses are tracked
(the least recently failing one is forgotten first).

This is per process; several hall processes each count their own failures, which only
multiplies an attacker's budget by the number of processes.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from rooms.errors import ThrottledError

__all__ = ["FailureThrottle"]


class FailureThrottle:
    def __init__(
        self,
        *,
        limit: int = 10,
        window_s: float = 1800.0,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 100_000,
    ) -> None:
        if limit < 1:
            raise ValueError("FailureThrottle: limit must be >= 1")
        if window_s <= 0:
            raise ValueError("FailureThrottle: window_s must be > 0")
        if max_addresses < 1:
            raise ValueError("FailureThrottle: max_addresses must be >= 1")
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._clock = clock
        # address -> failure times (oldest first); ordered by most recent failure (newest last).
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._calls = 0

    def _recent(self, address: str, now: float) -> deque[float] | None:
        """The address's failures still inside the window (pruned in place), or None."""
        times = self._failures.get(address)
        if times is None:
            return None
        horizon = now - self.window_s
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def check(self, address: str) -> None:
        """Raise :class:`ThrottledError` if ``address`` has too many recent failures."""
        now = self._clock()
        times = self._recent(address, now)
        if times is None or len(times) < self.limit:
            return
        # Allowed again once enough failures age out to drop below the limit.
        unblock_at = times[len(times) - self.limit] + self.window_s
        retry_after = max(1.0, float(math.ceil(unblock_at - now)))
        raise ThrottledError(
            f"too many failed attempts; try again in {int(retry_after)} s",
            retry_after_s=retry_after,
        )

    def failed(self, address: str) -> None:
        """Count one failed attempt from ``address``."""
        now = self._clock()
        times = self._recent(address, now)
        if times is None:
            times = deque()
            self._failures[address] = times
        else:
            self._failures.move_to_end(address)
        times.append(now)
        # Only the newest `limit` failures matter for the decision; keep no more.
        while len(times) > self.limit:
            times.popleft()
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
        self._calls += 1
        if self._calls % 1024 == 0:
            self._prune(now)

    def failures(self, address: str) -> int:
        """How many failures from ``address`` are still inside the window."""
        times = self._recent(address, self._clock())
        return 0 if times is None else len(times)

    def _prune(self, now: float) -> None:
        """Forget addresses whose failures have all aged out (oldest-failing first)."""
        horizon = now - self.window_s
        for address in list(self._failures):
            times = self._failures[address]
            if times and times[-1] > horizon:
                break  # ordered by last failure: every later address is still live
            del self._failures[address]

    def __len__(self) -> int:
        return len(self._failures)
