"""What the signaling hub must share between processes, behind one interface.

The hub keeps no truth of its own about participants, sessions or kiosks: it asks a
:class:`HubState`. :class:`MemoryHubState` (here) is the embedded one, one process;
:class:`signaling.redis_hub_state.RedisHubState` keeps the same in Redis, so any process can
serve any participant and a process may die without taking state with it.

Per process, and deliberately so, stay only things tied to this process's sockets: which socket
is whose, what was last emitted to it, view fingerprints and push throttles (see the hub).

A participant's *record* (this module) outlives its socket: its numbered outbox, resume token,
the ticket it holds, and which process (``owner``) holds its socket, if any. Sending a message
numbers it, keeps it in the outbox, and tells the caller who owns the participant's socket;
a remote owner is told by the state itself (``on_remote``), so the caller delivers locally only.
"""

from __future__ import annotations

import abc
import hashlib
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rooms.errors import ForbiddenError, HallError, NotFoundError
from signaling.identity import Principal, Role
from signaling.kiosks import DeviceReport, Kiosks, KioskStatus
from signaling.sessions import MediaSession

OUTBOX_LIMIT = 2000  # messages kept per participant for replay
CHAT_LIMIT = 500
NOTES_LIMIT = 200
# The chat of a transferred ticket, until its session with the receiving clerk opens: how
# long (Redis) and for how many tickets at most (one process).
KEPT_CHAT_S = 24 * 3600
KEPT_CHAT_LIMIT = 10_000

# A message for a participant whose socket another process holds: (participant, seq, event,
# payload with its seq); a "kick" asks that process to drop a socket replaced elsewhere.
RemoteMessage = Callable[[str, int, str, dict[str, Any]], Awaitable[None]]
RemoteKick = Callable[[str, str], Awaitable[None]]
Entry = tuple[int, str, dict[str, Any]]  # seq, event, stamped payload


class ResumeError(HallError):
    code = "resume_invalid"


class ReplayGapError(ResumeError):
    """The resume's ``last_seq`` cannot be served: ahead of what was numbered
    (``last_seq_ahead``), or older than the outbox keeps (``replay_unavailable``). Not a bad
    credential: the token stays good (with a correct ``last_seq``)."""


def digest(token: str) -> str:
    value: str = hashlib.sha256(token.encode()).hexdigest()
    return value


@dataclass(slots=True)
class Record:
    """The shared part of a participant (what survives its socket and its process)."""

    principal: Principal
    seq: int = 0
    owner: str | None = None  # process holding its socket; None: away
    sid: str | None = None
    ticket_id: str | None = None  # residents and kiosks: the ticket they hold
    last_ticket_id: str | None = None  # kept after the ticket ends: it may still be rated

    @property
    def id(self) -> str:
        return self.principal.participant_id


@dataclass(frozen=True, slots=True)
class Attached:
    seq: int  # the last seq numbered for it so far
    replaced: tuple[str, str] | None  # (process, socket) that held it until now
    was_away: bool  # its resume grace was running: it is coming back


def check_gap(entries: list[Entry], seq: int, last_seq: int) -> list[Entry]:
    """Messages after ``last_seq``; ResumeError if the outbox no longer has them all."""
    if last_seq > seq:
        raise ReplayGapError(f"last_seq {last_seq} is ahead of the server ({seq})",
                             code="last_seq_ahead")
    missed = [e for e in entries if e[0] > last_seq]
    if len(missed) != seq - last_seq:
        raise ReplayGapError("too many messages were missed to resume; connect afresh",
                             code="replay_unavailable")
    return missed


