"""Tunable rules of the queue (timeouts, limits, priority credit). All from configuration."""

from __future__ import annotations

from dataclasses import dataclass

from rooms.errors import ValidationError


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    offer_timeout_s: float = 20.0  # an unanswered offer goes back to the queue after this
    max_missed_offers: int = 2  # K misses in a row put the clerk on break automatically
    wrapup_s: float = 60.0  # wrap-up timer after each session
    wrapup_max_extension_s: float = 300.0  # total extension a clerk may add to one wrap-up
    abandon_grace_s: float = 30.0  # a disconnected waiting resident keeps the ticket this long
    priority_credit_s: float = 600.0  # elderly/disabled are ordered as if they came this early
    default_max_queue: int = 500  # per matter, unless the catalog sets max_queue
    max_wait_s: float | None = 4 * 3600.0  # a ticket waiting longer times out (None: never)
    enforce_hours: bool = True  # refuse tickets outside service hours
    decline_cooldown_s: float | None = None  # None: same as offer_timeout_s
    handle_time_alpha: float = 0.2  # weight of the newest session in the handle-time average
    service_level_s: float = 300.0  # answered within this wait counts toward the service level
    wait_alert_s: float = 600.0  # the wallboard alerts when a queue's oldest wait reaches this

    def __post_init__(self) -> None:
        positive = {
            "offer_timeout_s": self.offer_timeout_s,
            "wrapup_s": self.wrapup_s,
            "abandon_grace_s": self.abandon_grace_s,
            "service_level_s": self.service_level_s,
            "wait_alert_s": self.wait_alert_s,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValidationError(f"policy {name} must be > 0, got {value}")
        if self.max_missed_offers < 1:
            raise ValidationError("policy max_missed_offers must be >= 1")
        if self.priority_credit_s < 0 or self.wrapup_max_extension_s < 0:
            raise ValidationError("policy credits and extensions must be >= 0")
        if self.default_max_queue < 1:
            raise ValidationError("policy default_max_queue must be >= 1")
        if self.max_wait_s is not None and self.max_wait_s <= 0:
            raise ValidationError("policy max_wait_s must be > 0 or None")
        if not 0 < self.handle_time_alpha <= 1:
            raise ValidationError("policy handle_time_alpha must be in (0, 1]")

    @property
    def cooldown_s(self) -> float:
        return self.offer_timeout_s if self.decline_cooldown_s is None else self.decline_cooldown_s
