"""The hall's exception tree.

Every error the domain core raises is a :class:`HallError` with a stable ``code`` that the
signaling layer forwards to clients unchanged, and a human message that names the object and
the state that made the operation illegal.
"""

from __future__ import annotations


class HallError(Exception):
    """Base of every error the hall raises on purpose."""

    code = "hall_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class InvalidStateError(HallError):
    """An operation is not allowed in the object's current state."""

    code = "invalid_state"


class NotFoundError(HallError):
    """A ticket, clerk, matter or other object does not exist."""

    code = "not_found"


class NotAllowedError(HallError):
    """The caller may not act on this object (wrong clerk, wrong role)."""

    code = "not_allowed"


class QueueFullError(HallError):
    """The matter's queue has reached its configured maximum length."""

    code = "queue_full"


class OutOfHoursError(HallError):
    """The hall (or this matter) is outside its service hours."""

    code = "out_of_hours"


class NoClerkOnDutyError(HallError):
    """No clerk serving the matter is on duty and the resident did not choose to wait."""

    code = "no_clerk_on_duty"


class ValidationError(HallError):
    """Input data is malformed (a bad outcome code, an empty reason, ...)."""

    code = "invalid_input"


class CatalogError(HallError):
    """The catalog file is invalid; the message names the bad entry."""

    code = "catalog_invalid"


class StoreError(HallError):
    """The live-state store failed a command; the command did not take effect."""

    code = "store_error"


class StoreUnavailableError(StoreError):
    """The live-state store cannot be reached; new work is refused until it is back."""

    code = "store_unavailable"


class StoreLockLostError(StoreError):
    """A command held the hall lock longer than its lease and another process took it over:
    its changes were refused (nothing was written). Retrying the command is safe."""

    code = "store_lock_lost"


class AuthError(HallError):
    """No valid credentials (missing, wrong, expired token or password)."""

    code = "unauthenticated"


class ForbiddenError(HallError):
    """The caller's role or identity may not perform this action."""

    code = "forbidden"


class ThrottledError(HallError):
    """Too many failed attempts from this address; try again after ``retry_after_s``."""

    code = "too_many_attempts"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimitedError(ThrottledError):
    """One principal sent events of one class faster than its budget allows (per-principal
    rate limits, see signaling/ratelimit.py); try again after ``retry_after_s``."""

    code = "too_many_requests"
