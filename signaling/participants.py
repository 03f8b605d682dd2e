"""Connections: the participants whose sockets THIS process holds.

The participant itself (its numbered outbox, resume token, ticket) is shared state
(:mod:`signaling.hub_state`) and outlives both the socket and the process. What is here is
only what is tied to one socket: which socket is whose, whether its welcome and replay are out,
and the last seq emitted on it, so that messages numbered on several processes reach it in
order, each once. No I/O here; the hub does the sending.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from signaling.hub_state import ResumeError
from signaling.identity import Credential, Principal

__all__ = ["Connections", "Participant", "ResumeError"]


@dataclass(slots=True)
class Participant:
    principal: Principal
    sid: str
    # False from attach until welcome and replay are out: messages numbered meanwhile wait in
    # the outbox, so nothing overtakes the welcome or the replay.
    greeted: bool = False
    delivered: int = 0  # the last seq emitted on this socket
    # Held while emitting numbered messages: one at a time, in seq order.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Held while handling one of its events: they are handled in the order they arrived.
    inbound: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The hall token this socket lives on (None: an app resident's, or a resume's) and the
    # timer that closes the socket when it expires (SignalingHub._watch_expiry).
    credential: Credential | None = None
    expiry: asyncio.TimerHandle | None = None
    # The client's acknowledgement of its welcome, being applied (the resume token it came
    # with is retired). Its events wait for it: an event sent after the ack is handled after
    # the retirement, so a client can fence on any round trip.
    welcome_ack: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.principal.participant_id


class Connections:
    """This process's connected participants, by id and by socket id."""

    def __init__(self) -> None:
        self._by_id: dict[str, Participant] = {}
        self._by_sid: dict[str, str] = {}

    def get(self, participant_id: str) -> Participant | None:
        return self._by_id.get(participant_id)

    def by_sid(self, sid: str) -> Participant | None:
        pid = self._by_sid.get(sid)
        participant = None if pid is None else self._by_id.get(pid)
        return participant if participant is not None and participant.sid == sid else None

    def __len__(self) -> int:
        return len(self._by_id)

    def attach(self, principal: Principal, sid: str) -> tuple[Participant, str | None]:
        """Bind a socket to the principal; returns it and this process's socket it replaced."""
        old = self._by_id.get(principal.participant_id)
        participant = Participant(principal, sid)
        self._by_id[participant.id] = participant
        self._by_sid[sid] = participant.id
        replaced = None
        if old is not None and old.sid != sid:
            self._by_sid.pop(old.sid, None)
            replaced = old.sid
        return participant, replaced

    def detach(self, sid: str) -> Participant | None:
        """The socket is gone; the participant if that socket was still its current one."""
        pid = self._by_sid.pop(sid, None)
        participant = None if pid is None else self._by_id.get(pid)
        if participant is None or participant.sid != sid:
            return None
        del self._by_id[participant.id]
        return participant

    def all(self) -> list[Participant]:
        return list(self._by_id.values())
