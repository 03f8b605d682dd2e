"""Live media sessions: who may exchange WebRTC signaling with whom.

A session exists while its ticket is ``in_session``. Its id is the ticket id. The resident side
(app resident or kiosk) and the clerk are its participants; monitoring supervisors talk only to
the clerk, and the resident is never told about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rooms.errors import ForbiddenError, NotFoundError


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


class Sessions:
    def __init__(self) -> None:
        self._sessions: dict[str, MediaSession] = {}
        self._by_participant: dict[str, set[str]] = {}

    def open(self, session_id: str, resident: str, clerk: str) -> MediaSession:
        session = MediaSession(session_id, resident, clerk)
        self._sessions[session_id] = session
        for pid in (resident, clerk):
            self._by_participant.setdefault(pid, set()).add(session_id)
        return session

    def get(self, session_id: str) -> MediaSession:
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFoundError(f'no live session "{session_id}"')
        return session

    def find(self, session_id: str) -> MediaSession | None:
        return self._sessions.get(session_id)

    def close(self, session_id: str) -> MediaSession | None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            for pid in (session.resident, session.clerk, *session.monitors):
                self._by_participant.get(pid, set()).discard(session_id)
        return session

    def add_monitor(self, session_id: str, participant_id: str) -> MediaSession:
        session = self.get(session_id)
        session.monitors.add(participant_id)
        self._by_participant.setdefault(participant_id, set()).add(session_id)
        return session

    def remove_monitor(self, session_id: str, participant_id: str) -> MediaSession:
        session = self.get(session_id)
        if participant_id not in session.monitors:
            raise ForbiddenError(f"not monitoring session {session_id}")
        session.monitors.discard(participant_id)
        self._by_participant.get(participant_id, set()).discard(session_id)
        return session

    def all(self) -> list[MediaSession]:
        """Every live session, by id."""
        return [self._sessions[s] for s in sorted(self._sessions)]

    def of(self, participant_id: str) -> list[MediaSession]:
        return [self._sessions[s] for s in sorted(self._by_participant.get(participant_id, ()))
                if s in self._sessions]
