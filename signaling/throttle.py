"""Failed authentication attempts (logins, kiosk secrets, socket tokens, resume tokens, claim
codes), counted per account and per address in an :class:`~signaling.auth_state.AuthState`
shared by all processes (memory in embedded mode, Redis otherwise). The rules a client sees are
in docs/protocol.md, "Roles and authentication"; :class:`AuthThrottle` says why each exists.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from rooms.errors import ThrottledError
from signaling.auth_state import AuthState

__all__ = ["AuthThrottle"]


def _throttled(retry_after_s: float) -> ThrottledError:
    retry_after = max(1.0, float(math.ceil(retry_after_s)))
    return ThrottledError(f"too many failed attempts; try again in {int(retry_after)} s",
                          retry_after_s=retry_after)


class AuthThrottle:
    """The hall's failure throttle, its counters in a shared :class:`AuthState`.

    Two kinds of credential, two rules:

    * **Signed or random credentials** (hall tokens, identity tokens, resume tokens, bearer
      tokens of the file routes) cannot be guessed, so a valid one is always accepted, whatever
      its address did. Their failures count against the address (``tok:``, a fixed window of
      ``window_s`` from the first; apart from its login failures, so colleagues' typos never
      change what a stale token is told); once an address has ``limit`` of them, its
      *refused* tokens answer ``too_many_attempts`` instead of ``unauthenticated``
      (:meth:`refused`).
    * **Guessable credentials** (passwords, kiosk secrets: "logins") count against the account
      (``acct:``), against the (account, address) pair (``pair:``) and against the address.
      An account with ``limit`` failures backs off: after its latest failure, attempts on it
      are refused for ``backoff_base_s`` doubling with every further failure, up to
      ``window_s`` -- but only from addresses that failed on that account themselves; a clean
      address (no failure on that account within the window) is always let try, so an attacker
      elsewhere cannot lock the owner out. An address with ``address_limit`` failures (spraying
      many accounts) is refused for every account that has not logged in successfully from it
      within ``known_ttl_s`` (``known:``), so colleagues behind the same NAT who have logged in
      from there before are not locked out by one of them, nor by an attacker among them.

    The checks come before the (argon2) verification, so a refused attempt costs no CPU.
    """

    def __init__(
        self,
        state: AuthState,
        *,
        limit: int = 10,
        window_s: float = 1800.0,
        address_limit: int | None = None,
        backoff_base_s: float = 60.0,
        known_ttl_s: float = 30 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if limit < 1:
            raise ValueError("AuthThrottle: limit must be >= 1")
        if window_s <= 0:
            raise ValueError("AuthThrottle: window_s must be > 0")
        self.state = state
        self.limit = limit
        self.window_s = window_s
        # Several people share an address (a service centre's NAT): allow them several
        # accounts' worth of typos before the address itself counts as spraying.
        self.address_limit = address_limit if address_limit is not None else 5 * limit
        self.backoff_base_s = backoff_base_s
        self.known_ttl_s = known_ttl_s
        self._clock = clock

    async def _over_limit(self, key: str) -> None:
        """Raise :class:`ThrottledError` if ``key`` has ``limit`` strikes (fixed window)."""
        now = self._clock()
        found = await self.state.strikes(key, now)
        if found is not None and found.count >= self.limit:
            raise _throttled(found.expires_at - now)

    # -- tokens (address only) -----------------------------------------------------------
    async def check(self, address: str) -> None:
        """Raise :class:`ThrottledError` if ``address`` has ``limit`` recent refused tokens."""
        await self._over_limit("tok:" + address)

    async def failed(self, address: str) -> None:
        """Count one refused token from ``address``."""
        await self.state.strike("tok:" + address, self._clock(), self.window_s, slide=False)

    async def refused(self, address: str) -> None:
        """A token from ``address`` was refused: raise :class:`ThrottledError` if the address
        was already over its limit, else count the failure (the caller then raises its own
        error)."""
        await self.check(address)
        await self.failed(address)

    async def failures(self, address: str) -> int:
        """How many failed logins from ``address`` are still counted."""
        found = await self.state.strikes("addr:" + address, self._clock())
        return 0 if found is None else found.count

    # -- logins (account and address) --------------------------------------------------------
    def backoff_s(self, failures: int) -> float:
        """How long an account with ``failures`` failures is refused after the last one."""
        if failures < self.limit:
            return 0.0
        return float(min(self.window_s,
                         self.backoff_base_s * 2.0 ** min(failures - self.limit, 32)))

    async def login_check(self, account: str, address: str) -> None:
        """Raise :class:`ThrottledError` if a login on ``account`` from ``address`` must not
        be tried now (see the class docstring)."""
        now = self._clock()
        state = self.state
        pair = f"{account}|{address}"
        spraying = await state.strikes("addr:" + address, now)
        if (spraying is not None and spraying.count >= self.address_limit
                and not await state.flagged("known:" + pair, now)):
            raise _throttled(spraying.expires_at - now)
        account_strikes = await state.strikes("acct:" + account, now)
        if account_strikes is None or account_strikes.count < self.limit:
            return
        until = account_strikes.last + self.backoff_s(account_strikes.count)
        if until > now and await state.strikes("pair:" + pair, now) is not None:
            raise _throttled(until - now)

    async def login_failed(self, account: str, address: str) -> None:
        now = self._clock()
        pair = f"{account}|{address}"
        await self.state.strike("acct:" + account, now, self.window_s, slide=True)
        await self.state.strike("pair:" + pair, now, self.window_s, slide=True)
        await self.state.strike("addr:" + address, now, self.window_s, slide=False)

    async def login_succeeded(self, account: str, address: str) -> None:
        """The owner proved themselves from ``address``: its pair is clean and known."""
        now = self._clock()
        pair = f"{account}|{address}"
        await self.state.clear("pair:" + pair)
        await self.state.flag("known:" + pair, now, self.known_ttl_s)

    # -- other guessable lookups (claim codes) -----------------------------------------------
    async def lookup_check(self, who: str) -> None:
        """Raise :class:`ThrottledError` if ``who`` has ``limit`` failed lookups."""
        await self._over_limit("lookup:" + who)

    async def lookup_failed(self, who: str) -> None:
        await self.state.strike("lookup:" + who, self._clock(), self.window_s, slide=False)
