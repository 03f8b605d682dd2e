"""The supervisors' wallboard and the clerks' queue view, built from the hall's state (no I/O).

Both are *state*, not events: each push replaces the one before, so the hub sends them
unnumbered and only when they changed (docs/protocol.md, ``wall.update``, ``queues.update``).
"Changed" leaves out the passing of time: waits go out as seconds at ``at`` and the pages
keep counting from there, while the fingerprint holds the head tickets' join times instead.
A queue that merely keeps waiting is therefore not re-sent every second, but a new ticket at
its head, a clerk changing state or an alert appearing is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from rooms.catalog import Catalog
from rooms.clerks import ClerkState
from rooms.errors import NotFoundError
from rooms.policy import QueuePolicy
from signaling.kiosks import KioskStatus
from signaling.scope import Scope

# The wall's per-department clerk counts, one bucket per clerk state.
CLERK_BUCKETS = ("available", "offered", "in_session", "wrap_up", "on_break", "logged_out")
assert set(CLERK_BUCKETS) == {s.value for s in ClerkState}


@dataclass(frozen=True, slots=True)
class Board:
    """A view ready to send, and the fingerprint that says whether it changed."""

    view: dict[str, Any]
    key: bytes


@dataclass(frozen=True, slots=True)
class LiveSession:
    """A session in progress, as the wall lists it."""

    session_id: str
    ticket_number: str
    matter_id: str
    clerk_id: str | None
    clerk_name: str
    channel: str
    service_point_id: str | None
    started_at: float | None
    monitors: int

    def to_dict(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "ticket_number": self.ticket_number,
                "matter_id": self.matter_id, "clerk_id": self.clerk_id,
                "clerk_name": self.clerk_name, "channel": self.channel,
                "service_point_id": self.service_point_id, "started_at": self.started_at,
                "monitors": self.monitors}


def _fingerprint(timeless: Any) -> bytes:
    return hashlib.blake2b(orjson.dumps(timeless), digest_size=16).digest()


def _wait(at: float, since: float | None, waiting: int) -> float | None:
    if since is None or waiting <= 0:
        return None
    return round(max(0.0, at - since), 1)


def _without(item: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != key}


def clerk_departments(catalog: Catalog, clerk_id: str) -> list[str]:
    """The departments of the clerk's primary matters (secondary skills do not count)."""
    try:
        matters = catalog.clerk_matters(clerk_id)
    except NotFoundError:
        return []  # a clerk no longer in the catalog: in no department
    return sorted({catalog.matters[m].department_id for m in matters if m in catalog.matters})


