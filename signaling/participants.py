"""Participants: who is connected as whom, their numbered outbox and their resume tokens.

A participant outlives its socket: when a connection drops, the participant stays (``away``)
for the resume grace period with every message sent meanwhile in its outbox, numbered. A
reconnect with the participant's one-time resume token gets those messages replayed in order.
No I/O here; the hub does the sending.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rooms.errors import HallError
from signaling.identity import Principal

OUTBOX_LIMIT = 2000  # messages kept per participant for replay


class ResumeError(HallError):
    code = "resume_invalid"


def _digest(token: str) -> str:
    digest: str = hashlib.sha256(token.encode()).hexdigest()
    return digest


@dataclass(slots=True)
class Participant:
    principal: Principal
    sid: str | None = None
    seq: int = 0
    outbox: deque[tuple[int, str, dict[str, Any]]] = field(
        default_factory=lambda: deque(maxlen=OUTBOX_LIMIT)
    )
    resume_digest: str | None = None
    away_since: float | None = None
    ticket_id: str | None = None  # residents and kiosks: the ticket they hold
    last_ticket_id: str | None = None  # kept after the ticket ends: it may still be rated
    # False from attach until welcome and replay are out: messages numbered meanwhile wait in
    # the outbox, so nothing overtakes the welcome or the replay.
    greeted: bool = False

    @property
    def id(self) -> str:
        return self.principal.participant_id

    def stamp(self, event: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Number a server→client message and keep it for replay."""
        self.seq += 1
        stamped = {"seq": self.seq, **payload}
        self.outbox.append((self.seq, event, stamped))
        return stamped

    def since(self, last_seq: int) -> list[tuple[str, dict[str, Any]]]:
        """Messages after ``last_seq``, in order; ResumeError if some were already dropped."""
        if last_seq > self.seq:
            raise ResumeError(f"last_seq {last_seq} is ahead of the server ({self.seq})")
        missed = [(event, payload) for seq, event, payload in self.outbox if seq > last_seq]
        if len(missed) != self.seq - last_seq:
            raise ResumeError("too many messages were missed to resume; connect afresh")
        return missed


class Participants:
    """Registry of participants by id, by socket id and by resume token."""

    def __init__(self) -> None:
        self._by_id: dict[str, Participant] = {}
        self._by_sid: dict[str, str] = {}
        self._by_resume: dict[str, str] = {}

    def get(self, participant_id: str) -> Participant | None:
        return self._by_id.get(participant_id)

    def by_sid(self, sid: str) -> Participant | None:
        pid = self._by_sid.get(sid)
        return None if pid is None else self._by_id.get(pid)

    def __len__(self) -> int:
        return len(self._by_id)

    def attach(self, principal: Principal, sid: str) -> tuple[Participant, str | None]:
        """Bind a socket to the principal's participant; returns it and the socket replaced."""
        participant = self._by_id.get(principal.participant_id)
        if participant is None:
            participant = Participant(principal)
            self._by_id[participant.id] = participant
        else:
            participant.principal = principal
        replaced = participant.sid
        if replaced is not None:
            self._by_sid.pop(replaced, None)
        participant.sid = sid
        participant.away_since = None
        participant.greeted = False
        self._by_sid[sid] = participant.id
        return participant, replaced

    def detach(self, sid: str, now: float) -> Participant | None:
        """The socket is gone; the participant stays, away, until resumed or forgotten."""
        pid = self._by_sid.pop(sid, None)
        participant = None if pid is None else self._by_id.get(pid)
        if participant is None or participant.sid != sid:
            return None
        participant.sid = None
        participant.away_since = now
        return participant

    def issue_resume(self, participant: Participant) -> str:
        """A fresh one-time resume token; the previous one stops working."""
        if participant.resume_digest is not None:
            self._by_resume.pop(participant.resume_digest, None)
        token = secrets.token_urlsafe(32)
        participant.resume_digest = _digest(token)
        self._by_resume[participant.resume_digest] = participant.id
        return token

    def redeem(self, token: str) -> Participant:
        """Use a resume token (once). ResumeError if unknown, used or forgotten."""
        pid = self._by_resume.pop(_digest(token), None)
        participant = None if pid is None else self._by_id.get(pid)
        if participant is None:
            raise ResumeError("unknown, used or expired resume token")
        participant.resume_digest = None
        return participant

    def forget(self, participant: Participant) -> None:
        self._by_id.pop(participant.id, None)
        if participant.resume_digest is not None:
            self._by_resume.pop(participant.resume_digest, None)
        if participant.sid is not None:
            self._by_sid.pop(participant.sid, None)

    def all(self) -> list[Participant]:
        return list(self._by_id.values())
