"""What can go wrong for a kiosk agent, as exceptions its caller can tell apart."""

from __future__ import annotations

from typing import Any


class KioskError(Exception):
    """Base class of the agent's errors."""


class KioskAuthError(KioskError):
    """The hall refused the device secret (or the service point id). Retrying cannot help:
    the agent stops instead of hammering the hall, which would lock its address out."""


class KioskStopped(KioskError):
    """The agent has stopped (closed, replaced by another instance, or refused); ``reason``
    says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the kiosk agent has stopped: {reason}")
        self.reason = reason


class KioskDisconnected(KioskError):
    """Not connected to the hall (or the connection dropped before the hall answered)."""


class HallRefused(KioskError):
    """The hall answered an event or request with ``ok: false``."""

    def __init__(self, event: str, error: Any) -> None:
        details = error if isinstance(error, dict) else {}
        self.event = event
        self.code = str(details.get("code") or "unknown")
        self.hall_message = str(details.get("message") or "")
        self.details: dict[str, Any] = dict(details)
        super().__init__(f"{event}: {self.code}: {self.hall_message}")


class HallUnavailable(KioskError):
    """The hall could not be reached or answered with a server error: worth retrying."""


class Throttled(KioskError):
    """The hall refuses attempts from this address for now (429 / ``too_many_attempts``)."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"the hall asks to wait {retry_after_s:.0f} s before trying again")
        self.retry_after_s = retry_after_s