class HubState(abc.ABC):
    """Participants, sessions, ticket owners and kiosks, wherever they are kept."""

    def __init__(self, process_id: str) -> None:
        self.process_id = process_id
        self.on_remote: RemoteMessage | None = None
        self.on_kick: RemoteKick | None = None
        # After a lost subscription is back: messages published meanwhile are only in the
        # outboxes, the hub re-reads those of its sockets.
        self.on_resync: Callable[[], Awaitable[None]] | None = None

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and start listening (Redis); nothing in memory."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop listening; idempotent."""

    async def ping(self) -> bool:
        return True

    async def heartbeat(self, ttl_s: float, now: float) -> bool:
        """Say this process is alive until ``now + ttl_s``. False if the others had already
        declared it dead (its participants were handed to the resume grace meanwhile)."""
        return True

    async def orphans(self, now: float, grace_until: float) -> list[Record]:
        """Claim participants whose owning process died: marked away, grace started."""
        return []

    async def release_own(self, now: float, grace_until: float) -> list[Record]:
        """At start: participants still listed under this process id (a predecessor with the
        same id died) are marked away, grace started."""
        return []

    async def shared_view(self, name: str) -> bytes | None:
        """A view another process built recently (see put_shared_view); None: build it."""
        return None

    async def put_shared_view(  # noqa: B027 - optional hook
            self, name: str, data: bytes, ttl_s: float) -> None:
        """Offer a view just built to the other processes for ``ttl_s``. One process has
        nobody to share with."""

    # -- participants --------------------------------------------------------------------
    @abc.abstractmethod
    async def attach(self, principal: Principal, sid: str) -> Attached:
        """This process now holds the participant's socket ``sid``; the grace stops."""

    @abc.abstractmethod
    async def detach(self, participant_id: str, sid: str, now: float,
                     grace_until: float) -> Record | None:
        """Socket ``sid`` of this process is gone: the participant is away until
        ``grace_until``. None if that socket no longer held it (replaced meanwhile)."""

    @abc.abstractmethod
    async def record(self, participant_id: str) -> Record | None: ...

    @abc.abstractmethod
    async def participant_ids(self) -> list[str]: ...

    @abc.abstractmethod
    async def set_ticket(self, participant_id: str, ticket_id: str) -> None:
        """The participant took ``ticket_id`` (it is also its last ticket)."""

    @abc.abstractmethod
    async def clear_ticket(self, participant_id: str, ticket_id: str) -> None:
        """``ticket_id`` ended: the participant holds no ticket, if it still held that one."""

    @abc.abstractmethod
    async def forget(self, participant_id: str) -> None:
        """Drop the record, its outbox and its resume token (the grace ran out)."""

    # Resume tokens. A participant has at most two good ones: the *newest*, issued in the last
    # welcome, and the one that connection *resumed with* (its welcome may never have arrived,
    # so the client may still hold only that one). Redeeming the newest proves the client got
    # it: the one before dies; so does the client's acknowledgement of the welcome that
    # carried the newest (resume_received). Redeeming the one before again revokes the newest
    # (the client never had it). So a token stays good until its successor is provably
    # received, a token whose successor was used is dead, and there is never more than one
    # newest token.
    @abc.abstractmethod
    async def issue_resume(self, participant_id: str, *, resumed: bool = False) -> str:
        """A fresh resume token for the welcome being sent; the newest one before it stops
        working. ``resumed``: this connection just redeemed a token, which stays good until
        the new one is redeemed; otherwise every earlier token stops working."""

    @abc.abstractmethod
    async def redeem(self, token: str, participant_id: str) -> None:
        """Resume ``participant_id`` with ``token`` (see above); ResumeError, changing
        nothing, if the token is not one of that participant's good ones."""

    @abc.abstractmethod
    async def resume_received(self, participant_id: str, token: str) -> None:
        """The client acknowledged the welcome carrying ``token``: if that is still the newest,
        the token its connection resumed with stops working. Nothing otherwise."""

    @abc.abstractmethod
    async def send(self, participant_id: str, event: str,
                   payload: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """Number a message and keep it for replay; None if the participant is unknown.
        Returns (seq, stamped payload) when this process holds the participant's socket (the
        caller emits it); a remote owner has been sent it through ``on_remote``'s channel and
        the result is None too."""

    @abc.abstractmethod
    async def since(self, participant_id: str, last_seq: int) -> list[Entry]:
        """Messages numbered after ``last_seq``, in order; ResumeError if some are gone."""

    @abc.abstractmethod
    async def graces_due(self, now: float) -> list[str]:
        """Participants whose resume grace ran out, each claimed by one caller only."""

    # -- sessions ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def session_open(self, session_id: str, resident: str, clerk: str) -> MediaSession:
        """Open (or return the open) session of a ticket."""

    @abc.abstractmethod
    async def session_find(self, session_id: str) -> MediaSession | None: ...

    async def session_get(self, session_id: str) -> MediaSession:
        live = await self.session_find(session_id)
        if live is None:
            raise NotFoundError(f'no live session "{session_id}"')
        return live

    @abc.abstractmethod
    async def session_close(self, session_id: str, *,
                            keep_chat: bool = False) -> MediaSession | None:
        """Close it; the session to whoever closed it, None to everyone after (so the end is
        announced once even when several processes see the ticket change). ``keep_chat``
        (a transfer): the next session of the same ticket opens with this one's chat (kept
        for KEPT_CHAT_S at most)."""

    @abc.abstractmethod
    async def session_announce(self, session_id: str) -> bool:
        """True the first time only: who announces ``session.started``."""

    @abc.abstractmethod
    async def sessions_all(self) -> list[MediaSession]: ...

    @abc.abstractmethod
    async def sessions_of(self, participant_id: str) -> list[MediaSession]: ...

    @abc.abstractmethod
    async def monitor_add(self, session_id: str, participant_id: str) -> MediaSession: ...

    @abc.abstractmethod
    async def monitor_remove(self, session_id: str, participant_id: str) -> MediaSession:
        """ForbiddenError if not monitoring it."""

    @abc.abstractmethod
    async def chat_add(self, session_id: str, message: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def chat(self, session_id: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def note_add(self, session_id: str, note: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def notes(self, session_id: str) -> list[dict[str, Any]]: ...

    # -- call quality (signaling/call_quality.py): one small JSON summary per side ------------
    @abc.abstractmethod
    async def quality_put(self, session_id: str, side: str, summary: dict[str, Any]) -> bool:
        """Store a side's summary while the session is live; False (nothing stored) once it
        is closed, so a late report cannot leave a summary behind."""

    @abc.abstractmethod
    async def quality_get(self, session_id: str) -> dict[str, dict[str, Any]]:
        """The summaries of the session's sides that reported (side -> summary)."""

    @abc.abstractmethod
    async def quality_drop(self, session_id: str) -> None: ...

    # -- ticket owners (resident or kiosk participant of a ticket) ----------------------------
    @abc.abstractmethod
    async def owner_set(self, ticket_id: str, participant_id: str) -> None: ...

    @abc.abstractmethod
    async def owners(self, ticket_ids: Iterable[str]) -> dict[str, str]:
        """Owner of each ticket that has one."""

    async def owner_of(self, ticket_id: str) -> str | None:
        return (await self.owners([ticket_id])).get(ticket_id)

    @abc.abstractmethod
    async def owner_drop(self, ticket_id: str) -> None: ...

    # -- kiosks -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def kiosk_online(self, kiosk_id: str, online: bool, now: float) -> bool:
        """Presence changed? (False for a point not in the catalog.)"""

    @abc.abstractmethod
    async def kiosk_changes(self, kiosk_id: str, report: DeviceReport) -> bool:
        """Whether the report changes the kiosk's health status (NotFoundError if unknown)."""

    @abc.abstractmethod
    async def kiosk_report(self, kiosk_id: str, report: DeviceReport, now: float) -> None:
        """Keep the kiosk's latest report."""

    @abc.abstractmethod
    async def kiosks_all(self) -> list[KioskStatus]: ...


@dataclass(slots=True)
class _MemoryParticipant:
    record: Record
    outbox: deque[Entry] = field(default_factory=lambda: deque(maxlen=OUTBOX_LIMIT))
    resume_digest: str | None = None  # the newest token
    resumed_digest: str | None = None  # the one its connection resumed with (still good)
    grace_until: float | None = None


class MemoryHubState(HubState):
    """One process: everything in dicts. Never has remote owners."""

    def __init__(self, service_point_ids: Iterable[str], process_id: str = "embedded") -> None:
        super().__init__(process_id)
        self._parts: dict[str, _MemoryParticipant] = {}
        self._by_resume: dict[str, str] = {}
        self._sessions: dict[str, MediaSession] = {}
        self._announced: set[str] = set()
        self._kept_chat: dict[str, list[dict[str, Any]]] = {}  # transferred: for the next
        self._owners: dict[str, str] = {}
        # session -> side -> call-quality summary (only while the session is live)
        self._quality: dict[str, dict[str, dict[str, Any]]] = {}
        self._kiosks = Kiosks(service_point_ids)

    # -- participants --------------------------------------------------------------------
    async def attach(self, principal: Principal, sid: str) -> Attached:
        part = self._parts.get(principal.participant_id)
        if part is None:
            part = self._parts[principal.participant_id] = _MemoryParticipant(Record(principal))
        record = part.record
        record.principal = principal
        replaced = (record.owner, record.sid) if record.owner and record.sid else None
        record.owner, record.sid = self.process_id, sid
        was_away = part.grace_until is not None
        part.grace_until = None
        return Attached(record.seq, replaced, was_away)

    async def detach(self, participant_id: str, sid: str, now: float,
                     grace_until: float) -> Record | None:
        part = self._parts.get(participant_id)
        if part is None or part.record.sid != sid or part.record.owner != self.process_id:
            return None
        part.record.owner = part.record.sid = None
        part.grace_until = grace_until
        return part.record

    async def record(self, participant_id: str) -> Record | None:
        return self.peek(participant_id)

    def peek(self, participant_id: str) -> Record | None:
        """The record, synchronously (this store does no I/O)."""
        part = self._parts.get(participant_id)
        return None if part is None else part.record

    async def participant_ids(self) -> list[str]:
        return sorted(self._parts)

    async def set_ticket(self, participant_id: str, ticket_id: str) -> None:
        part = self._parts.get(participant_id)
        if part is not None:
            part.record.ticket_id = part.record.last_ticket_id = ticket_id

    async def clear_ticket(self, participant_id: str, ticket_id: str) -> None:
        part = self._parts.get(participant_id)
        if part is not None and part.record.ticket_id == ticket_id:
            part.record.ticket_id = None

    async def forget(self, participant_id: str) -> None:
        part = self._parts.pop(participant_id, None)
        if part is not None:
            for known in (part.resume_digest, part.resumed_digest):
                if known is not None:
                    self._by_resume.pop(known, None)

    async def issue_resume(self, participant_id: str, *, resumed: bool = False) -> str:
        part = self._parts[participant_id]
        if part.resume_digest is not None:
            self._by_resume.pop(part.resume_digest, None)
        if not resumed and part.resumed_digest is not None:
            self._by_resume.pop(part.resumed_digest, None)
            part.resumed_digest = None
        token = secrets.token_urlsafe(32)
        part.resume_digest = digest(token)
        self._by_resume[part.resume_digest] = participant_id
        return token

    async def redeem(self, token: str, participant_id: str) -> None:
        key = digest(token)
        part = self._parts.get(participant_id)
        if self._by_resume.get(key) != participant_id or part is None:
            raise ResumeError("unknown, used or expired resume token")
        if key == part.resume_digest:
            # The newest was received: the one it succeeded dies.
            if part.resumed_digest is not None:
                self._by_resume.pop(part.resumed_digest, None)
            part.resumed_digest, part.resume_digest = key, None
        elif key == part.resumed_digest:
            # Its successor never arrived: that one dies instead.
            if part.resume_digest is not None:
                self._by_resume.pop(part.resume_digest, None)
            part.resume_digest = None
        else:
            raise ResumeError("unknown, used or expired resume token")

    async def resume_received(self, participant_id: str, token: str) -> None:
        part = self._parts.get(participant_id)
        if part is None or part.resume_digest != digest(token):
            return
        if part.resumed_digest is not None:
            self._by_resume.pop(part.resumed_digest, None)
            part.resumed_digest = None

    async def send(self, participant_id: str, event: str,
                   payload: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        part = self._parts.get(participant_id)
        if part is None:
            return None
        part.record.seq += 1
        seq = part.record.seq
        stamped = {"seq": seq, **payload}
        part.outbox.append((seq, event, stamped))
        return (seq, stamped) if part.record.owner == self.process_id else None

    async def since(self, participant_id: str, last_seq: int) -> list[Entry]:
        part = self._parts.get(participant_id)
        if part is None:
            raise ResumeError("unknown participant")
        return check_gap(list(part.outbox), part.record.seq, last_seq)

    async def graces_due(self, now: float) -> list[str]:
        due = [pid for pid, part in self._parts.items()
               if part.grace_until is not None and part.grace_until <= now]
        for pid in due:
            self._parts[pid].grace_until = None
        return sorted(due)

    # -- sessions ---------------------------------------------------------------------------
    async def session_open(self, session_id: str, resident: str, clerk: str) -> MediaSession:
        live = self._sessions.get(session_id)
        if live is None:
            live = self._sessions[session_id] = MediaSession(session_id, resident, clerk)
            live.chat = self._kept_chat.pop(session_id, [])
        return live

    async def session_find(self, session_id: str) -> MediaSession | None:
        return self._sessions.get(session_id)

    async def session_close(self, session_id: str, *,
                            keep_chat: bool = False) -> MediaSession | None:
        self._announced.discard(session_id)
        live = self._sessions.pop(session_id, None)
        if live is not None and keep_chat:
            # Bounded: a transferred ticket abandoned while waiting never opens again.
            while len(self._kept_chat) >= KEPT_CHAT_LIMIT:
                del self._kept_chat[next(iter(self._kept_chat))]
            self._kept_chat[session_id] = list(live.chat)
        return live

    async def session_announce(self, session_id: str) -> bool:
        if session_id in self._announced or session_id not in self._sessions:
            return False
        self._announced.add(session_id)
        return True

    async def sessions_all(self) -> list[MediaSession]:
        return [self._sessions[s] for s in sorted(self._sessions)]

    async def sessions_of(self, participant_id: str) -> list[MediaSession]:
        return [live for live in await self.sessions_all()
                if participant_id in (live.resident, live.clerk)
                or participant_id in live.monitors]

    async def monitor_add(self, session_id: str, participant_id: str) -> MediaSession:
        live = await self.session_get(session_id)
        live.monitors.add(participant_id)
        return live

    async def monitor_remove(self, session_id: str, participant_id: str) -> MediaSession:
        live = await self.session_get(session_id)
        if participant_id not in live.monitors:
            raise ForbiddenError(f"not monitoring session {session_id}")
        live.monitors.discard(participant_id)
        return live

    async def chat_add(self, session_id: str, message: dict[str, Any]) -> None:
        (await self.session_get(session_id)).add_chat(message, CHAT_LIMIT)

    async def chat(self, session_id: str) -> list[dict[str, Any]]:
        return list((await self.session_get(session_id)).chat)

    async def note_add(self, session_id: str, note: dict[str, Any]) -> None:
        (await self.session_get(session_id)).add_note(note, NOTES_LIMIT)

    async def notes(self, session_id: str) -> list[dict[str, Any]]:
        return list((await self.session_get(session_id)).notes)

    async def quality_put(self, session_id: str, side: str, summary: dict[str, Any]) -> bool:
        if session_id not in self._sessions:
            return False
        self._quality.setdefault(session_id, {})[side] = summary
        return True

    async def quality_get(self, session_id: str) -> dict[str, dict[str, Any]]:
        return dict(self._quality.get(session_id, {}))

    async def quality_drop(self, session_id: str) -> None:
        self._quality.pop(session_id, None)

    # -- ticket owners ------------------------------------------------------------------------
    async def owner_set(self, ticket_id: str, participant_id: str) -> None:
        self._owners[ticket_id] = participant_id

    async def owners(self, ticket_ids: Iterable[str]) -> dict[str, str]:
        return {t: self._owners[t] for t in ticket_ids if t in self._owners}

    async def owner_drop(self, ticket_id: str) -> None:
        self._owners.pop(ticket_id, None)

    # -- kiosks -----------------------------------------------------------------------------
    async def kiosk_online(self, kiosk_id: str, online: bool, now: float) -> bool:
        if online:
            return self._kiosks.connected(kiosk_id, now)
        return self._kiosks.disconnected(kiosk_id, now)

    async def kiosk_changes(self, kiosk_id: str, report: DeviceReport) -> bool:
        return self._kiosks.changes(kiosk_id, report)

    async def kiosk_report(self, kiosk_id: str, report: DeviceReport, now: float) -> None:
        self._kiosks.report(kiosk_id, report, now)

    async def kiosks_all(self) -> list[KioskStatus]:
        return self._kiosks.all()


class _HasState(Protocol):
    state: HubState


def embedded(hub: _HasState) -> MemoryHubState:
    """The hub's state when it is the embedded one (tests and diagnostics look into it)."""
    if not isinstance(hub.state, MemoryHubState):
        raise TypeError(f"the hub runs on {type(hub.state).__name__}, not in memory")
    return hub.state


def role_of(participant_id: str) -> Role | None:
    """The role part of a participant id (``role:subject``)."""
    head = participant_id.partition(":")[0]
    try:
        return Role(head)
    except ValueError:
        return None
