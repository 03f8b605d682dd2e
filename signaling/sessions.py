"""Live media sessions: who may exchange WebRTC signaling with whom.

A session exists while its ticket is ``in_session``. Its id is the ticket id. The resident side
(app resident or kiosk) and the clerk are its participants; monitoring supervisors talk only to
the clerk, and the resident is never told about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rooms.errors import ForbiddenError


@dataclass(slots=True)
class MediaSession:
    id: str
    resident: str  # participant ids
    clerk: str
    monitors: set[str] = field(default_factory=set)
    chat: list[dict[str, Any]] = field(default_factory=list)  # oldest first, capped
    notes: list[dict[str, Any]] = field(default_factory=list)  # the clerk's, oldest first

    def add_chat(self, message: dict[str, Any], limit: int = 500) -> None:
        self.chat.append(message)
        del self.chat[:-limit]

    def add_note(self, note: dict[str, Any], limit: int = 200) -> None:
        self.notes.append(note)
        del self.notes[:-limit]

    def peer_of(self, participant_id: str) -> str:
        if participant_id == self.resident:
            return self.clerk
        if participant_id == self.clerk:
            return self.resident
        raise ForbiddenError(f"not a participant of session {self.id}")

    def route(self, sender: str, to: str) -> str:
        """Whom a signaling message from ``sender`` addressed ``to`` may go to, or raise."""
        if sender in (self.resident, self.clerk):
            if to == "peer":
                return self.peer_of(sender)
            if sender == self.clerk and to in self.monitors:
                return to
            raise ForbiddenError(f'cannot signal "{to}" in session {self.id}')
        if sender in self.monitors and to in ("peer", self.clerk):
            return self.clerk
        raise ForbiddenError(f"not a participant of session {self.id}")