def build_wall(
    catalog: Catalog,
    policy: QueuePolicy,
    snapshot: Mapping[str, Any],
    stats: Mapping[str, Mapping[str, int]],
    kiosks: Iterable[KioskStatus],
    sessions: Sequence[LiveSession],
    cases: Mapping[str, int],
    *,
    scope: Scope | None = None,
    ticket_departments: Mapping[str, str] | None = None,
) -> Board:
    """The wall from ``Hall.snapshot()``, ``Hall.day_stats()``, the kiosk registry, the live
    sessions and the 办不成事 counts (``open``: not closed, ``overdue``; the caller gives
    those of ``scope``).

    A department supervisor's ``scope`` bounds it: its departments' queues and figures, the
    clerks serving them (with only those departments, and the ticket a clerk holds only if
    ``ticket_departments`` puts it in scope), sessions of their matters and the alerts of all
    these. Kiosks stay whole: every point serves every department, and a kiosk row names no
    resident or matter."""
    scope = scope or Scope.everything()
    at = float(snapshot["at"])
    queues = {m["id"]: m for m in snapshot["matters"]}
    heads: dict[str, float | None] = {}
    matters: list[dict[str, Any]] = []
    for matter in catalog.matters.values():
        if not scope.covers_department(matter.department_id):
            continue
        queue = queues.get(matter.id, {})
        waiting = int(queue.get("queued", 0))
        head = queue.get("head_joined_at") if waiting else None
        heads[matter.id] = head
        day = stats.get(matter.id, {})
        matters.append({
            "id": matter.id, "name": matter.name, "name_en": matter.name_en,
            "department_id": matter.department_id, "waiting": waiting,
            "oldest_wait_s": _wait(at, head, waiting), "on_duty": int(queue.get("on_duty", 0)),
            "answered_today": day.get("answered", 0),
            "answered_in_sl_today": day.get("answered_in_sl", 0),
            "abandoned_today": day.get("abandoned", 0),
        })

    clerks: list[dict[str, Any]] = []
    buckets: dict[str, dict[str, int]] = {
        d: dict.fromkeys(CLERK_BUCKETS, 0) for d in catalog.departments}
    for clerk in snapshot["clerks"]:
        serves = [d for d in clerk_departments(catalog, clerk["id"])
                  if scope.covers_department(d)]
        if not serves and not scope.whole_hall:
            continue  # serves none of the scope's departments
        for department_id in serves:
            counts = buckets.setdefault(department_id, dict.fromkeys(CLERK_BUCKETS, 0))
            counts[clerk["state"]] = counts.get(clerk["state"], 0) + 1
        ticket_id = clerk["ticket_id"]
        if ticket_id is not None and not scope.covers_department(
                (ticket_departments or {}).get(ticket_id)):
            ticket_id = None  # another department's resident
        clerks.append({
            "id": clerk["id"], "name": clerk["name"], "state": clerk["state"],
            "since": clerk["since"], "ticket_id": ticket_id,
            "break_reason": clerk["break_reason"], "department_ids": serves,
            "wrapup_overdue": clerk["wrapup_overdue"],
        })

    departments: list[dict[str, Any]] = []
    for department in catalog.departments.values():
        if not scope.covers_department(department.id):
            continue
        own = [m for m in matters if m["department_id"] == department.id]
        waits = [m["oldest_wait_s"] for m in own if m["oldest_wait_s"] is not None]
        departments.append({
            "id": department.id, "name": department.name, "name_en": department.name_en,
            "waiting": sum(m["waiting"] for m in own),
            "oldest_wait_s": max(waits) if waits else None,
            "answered_today": sum(m["answered_today"] for m in own),
            "answered_in_sl_today": sum(m["answered_in_sl_today"] for m in own),
            "abandoned_today": sum(m["abandoned_today"] for m in own),
            "clerks": buckets[department.id],
        })

    kiosk_rows: list[dict[str, Any]] = []
    kiosk_alerts: list[dict[str, Any]] = []
    health_alerts: list[dict[str, Any]] = []
    for status in kiosks:
        point = catalog.service_points.get(status.id)
        kiosk_rows.append({
            "id": status.id, "name": point.name if point else status.id,
            "street_id": point.street_id if point else None, "online": status.online,
            "since": status.since,
            "health": status.health.to_dict() if status.health is not None else None,
            "health_at": status.health_at,
        })
        if status.went_away:
            kiosk_alerts.append({"kind": "kiosk_offline", "kiosk_id": status.id,
                                 "since": status.since})
        elif status.online and status.health is not None and status.health.failed:
            # Only while online: an offline kiosk's last report is stale, and it already
            # has its offline alert.
            health_alerts.append({"kind": "kiosk_health", "kiosk_id": status.id,
                                  "failed": status.health.failed})

    alerts: list[dict[str, Any]] = [
        {"kind": "oldest_wait", "matter_id": m["id"], "wait_s": m["oldest_wait_s"]}
        for m in matters
        if m["oldest_wait_s"] is not None and m["oldest_wait_s"] >= policy.wait_alert_s
    ]
    alerts += [{"kind": "wrapup_overdue", "clerk_id": c["id"]} for c in clerks
               if c["wrapup_overdue"]]
    alerts += kiosk_alerts + health_alerts

    view: dict[str, Any] = {
        "at": at,
        "service_level_s": policy.service_level_s,
        "wait_alert_s": policy.wait_alert_s,
        "departments": departments,
        "matters": matters,
        "clerks": clerks,
        "kiosks": kiosk_rows,
        "sessions": [s.to_dict() for s in sorted(
            sessions, key=lambda s: (s.started_at or 0.0, s.session_id))
            if scope.covers_matter(catalog, s.matter_id)],
        "alerts": alerts,
        "cases": {"open": int(cases.get("open", 0)), "overdue": int(cases.get("overdue", 0))},
        "scope": scope.to_dict(),
    }
    timeless = {
        **_without(view, "at"),
        "departments": [_without(d, "oldest_wait_s") for d in departments],
        "matters": [_without(m, "oldest_wait_s") for m in matters],
        "alerts": [_without(a, "wait_s") for a in alerts],
        "heads": heads,
    }
    return Board(view, _fingerprint(timeless))


def build_queues(catalog: Catalog, snapshot: Mapping[str, Any], clerk_id: str) -> Board:
    """The queues of the matters one clerk serves: primary skills first, then secondary."""
    at = float(snapshot["at"])
    queues = {m["id"]: m for m in snapshot["matters"]}
    try:
        primary = catalog.clerk_matters(clerk_id)
        secondary = catalog.clerk_secondary_matters(clerk_id)
    except NotFoundError:
        primary = secondary = frozenset()
    rows: list[dict[str, Any]] = []
    heads: dict[str, float | None] = {}
    for is_primary, ids in ((True, primary), (False, secondary)):
        for matter in catalog.matters.values():
            if matter.id not in ids:
                continue
            queue = queues.get(matter.id, {})
            waiting = int(queue.get("queued", 0))
            head = queue.get("head_joined_at") if waiting else None
            heads[matter.id] = head
            rows.append({
                "matter_id": matter.id, "name": matter.name, "name_en": matter.name_en,
                "department_id": matter.department_id, "primary": is_primary,
                "waiting": waiting, "oldest_wait_s": _wait(at, head, waiting),
                "on_duty": int(queue.get("on_duty", 0)),
            })
    timeless = [[_without(r, "oldest_wait_s") for r in rows], heads]
    # ``at``: when oldest_wait_s held (a view is resent only when it changed, not as time
    # passes; the client counts on from ``at``).
    return Board({"at": at, "queues": rows}, _fingerprint(timeless))
