"""Capped exponential backoff with jitter, for reconnecting and retrying."""

from __future__ import annotations

import random


class Backoff:
    """Delays of ``initial · 2ⁿ`` capped at ``maximum``, each drawn from the upper half of
    that step ("equal jitter").

    The jitter matters on the hall's side: when the hall restarts, a hundred kiosks must not
    come back in the same instant. Keeping the lower half out guarantees a minimum pause, so
    a kiosk that keeps failing never spins.
    """

    def __init__(self, initial_s: float = 0.5, maximum_s: float = 30.0,
                 rng: random.Random | None = None) -> None:
        if not 0 < initial_s <= maximum_s:
            raise ValueError("backoff: 0 < initial <= maximum")
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The pause before the next attempt; each call lengthens the following one."""
        step = min(self.maximum_s, self.initial_s * 2 ** min(self.attempts, 32))
        self.attempts += 1
        return self._rng.uniform(step / 2, step)

    def reset(self) -> None:
        """After a success: the next failure starts from the initial delay again."""
        self.attempts = 0
