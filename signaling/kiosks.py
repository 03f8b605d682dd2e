"""Kiosk presence and device health, one entry per service point of the catalog.

The hub tells the registry when a kiosk's connection comes and goes and what the kiosk reports
about its devices; every method says whether that was a *change*, so the hub writes the event
log on changes only (a kiosk reports its health every few minutes; a log line per report would
bury the failures). No I/O here.

Presence follows the socket, not the participant: a kiosk counts offline the moment its
connection drops, not after the resume grace, because the resident standing at it is cut off
at once and the supervisor should see that at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rooms.errors import NotFoundError

DEVICES = ("camera", "microphone", "speaker", "document_camera")


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """One ``kiosk.health`` report: each device ``ok``, ``failed`` or ``absent``."""

    camera: str
    microphone: str
    speaker: str
    document_camera: str
    detail: str | None = None
    agent: str | None = None

    @property
    def states(self) -> tuple[str, ...]:
        """What counts as the health *status*: the devices' states, not the free text."""
        return tuple(getattr(self, d) for d in DEVICES)

    @property
    def failed(self) -> list[str]:
        return [d for d in DEVICES if getattr(self, d) == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {**{d: getattr(self, d) for d in DEVICES}, "detail": self.detail}


@dataclass(slots=True)
class KioskStatus:
    id: str
    online: bool = False
    since: float | None = None  # last online/offline change; None: never seen since start
    health: DeviceReport | None = None  # the last report (kept while offline: last known)
    health_at: float | None = None

    @property
    def went_away(self) -> bool:
        """Offline after having been online: worth an alert (never-seen kiosks are not)."""
        return not self.online and self.since is not None


class Kiosks:
    """The registry: every catalog service point, seen or not."""

    def __init__(self, service_point_ids: Iterable[str]) -> None:
        self._status = {sp: KioskStatus(sp) for sp in service_point_ids}

    def get(self, kiosk_id: str) -> KioskStatus:
        status = self._status.get(kiosk_id)
        if status is None:
            raise NotFoundError(f'service point "{kiosk_id}" does not exist')
        return status

    def all(self) -> list[KioskStatus]:
        return list(self._status.values())

    def connected(self, kiosk_id: str, now: float) -> bool:
        """The kiosk's socket is here; True if it was offline (or never seen)."""
        return self._set_online(kiosk_id, True, now)

    def disconnected(self, kiosk_id: str, now: float) -> bool:
        """The kiosk's socket is gone; True if it was online."""
        return self._set_online(kiosk_id, False, now)

    def _set_online(self, kiosk_id: str, online: bool, now: float) -> bool:
        status = self._status.get(kiosk_id)
        if status is None or status.online == online:
            return False  # a point no longer in the catalog: nothing to show it on
        status.online, status.since = online, now
        return True

    def changes(self, kiosk_id: str, report: DeviceReport) -> bool:
        """Whether this report changes the kiosk's health status (the first one always does)."""
        health = self.get(kiosk_id).health
        return health is None or health.states != report.states

    def report(self, kiosk_id: str, report: DeviceReport, now: float) -> None:
        """Keep the kiosk's latest report and its time."""
        status = self.get(kiosk_id)
        status.health, status.health_at = report, now
