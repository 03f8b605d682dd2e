"""The hall's event log records (the equivalent of Asterisk's ``queue_log``).

Every state change of a ticket or clerk produces exactly one :class:`HallEvent`. The engine hands
them to the store's outbox in the same step as the state change, and the records writer moves them
to the records database. Reports are computed from this log alone, so an event carries every
identifier a report may group by (matter, department, clerk, service point, channel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    # ticket lifecycle
    # ticket created and waiting (data: position, priority, kind, callback, number)
    ENTER_QUEUE = "enter_queue"
    CALLBACK_REQUESTED = "callback_requested"  # waiting ticket turned into a callback request
    # ticket offered (reserved) to a clerk (data: timeout_s, widened)
    OFFER = "offer"
    ACCEPT = "accept"                    # clerk accepted the offer (data: wait_s)
    DECLINE = "decline"                  # clerk declined the offer
    MISS = "miss"                        # offer timed out (data: missed_in_row)
    SESSION_START = "session_start"      # media session begins (data: wait_s)
    SESSION_END = "session_end"          # session ended (data: talk_s, ended_by)
    REQUEUE = "requeue"                  # ticket back in the queue with priority (data: reason)
    WRAPUP_START = "wrapup_start"        # clerk enters wrap-up (data: deadline)
    WRAPUP_EXTEND = "wrapup_extend"      # wrap-up timer extended (data: seconds)
    WRAPUP_END = "wrapup_end"            # outcome recorded (data: outcome, reason, wrapup_s)
    TRANSFER = "transfer"                # ticket moved (data: from_matter, to_matter, to_clerk)
    # resident left / disconnected past grace (data: position, wait_s, reason)
    ABANDON = "abandon"
    TIMEOUT = "timeout"                  # ticket timed out (max wait / callback expired)
    DONE = "done"                        # ticket finished
    # the live state of an open ticket was lost (an empty Redis, an embedded hall restarted):
    # the hall closes it in the log, once (data: reason "state_lost", last_kind, detected)
    STATE_LOST = "state_lost"
    # clerk state
    CLERK_LOGIN = "clerk_login"
    CLERK_LOGOUT = "clerk_logout"
    CLERK_AVAILABLE = "clerk_available"
    CLERK_BREAK = "clerk_break"          # data: reason, auto (missed offers)
    # supervision
    MONITOR_JOIN = "monitor_join"        # a supervisor silently joined a session (data: supervisor)
    MONITOR_LEAVE = "monitor_leave"
    CLERK_NOTE = "clerk_note"            # the clerk's private note on a live session (data: text)
    # the call funnel and quality of a session as its sides reported them (call.report), once
    # when the session ends (data: outcome, resident, clerk; docs/queueing.md)
    CALL_QUALITY = "call_quality"
    # kiosks (service points); service_point_id is set, ticket_id is not
    KIOSK_ONLINE = "kiosk_online"        # the kiosk's device connected
    KIOSK_OFFLINE = "kiosk_offline"      # its connection is gone
    # its device health changed (data: camera, microphone, speaker, document_camera, failed,
    # detail, agent); repeated identical reports are not logged
    KIOSK_HEALTH = "kiosk_health"
    # the resident's verdict
    SESSION_RATING = "session_rating"    # data: score (1-5), comment
    # documents shared in a session (rooms.files); ticket_id is the session
    FILE_UPLOAD = "file_upload"          # data: file_id, by, size, content_type, kind, ...
    FILE_VIEW = "file_view"              # a file's content was read (data: file_id, by)
    FILE_DELETE = "file_delete"          # data: file_id, by, reason (deleted | retention)


# The events that end a ticket in the log: every ticket that entered the queue has exactly one.
TERMINAL_KINDS = frozenset({EventKind.DONE, EventKind.ABANDON, EventKind.TIMEOUT,
                            EventKind.STATE_LOST})


@dataclass(frozen=True, slots=True)
class HallEvent:
    """One line of the event log. ``seq`` is assigned by the store's outbox, monotonically."""

    kind: EventKind
    at: float
    ticket_id: str | None = None
    clerk_id: str | None = None
    matter_id: str | None = None
    department_id: str | None = None
    service_point_id: str | None = None
    channel: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    seq: int = 0

    def with_seq(self, seq: int) -> HallEvent:
        """A copy stamped with its outbox sequence number (cheaper than dataclasses.replace)."""
        return HallEvent(self.kind, self.at, self.ticket_id, self.clerk_id, self.matter_id,
                         self.department_id, self.service_point_id, self.channel, self.data, seq)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind.value,
            "at": self.at,
            "ticket_id": self.ticket_id,
            "clerk_id": self.clerk_id,
            "matter_id": self.matter_id,
            "department_id": self.department_id,
            "service_point_id": self.service_point_id,
            "channel": self.channel,
            "data": dict(self.data),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> HallEvent:
        return cls(
            kind=EventKind(raw["kind"]),
            at=float(raw["at"]),
            ticket_id=raw.get("ticket_id"),
            clerk_id=raw.get("clerk_id"),
            matter_id=raw.get("matter_id"),
            department_id=raw.get("department_id"),
            service_point_id=raw.get("service_point_id"),
            channel=raw.get("channel"),
            data=dict(raw.get("data") or {}),
            seq=int(raw.get("seq", 0)),
        )
