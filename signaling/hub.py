"""The Socket.IO hub: authenticates connections, validates and authorises every event, drives
the hall engine, and turns the engine's notices into numbered, resumable messages.

One hub per process. Every event goes through :meth:`SignalingHub._on_event` (the catch-all
handler), so validation, size limits, authorisation and error answers are the same for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import socketio

from rooms.aio import stop_tasks
from rooms.cases import CaseState
from rooms.catalog import ServiceKind
from rooms.errors import (
    AuthError,
    ForbiddenError,
    HallError,
    InvalidStateError,
    NotFoundError,
    StoreUnavailableError,
    ThrottledError,
)
from rooms.events import EventKind
from rooms.hall import Hall, Unstaffed
from rooms.notices import Notice, NoticeKind
from rooms.prereview import PreReview
from rooms.tickets import Channel, PriorityReason, Ticket, TicketState
from signaling import protocol as p
from signaling.case_desk import CaseDesk, case_view
from signaling.hub_state import HubState, MemoryHubState, Record, ResumeError, role_of
from signaling.identity import (
    AppIdentityVerifier,
    Principal,
    Role,
    TokenService,
    ice_servers,
)
from signaling.kiosks import DeviceReport
from signaling.participants import Connections, Participant
from signaling.prereview_desk import PreReviewDesk
from signaling.sessions import MediaSession
from signaling.throttle import FailureThrottle
from signaling.views import clerk_view, offer_view, position_view, ticket_view
from signaling.wall import Board, LiveSession, build_queues, build_wall

logger = logging.getLogger("hall.signaling")

Handler = Callable[[Participant, Any], Awaitable[dict[str, Any]]]

# The wall's 办不成事 counts are read again after this process changed a case, and at least
# this often otherwise (changes made elsewhere); not on every pass, not to poll the database.
_CASE_COUNTS_MAX_AGE_S = 30.0

_LIVE_TICKET = frozenset({TicketState.WAITING, TicketState.TRANSFERRED, TicketState.OFFERED,
                          TicketState.IN_SESSION, TicketState.WRAP_UP})


class OrjsonCodec:
    """JSON for the hub's packets: orjson saved ~28% server CPU per relayed message
    (bench/signaling.py --variants)."""

    @staticmethod
    def dumps(obj: Any, *args: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(data: str | bytes, *args: Any, **kwargs: Any) -> Any:
        return orjson.loads(data)


class OrjsonPacket(socketio.packet.Packet):  # type: ignore[misc]
    """This hub's packets only: ``AsyncServer(json=...)`` would swap the codec of every
    Socket.IO client and server in the process."""

    json = OrjsonCodec


@dataclass(frozen=True, slots=True)
class HubConfig:
    auth_timeout_s: float = 5.0
    resume_grace_s: float = 30.0
    allowed_origins: tuple[str, ...] = ()  # empty: same origin only
    stun_urls: tuple[str, ...] = ()
    turn_urls: tuple[str, ...] = ()
    turn_secret: str | None = None
    turn_ttl_s: float = 3600.0
    ping_interval_s: float = 5.0
    ping_timeout_s: float = 5.0
    position_interval_s: float = 1.0
    # wall.update / queues.update: views are rebuilt this often and sent only if they changed
    wall_interval_s: float = 1.0
    # How often this process says it is alive, looks for processes that are not and for
    # resume graces that ran out; a process silent for heartbeat_ttl_s counts as dead.
    sweep_interval_s: float = 0.25
    heartbeat_interval_s: float = 1.0
    heartbeat_ttl_s: float = 5.0


@dataclass(slots=True)
class _QueuePush:
    """Throttle state of position pushes for one queue."""

    last: float = 0.0
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Tasks:
    """Every task the hub spawns, so close() can cancel them all."""

    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def cancel_all(self) -> None:
        await stop_tasks(list(self.tasks))


class SignalingHub:
    def __init__(
        self,
        hall: Hall,
        *,
        tokens: TokenService,
        app_identity: AppIdentityVerifier | None,
        throttle: FailureThrottle,
        config: HubConfig | None = None,
        prereviews: PreReviewDesk | None = None,
        cases: CaseDesk | None = None,
        state: HubState | None = None,
    ) -> None:
        self.hall = hall
        self.state = state or MemoryHubState(hall.catalog.service_points)
        self.state.on_remote = self._emit_numbered
        self.state.on_kick = self._remote_kick
        self.state.on_resync = self._resync
        self.cases = cases
        self.prereviews = prereviews
        self.tokens = tokens
        self.app_identity = app_identity
        self.throttle = throttle
        self.config = config or HubConfig()
        origins: Any = list(self.config.allowed_origins) or None
        if self.config.allowed_origins == ("*",):
            origins = "*"
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            cors_allowed_origins=origins,
            ping_interval=self.config.ping_interval_s,
            ping_timeout=self.config.ping_timeout_s,
            # Engine.IO drops a frame this large outright; events up to 64 KiB get an answer.
            max_http_buffer_size=2 * p.MAX_EVENT_BYTES,
            serializer=OrjsonPacket,
        )
        self.connections = Connections()
        # participant id -> fingerprint of the wall / queue view it was last sent
        self._views_sent: dict[str, bytes] = {}
        self._case_counts: dict[str, int] = {"open": 0, "overdue": 0}  # last known
        self._case_counts_at: float | None = None  # loop time of that read; None: read again
        self._pusher: asyncio.Task[None] | None = None
        self._pending: dict[str, str] = {}  # sid -> remote address, not yet authenticated
        self._pushes: dict[str, _QueuePush] = {}
        # Per-process de-duplication only (another process may send the same view again;
        # a client takes the latest): what was last sent for a ticket.
        self._sent_position: dict[str, tuple[int | None, float | None, bool]] = {}
        self._last_view: dict[tuple[str, str], dict[str, Any]] = {}  # (participant, ticket)
        self._beat_ok_since: float | None = None  # loop time heartbeats have worked since
        self._undetached: dict[str, str] = {}  # sid -> participant: detach failed, to retry
        self._tasks = _Tasks()
        self._notices: asyncio.Queue[Sequence[Notice]] = asyncio.Queue()
        self._unsubscribe: Callable[[], None] | None = None
        self._handlers: dict[str, Handler] = {
            "auth.refresh": self._auth_refresh,
            "ticket.take": self._ticket_take,
            "ticket.leave": self._ticket_leave,
            "ticket.callback": self._ticket_callback,
            "ticket.position": self._ticket_position,
            "clerk.available": self._clerk_available,
            "clerk.break": self._clerk_break,
            "clerk.logout": self._clerk_logout,
            "offer.accept": self._offer_accept,
            "offer.decline": self._offer_decline,
            "session.end": self._session_end,
            "session.transfer": self._session_transfer,
            "wrapup.outcome": self._wrapup_outcome,
            "wrapup.finish": self._wrapup_finish,
            "wrapup.extend": self._wrapup_extend,
            "rtc.signal": self._rtc_signal,
            "media.screen": self._media_screen,
            "chat.send": self._chat_send,
            "session.note": self._session_note,
            "kiosk.health": self._kiosk_health,
            "session.rate": self._session_rate,
            "case.file": self._case_file,
            "case.mine": self._case_mine,
            "case.lookup": self._case_lookup,
            "case.act": self._case_act,
            "case.overdue": self._case_overdue,
            "case.list": self._case_list,
            "prereview.start": self._prereview_start,
            "prereview.mark": self._prereview_mark,
            "prereview.finish": self._prereview_finish,
            "monitor.join": self._monitor_join,
            "monitor.leave": self._monitor_leave,
            "wall.snapshot": self._wall_snapshot,
        }
        assert set(self._handlers) == set(p.EVENTS), "protocol and handlers out of step"
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("*", self._on_event)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.state.open()
        self._unsubscribe = self.hall.subscribe(self._notices.put_nowait)
        self._tasks.spawn(self._deliver_notices(), "hub-notices")
        self._tasks.spawn(self._heartbeat_forever(), "hub-heartbeat")
        self._tasks.spawn(self._sweep_forever(), "hub-sweep")
        self._pusher = asyncio.create_task(self._push_views_forever(), name="hub-views")

    async def close(self) -> None:
        """Stop delivering and cancel every timer; idempotent."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._pusher is not None:
            await stop_tasks([self._pusher])
            self._pusher = None
        await self._tasks.cancel_all()
        await self.state.close()

    def now(self) -> float:
        return self.hall.clock.now()

    # ------------------------------------------------------------------ connections
    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        address = _remote(environ)
        if isinstance(auth, dict) and auth:
            try:
                hello = p.parse(p.Hello, auth)
                participant, welcome, start, back = await self._authenticate(sid, address,
                                                                             hello)
            except HallError as err:
                # Two arguments: clients get ``message`` and ``data: {code, message}`` (one
                # argument would be stringified by python-socketio, losing the code).
                message = public_message(err)
                raise socketio.exceptions.ConnectionRefusedError(
                    message, {"code": err.code, "message": message}
                ) from None
            # Greet once the handshake is answered: a message emitted from inside the connect
            # handler would reach the client before its CONNECT packet.
            self._tasks.spawn(self._greet(participant, welcome, start, back), f"greet-{sid}")
            return
        self._pending[sid] = address
        self._tasks.spawn(self._auth_deadline(sid), f"auth-deadline-{sid}")

    async def _auth_deadline(self, sid: str) -> None:
        await asyncio.sleep(self.config.auth_timeout_s)
        if sid in self._pending:
            self._pending.pop(sid, None)
            logger.info("closing %s: not authenticated within %.0fs", sid,
                        self.config.auth_timeout_s)
            await self.sio.disconnect(sid)

    async def _authenticate(
        self, sid: str, address: str, hello: p.Hello
    ) -> tuple[Participant, dict[str, Any], int, bool]:
        """Check credentials and bind the socket; returns the welcome, the seq to replay
        from (the client's ``last_seq`` on resume, else everything numbered from now on), and
        whether the participant is coming back from a drop (resumed, or a fresh connection
        within the grace, e.g. a reloaded page): its peer is then told it is back."""
        self.throttle.check(address)
        try:
            if hello.resume is not None:
                pid = await self.state.redeem(hello.resume)
                # Refuse now if the gap cannot be replayed.
                await self.state.since(pid, hello.last_seq)
                record = await self.state.record(pid)
                if record is None:
                    raise ResumeError("unknown, used or expired resume token")
                principal = record.principal
            elif hello.token is not None:
                principal = self.tokens.verify(hello.token)
            elif hello.id_token is not None:
                if self.app_identity is None:
                    raise AuthError("resident identity tokens are not configured")
                principal = self.app_identity.verify(hello.id_token)
            else:
                raise AuthError("send token, id_token or resume")
        except (AuthError, ResumeError):
            self.throttle.failed(address)
            raise
        self._pending.pop(sid, None)
        attached = await self.state.attach(principal, sid)
        participant, replaced = self.connections.attach(principal, sid)
        start = hello.last_seq if hello.resume is not None else attached.seq
        participant.delivered = start
        if replaced is not None:
            await self.sio.emit("replaced", {}, to=replaced)
            await self.sio.disconnect(replaced)
        # A socket of another process that held this participant is dropped by that process
        # (the state told it: _remote_kick).
        back = hello.resume is not None or attached.was_away
        try:
            if principal.role == Role.CLERK:
                await self.hall.login(principal.subject)
            if principal.role == Role.KIOSK:
                await self._kiosk_presence(principal, online=True)
            welcome = await self._welcome(participant, attached.seq, hello.resume is not None)
        except HallError:
            # Refused after the shared state took the socket as connected: undo that (by
            # the sweep, should the state itself be what failed).
            self.connections.detach(sid)
            self._undetached[sid] = participant.id
            raise
        return participant, welcome, start, back

    async def _greet(
        self, participant: Participant, welcome: dict[str, Any], start: int, back: bool
    ) -> None:
        """Send the welcome, then every message numbered after ``start``, then go live."""
        sid = participant.sid
        if self.connections.by_sid(sid) is not participant:
            return
        await self.sio.emit("welcome", welcome, to=sid)
        try:
            await self._push_views(only=participant)
        except Exception:
            # The pusher sends it within a second anyway: a view that cannot be built must
            # not cost the participant its replay.
            logger.exception("first view for %s failed", participant.id)
        async with participant.lock:
            # Under the lock: a message numbered while the replay is read waits for it, then
            # finds the participant greeted and goes out after the replay, in order.
            for seq, event, payload in await self.state.since(participant.id, start):
                await self.sio.emit(event, payload, to=sid)
                participant.delivered = seq
            participant.greeted = True
        if back:
            await self._came_back(participant.id)

    async def _welcome(self, participant: Participant, seq: int,
                       resumed: bool) -> dict[str, Any]:
        ticket = await self._current_ticket(participant.principal)
        session = None
        for live in await self.state.sessions_of(participant.id):
            if participant.id in (live.resident, live.clerk):
                session = await self._session_view(live, participant.principal)
        welcome: dict[str, Any] = {
            "participant": participant.id,
            "role": participant.principal.role.value,
            "name": participant.principal.name,
            "resume_token": await self.state.issue_resume(participant.id),
            "resumed": resumed,
            "last_seq": seq,
            "ping_interval_s": self.config.ping_interval_s,
            "ticket": ticket_view(ticket) if ticket else None,
            "session": session,
        }
        if participant.principal.role == Role.CLERK:
            # A reloaded console gets its exact state back, and a pending offer with its
            # deadline (the countdown goes on where it was).
            clerk = await self.hall.get_clerk(participant.principal.subject)
            welcome["clerk"] = clerk_view(clerk)
            welcome["offer"] = (
                offer_view(ticket, self.now(), self.hall.policy.offer_timeout_s)
                if ticket is not None and ticket.state == TicketState.OFFERED else None
            )
        return welcome

    async def _tickets_of(self, participant_id: str) -> tuple[str | None, str | None]:
        """The ticket a resident or kiosk holds, and its last one (it may still rate it)."""
        record = await self.state.record(participant_id)
        return (None, None) if record is None else (record.ticket_id, record.last_ticket_id)

    async def _current_ticket(self, principal: Principal) -> Ticket | None:
        if principal.role == Role.CLERK:
            clerk = await self.hall.get_clerk(principal.subject)
            ticket_id = clerk.ticket_id
        else:
            ticket_id = (await self._tickets_of(principal.participant_id))[0]
        return None if ticket_id is None else await self.hall.get_ticket(ticket_id)

    async def _on_disconnect(self, sid: str, *args: Any) -> None:
        self._pending.pop(sid, None)
        participant = self.connections.detach(sid)
        if participant is None:
            return  # never authenticated, or replaced by a newer connection
        self._views_sent.pop(participant.id, None)
        try:
            await self._detach(participant.id, sid)
        except StoreUnavailableError:
            # Redis is away: without this, the participant would stay "connected here" in
            # the shared state for good. The sweep retries until Redis answers.
            self._undetached[sid] = participant.id
            logger.warning("%s left while the shared state was unavailable; retrying",
                           participant.id)

    async def _detach(self, participant_id: str, sid: str) -> None:
        now = time.time()
        record = await self.state.detach(participant_id, sid, now,
                                         now + self.config.resume_grace_s)
        if record is not None:
            await self._went_away(record)

    async def _went_away(self, record: Record) -> None:
        """The participant's socket is gone (closed here, or its process died): its peer is
        told, the queue's grace starts for its ticket, and so did its resume grace."""
        principal = record.principal
        if principal.role == Role.KIOSK:
            await self._kiosk_presence(principal, online=False)
        for live in await self.state.sessions_of(record.id):
            if record.id in (live.resident, live.clerk):
                await self._send(live.peer_of(record.id), "session.peer",
                                 {"session_id": live.id, "state": "reconnecting"})
        if record.ticket_id is not None:
            with contextlib.suppress(HallError):
                await self.hall.resident_disconnected(record.ticket_id)

    async def _grace_over(self, participant_id: str) -> None:
        """The resume grace ran out without the participant coming back."""
        record = await self.state.record(participant_id)
        if record is None or record.owner is not None:
            return  # forgotten already, or back meanwhile
        if record.principal.role == Role.CLERK:
            await self.hall.clerk_disconnected(record.principal.subject)
        for live in await self.state.sessions_of(participant_id):
            if participant_id in live.monitors:
                with contextlib.suppress(HallError):
                    await self.state.monitor_remove(live.id, participant_id)
        # Residents: the queue's own grace (started at the drop) abandons the ticket.
        await self.state.forget(participant_id)

    async def _came_back(self, participant_id: str) -> None:
        ticket_id = (await self._tickets_of(participant_id))[0]
        if ticket_id is not None:
            with contextlib.suppress(HallError):
                await self.hall.resident_reconnected(ticket_id)
        for live in await self.state.sessions_of(participant_id):
            if participant_id in (live.resident, live.clerk):
                await self._send(live.peer_of(participant_id), "session.peer",
                                 {"session_id": live.id, "state": "back"})

    # ------------------------------------------------------------------ processes
    async def _heartbeat_forever(self) -> None:
        """Say this process is alive. If the others had declared it dead (it could not reach
        Redis for longer than the TTL), its participants are already away with their resume
        grace running: drop their sockets, so the clients resume and everything is in step."""
        loop = asyncio.get_running_loop()
        released = False
        while True:
            try:
                if not released:
                    now = time.time()
                    for record in await self.state.release_own(
                            now, now + self.config.resume_grace_s):
                        logger.info("%s was held by this process's predecessor; resume grace "
                                    "started", record.id)
                        await self._went_away(record)
                    released = True
                alive = await self.state.heartbeat(self.config.heartbeat_ttl_s, time.time())
                if self._beat_ok_since is None:
                    self._beat_ok_since = loop.time()
                if not alive:
                    logger.warning("this process was declared dead, or Redis lost its data; "
                                   "dropping %d sockets so their clients resume",
                                   len(self.connections))
                    # Registers the catalog's clerks again if Redis came back empty (it
                    # keeps every clerk it still knows).
                    await self.hall.start()
                    for participant in self.connections.all():
                        await self.sio.disconnect(participant.sid)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if self._beat_ok_since is not None:  # once per outage
                    logger.warning("heartbeat failed (until it works again): %r", err)
                self._beat_ok_since = None
            await asyncio.sleep(self.config.heartbeat_interval_s)

    async def _sweep_forever(self) -> None:
        """Expire resume graces, and take over participants of processes that died."""
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            try:
                for sid, pid in list(self._undetached.items()):
                    await self._detach(pid, sid)
                    del self._undetached[sid]
                now = time.time()
                for pid in await self.state.graces_due(now):
                    await self._grace_over(pid)
                # Only after heartbeats have worked for a whole TTL: after an outage of the
                # shared state, every process's last heartbeat looks old until it beats again.
                since = self._beat_ok_since
                if since is not None and loop.time() - since >= self.config.heartbeat_ttl_s:
                    for record in await self.state.orphans(
                            now, now + self.config.resume_grace_s):
                        logger.info("%s lost its process; resume grace started", record.id)
                        await self._went_away(record)
                if failing:
                    logger.info("sweeping again")
                    failing = False
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if not failing:  # once per outage, not four times a second
                    logger.warning("sweep failed (until it works again): %r", err)
                    failing = True
            await asyncio.sleep(self.config.sweep_interval_s)

    # ------------------------------------------------------------------ events
    async def _on_event(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        try:
            if len(args) > 1:
                raise p.ProtocolError("an event carries exactly one payload object")
            return await self._dispatch(event, sid, args[0] if args else {})
        except HallError as err:
            extra: dict[str, Any] = {}
            if isinstance(err, ThrottledError):
                extra["retry_after_s"] = round(err.retry_after_s, 1)
            return p.fail(err.code, public_message(err), **extra)
        except Exception:
            ref = secrets.token_hex(4)
            logger.exception("event %s from %s failed (ref %s)", event, sid, ref)
            return p.fail("internal_error", f"internal error, reference {ref}")

    async def _dispatch(self, event: str, sid: str, data: Any) -> dict[str, Any]:
        if len(orjson.dumps(data)) > p.MAX_EVENT_BYTES:
            raise p.ProtocolError("the event is larger than 64 KiB", code="payload_too_large")
        if event == "hello":
            return await self._hello(sid, data)
        spec = p.EVENTS.get(event)
        if spec is None:
            raise p.ProtocolError(f'unknown event "{event}"', code="unknown_event")
        participant = self.connections.by_sid(sid)
        if participant is None:
            raise AuthError("authenticate first (hello)")
        if participant.principal.role not in spec.roles:
            raise ForbiddenError(f'a {participant.principal.role} may not send "{event}"')
        payload = p.parse(spec.schema, data)
        # One event of a socket at a time, in the order they arrived (python-socketio runs
        # each in a task of its own): taken before the first await, so the lock's FIFO is the
        # arrival order. Without it, two rtc.signal of one sender could be numbered in the
        # order their Redis round trips happen to finish, not the order they were sent.
        async with participant.inbound:
            return await self._handlers[event](participant, payload)

    async def _hello(self, sid: str, data: Any) -> dict[str, Any]:
        if self.connections.by_sid(sid) is not None:
            raise InvalidStateError("this connection is already authenticated")
        address = self._pending.get(sid)
        if address is None:
            raise AuthError("connection not known")
        hello = p.parse(p.Hello, data)
        participant, welcome, start, back = await self._authenticate(sid, address, hello)
        await self._greet(participant, welcome, start, back)
        return p.ok(**welcome)

    # -- residents and kiosks -------------------------------------------------------------
    async def _own_ticket(self, participant: Participant, ticket_id: str) -> Ticket:
        if (await self._tickets_of(participant.id))[0] != ticket_id:
            raise ForbiddenError("not your ticket")
        return await self.hall.get_ticket(ticket_id)

    async def _ticket_take(self, participant: Participant, req: Any) -> dict[str, Any]:
        assert isinstance(req, p.TicketTake)
        current = await self._current_ticket(participant.principal)
        if current is not None and current.state in _LIVE_TICKET:
            raise HallError(f"ticket {current.number} is still {current.state}",
                            code="ticket_active")
        principal = participant.principal
        kiosk = principal.role == Role.KIOSK
        ticket = await self.hall.join(
            req.matter_id,
            channel=Channel.KIOSK if kiosk else Channel.APP,
            kind=ServiceKind(req.kind),
            service_point_id=principal.service_point_id if kiosk else None,
            resident_id=None if kiosk else principal.subject,
            priority=PriorityReason(req.priority) if req.priority else None,
            when_unstaffed=Unstaffed(req.when_unstaffed),
            callback_contact=req.callback_contact,
        )
        await self.state.owner_set(ticket.id, participant.id)
        await self.state.set_ticket(participant.id, ticket.id)
        return p.ok(ticket=ticket_view(ticket))

    async def _ticket_leave(self, participant: Participant, req: Any) -> dict[str, Any]:
        await self._own_ticket(participant, req.ticket_id)
        return p.ok(ticket=ticket_view(await self.hall.leave(req.ticket_id)))

    async def _ticket_callback(self, participant: Participant, req: Any) -> dict[str, Any]:
        await self._own_ticket(participant, req.ticket_id)
        ticket = await self.hall.request_callback(req.ticket_id, req.contact)
        return p.ok(ticket=ticket_view(ticket))

    async def _ticket_position(self, participant: Participant, req: Any) -> dict[str, Any]:
        await self._own_ticket(participant, req.ticket_id)
        return p.ok(position=position_view(await self.hall.position(req.ticket_id)))

    # -- clerks -----------------------------------------------------------------------------
    async def _clerk_available(self, participant: Participant, req: Any) -> dict[str, Any]:
        clerk = await self.hall.set_available(participant.principal.subject)
        return p.ok(clerk=clerk_view(clerk))

    async def _clerk_break(self, participant: Participant, req: Any) -> dict[str, Any]:
        clerk = await self.hall.set_break(participant.principal.subject, req.reason)
        return p.ok(clerk=clerk_view(clerk))

    async def _clerk_logout(self, participant: Participant, req: Any) -> dict[str, Any]:
        return p.ok(clerk=clerk_view(await self.hall.logout(participant.principal.subject)))

    async def _clerks_ticket(self, participant: Participant, ticket_id: str) -> None:
        clerk = await self.hall.get_clerk(participant.principal.subject)
        if clerk.ticket_id != ticket_id:
            raise ForbiddenError("that ticket is not offered to or held by you")

    async def _offer_accept(self, participant: Participant, req: Any) -> dict[str, Any]:
        await self._clerks_ticket(participant, req.ticket_id)
        ticket = await self.hall.accept(participant.principal.subject, req.ticket_id)
        live = await self._open_session(ticket, participant.id)
        return p.ok(ticket=ticket_view(ticket),
                    session=await self._session_view(live, participant.principal))

    async def _offer_decline(self, participant: Participant, req: Any) -> dict[str, Any]:
        await self._clerks_ticket(participant, req.ticket_id)
        ticket = await self.hall.decline(participant.principal.subject, req.ticket_id)
        return p.ok(ticket=ticket_view(ticket))

    async def _session_of(self, participant: Participant, session_id: str) -> MediaSession:
        live = await self.state.session_get(session_id)
        if participant.id not in (live.resident, live.clerk):
            raise ForbiddenError(f"not a participant of session {session_id}")
        return live

    async def _session_end(self, participant: Participant, req: Any) -> dict[str, Any]:
        live = await self._session_of(participant, req.session_id)
        if participant.id == live.clerk:
            ticket = await self.hall.end_session(participant.principal.subject, live.id)
        else:
            ticket = await self.hall.leave(live.id)
        return p.ok(ticket=ticket_view(ticket))

    async def _session_transfer(self, participant: Participant, req: Any) -> dict[str, Any]:
        live = await self._session_of(participant, req.session_id)
        ticket = await self.hall.transfer(
            participant.principal.subject, live.id, to_matter=req.to_matter,
            to_clerk=req.to_clerk, allow_wait=req.allow_wait, note=req.note,
        )
        return p.ok(ticket=ticket_view(ticket))

    async def _wrapup_outcome(self, participant: Participant, req: Any) -> dict[str, Any]:
        clerk = await self.hall.set_outcome(participant.principal.subject, req.outcome,
                                            req.reason)
        return p.ok(clerk=clerk_view(clerk))

    async def _wrapup_finish(self, participant: Participant, req: Any) -> dict[str, Any]:
        clerk = await self.hall.finish_wrapup(participant.principal.subject, req.outcome,
                                              req.reason)
        return p.ok(clerk=clerk_view(clerk))

    async def _wrapup_extend(self, participant: Participant, req: Any) -> dict[str, Any]:
        clerk = await self.hall.extend_wrapup(participant.principal.subject, req.seconds)
        return p.ok(clerk=clerk_view(clerk))

    async def _auth_refresh(self, participant: Participant, req: Any) -> dict[str, Any]:
        token, expires = self.tokens.issue(participant.principal)
        return p.ok(token=token, expires_at=expires)

    # -- WebRTC -----------------------------------------------------------------------------
    async def _rtc_signal(self, participant: Participant, req: Any) -> dict[str, Any]:
        assert isinstance(req, p.RtcSignal)
        if req.description is None and "candidate" not in req.model_fields_set:
            raise p.ProtocolError("rtc.signal needs a description or a candidate")
        live = await self.state.session_get(req.session_id)
        target = live.route(participant.id, req.to)
        sender = "peer" if req.to == "peer" and participant.id in (
            live.resident, live.clerk) else participant.id
        if participant.id in live.monitors:
            sender = participant.id
        message: dict[str, Any] = {"session_id": live.id, "from": sender}
        if req.description is not None:
            message["description"] = req.description.model_dump()
        if "candidate" in req.model_fields_set:
            message["candidate"] = (None if req.candidate is None
                                    else req.candidate.model_dump(exclude_none=True))
        await self._send(target, "rtc.signal", message)
        return p.ok()

    async def _media_screen(self, participant: Participant, req: Any) -> dict[str, Any]:
        live = await self._session_of(participant, req.session_id)
        message = {"session_id": live.id, "from_role": participant.principal.role.value,
                   "active": req.active, "stream_id": req.stream_id}
        await self._send(live.peer_of(participant.id), "media.screen", message)
        for monitor in sorted(live.monitors):
            await self._send(monitor, "media.screen", message)
        return p.ok()

    async def _session_rate(self, participant: Participant, req: Any) -> dict[str, Any]:
        if req.ticket_id not in await self._tickets_of(participant.id):
            raise ForbiddenError("not your ticket")
        ticket = await self.hall.rate(req.ticket_id, req.score, req.comment)
        return p.ok(ticket=ticket_view(ticket))

    # -- 办不成事 cases ---------------------------------------------------------------------------
    def _desk(self) -> CaseDesk:
        if self.cases is None:
            raise HallError("unresolved-matter cases are not configured", code="internal_error")
        return self.cases

    async def _case_file(self, participant: Participant, req: Any) -> dict[str, Any]:
        ticket = None
        if req.ticket_id is not None:
            if req.ticket_id not in await self._tickets_of(participant.id):
                raise ForbiddenError("not your ticket")
            ticket = await self.hall.get_ticket(req.ticket_id)
        case = await self._desk().file(participant.principal, req.matter_id, req.description,
                                       ticket, time.time())
        self._case_counts_at = None
        return p.ok(case=case_view(case))

    async def _case_mine(self, participant: Participant, req: Any) -> dict[str, Any]:
        cases = await self._desk().mine(participant.principal)
        return p.ok(cases=[case_view(c) for c in cases])

    async def _case_lookup(self, participant: Participant, req: Any) -> dict[str, Any]:
        return p.ok(case=case_view(await self._desk().book.by_claim(req.claim_code)))

    async def _case_act(self, participant: Participant, req: Any) -> dict[str, Any]:
        case = await self._desk().act(participant.principal, req.case_id, req.action,
                                      to=req.to, note=req.note, now=time.time())
        self._case_counts_at = None
        if case.reporter is not None and case.reporter != participant.id:
            await self._send(case.reporter, "case.update", {"case": case_view(case)})
        return p.ok(case=case_view(case))

    async def _case_overdue(self, participant: Participant, req: Any) -> dict[str, Any]:
        return p.ok(cases=[case_view(c) for c in await self._desk().book.overdue()])

    async def _case_list(self, participant: Participant, req: Any) -> dict[str, Any]:
        state = CaseState(req.state) if req.state is not None else None
        cases = await self._desk().book.listing(state=state, limit=req.limit)
        return p.ok(cases=[case_view(c) for c in cases])

    async def sweep_cases(self, now: float | None = None) -> int:
        """Apply passed case deadlines; tell every connected supervisor what escalated."""
        escalated = await self._desk().sweep(time.time() if now is None else now)
        self._case_counts_at = None
        for case in escalated:
            for pid in await self.state.participant_ids():
                if role_of(pid) == Role.SUPERVISOR:
                    await self._send(pid, "case.escalated", {"case": case_view(case)})
        return len(escalated)

    # -- pre-review (预审) -------------------------------------------------------------------
    def _prereview_desk(self) -> PreReviewDesk:
        if self.prereviews is None:
            raise HallError("pre-review records are not configured", code="internal_error")
        return self.prereviews

    async def _clerks_session(self, participant: Participant,
                              session_id: str) -> MediaSession:
        live = await self._session_of(participant, session_id)
        if participant.id != live.clerk:
            raise ForbiddenError("only the session's clerk pre-reviews")
        return live

    async def _review_changed(self, live: MediaSession, review: PreReview) -> dict[str, Any]:
        """The resident watches the checklist as the clerk works through it."""
        await self._send(live.resident, "prereview.update",
                         {"session_id": live.id, "prereview": review.to_dict()})
        return p.ok(prereview=review.to_dict())

    async def _prereview_start(self, participant: Participant, req: Any) -> dict[str, Any]:
        live = await self._clerks_session(participant, req.session_id)
        review = await self._prereview_desk().start(live.id, participant.principal.subject)
        return await self._review_changed(live, review)

    async def _prereview_mark(self, participant: Participant, req: Any) -> dict[str, Any]:
        live = await self._clerks_session(participant, req.session_id)
        review = await self._prereview_desk().mark(live.id, req.material_id, req.mark,
                                                   req.note, req.file_ids)
        return await self._review_changed(live, review)

    async def _prereview_finish(self, participant: Participant, req: Any) -> dict[str, Any]:
        live = await self._clerks_session(participant, req.session_id)
        review, outcome = await self._prereview_desk().finish(live.id)
        await self._send(live.resident, "prereview.result", outcome)
        return p.ok(prereview=review.to_dict(), **{k: v for k, v in outcome.items()
                                                   if k != "session_id"})

    async def _chat_send(self, participant: Participant, req: Any) -> dict[str, Any]:
        """Text chat: kept with the session and delivered like every numbered message, so a
        participant who was away gets it in the replay."""
        live = await self._session_of(participant, req.session_id)
        message = {"id": secrets.token_urlsafe(8), "from_role": participant.principal.role.value,
                   "name": participant.principal.name, "text": req.text, "at": time.time()}
        await self.state.chat_add(live.id, message)
        for target in (live.peer_of(participant.id), *sorted(live.monitors)):
            await self._send(target, "chat.message", {"session_id": live.id, "message": message})
        return p.ok(message=message)

    async def _monitor_join(self, participant: Participant, req: Any) -> dict[str, Any]:
        live = await self.state.session_get(req.session_id)
        await self.hall.record_monitor(live.id, participant.principal.subject, joined=True)
        await self.state.monitor_add(live.id, participant.id)
        await self._send(live.clerk, "monitor.joined", {
            "session_id": live.id, "supervisor": participant.id,
            "name": participant.principal.name})
        return p.ok(session={
            "id": live.id, "ticket_id": live.id, "clerk": live.clerk, "role": "monitor",
            "ice_servers": self._ice(participant.id)})

    async def _monitor_leave(self, participant: Participant, req: Any) -> dict[str, Any]:
        live = await self.state.monitor_remove(req.session_id, participant.id)
        await self.hall.record_monitor(live.id, participant.principal.subject, joined=False)
        await self._send(live.clerk, "monitor.left", {
            "session_id": live.id, "supervisor": participant.id,
            "name": participant.principal.name})
        return p.ok()

    async def _session_note(self, participant: Participant, req: Any) -> dict[str, Any]:
        """The clerk's private note: logged, and kept with the session for the clerk's view
        (a reload or resume gets them back); never sent to the resident or monitors."""
        live = await self.state.session_get(req.session_id)
        if participant.id != live.clerk:
            raise ForbiddenError("only the session's clerk writes notes on it")
        note = await self.hall.record_note(live.id, participant.principal.subject, req.text)
        view = {"id": note.id, "text": note.text, "at": note.at}
        await self.state.note_add(live.id, view)
        return p.ok(note=view)

    # -- kiosks --------------------------------------------------------------------------------
    @staticmethod
    def _kiosk_id(principal: Principal) -> str:
        return principal.service_point_id or principal.subject

    async def _kiosk_presence(self, principal: Principal, *, online: bool) -> None:
        kiosk_id = self._kiosk_id(principal)
        changed = await self.state.kiosk_online(kiosk_id, online, self.now())
        if changed:
            kind = EventKind.KIOSK_ONLINE if online else EventKind.KIOSK_OFFLINE
            try:
                await self.hall.record_kiosk(kiosk_id, kind)
            except HallError:
                # The registry (and so the wall) is right; only the log line is missing, and
                # that must not refuse the kiosk's connection.
                logger.warning("could not log %s for %s", kind, kiosk_id, exc_info=True)

    async def _kiosk_health(self, participant: Participant, req: Any) -> dict[str, Any]:
        assert isinstance(req, p.KioskHealth)
        kiosk_id = self._kiosk_id(participant.principal)
        report = DeviceReport(req.camera, req.microphone, req.speaker, req.document_camera,
                              detail=req.detail, agent=req.agent)
        if await self.state.kiosk_changes(kiosk_id, report):
            # Logged before it is kept: a report whose log line failed is not swallowed as
            # "no change" when the kiosk sends it again.
            await self.hall.record_kiosk(kiosk_id, EventKind.KIOSK_HEALTH, **report.to_dict(),
                                         failed=report.failed, agent=report.agent)
        await self.state.kiosk_report(kiosk_id, report, self.now())
        return p.ok()

    # -- wallboard and queue views -------------------------------------------------------------
    async def _wall_snapshot(self, participant: Participant, req: Any) -> dict[str, Any]:
        return p.ok(snapshot=(await self._wall(await self.hall.snapshot())).view)

    async def _wall(self, snapshot: dict[str, Any]) -> Board:
        names = {c["id"]: c["name"] for c in snapshot["clerks"]}
        sessions = []
        for live in await self.state.sessions_all():
            try:
                ticket = await self.hall.get_ticket(live.id)
            except NotFoundError:
                continue  # ended meanwhile
            sessions.append(LiveSession(
                session_id=live.id, ticket_number=ticket.number, matter_id=ticket.matter_id,
                clerk_id=ticket.clerk_id, clerk_name=names.get(ticket.clerk_id or "", ""),
                channel=ticket.channel.value, service_point_id=ticket.service_point_id,
                started_at=ticket.session_started_at, monitors=len(live.monitors)))
        return build_wall(self.hall.catalog, self.hall.policy, snapshot,
                          await self.hall.day_stats(), await self.state.kiosks_all(), sessions,
                          await self._cases_now())

    async def _cases_now(self) -> dict[str, int]:
        now = asyncio.get_running_loop().time()
        if self.cases is None or (self._case_counts_at is not None
                                  and now - self._case_counts_at < _CASE_COUNTS_MAX_AGE_S):
            return self._case_counts
        # Marked fresh before the read: a case changed while it runs marks it stale again.
        self._case_counts_at = now
        try:
            self._case_counts = await self.cases.book.counts()
        except Exception:
            # The records database being away must not freeze the whole wall: it shows the
            # last counts known until the database answers again.
            self._case_counts_at = None
            logger.warning("case counts unavailable; the wall keeps the last known",
                           exc_info=True)
        return self._case_counts

    async def _push_views_forever(self) -> None:
        while True:
            try:
                await self._push_views()
            except asyncio.CancelledError:
                raise
            except StoreUnavailableError as err:
                logger.debug("views not pushed: %s", err)  # /readyz and the sweep say it
            except Exception:
                logger.exception("pushing wall and queue views failed; trying again")
            await asyncio.sleep(self.config.wall_interval_s)

    async def _push_views(self, only: Participant | None = None) -> None:
        """Send supervisors the wall and clerks their queues: to ``only`` unconditionally
        (it was just welcomed), else to every greeted one whose view changed. Unnumbered and
        not kept for replay: each view replaces the last, a resumed client gets a fresh one."""
        targets = [only] if only is not None else [
            x for x in self.connections.all() if x.greeted]
        targets = [x for x in targets
                   if x.principal.role in (Role.SUPERVISOR, Role.CLERK)]
        if not targets:
            return
        snapshot = await self._recent_snapshot()
        wall: Board | None = None
        for participant in targets:
            if participant.principal.role == Role.SUPERVISOR:
                if wall is None:
                    wall = await self._wall(snapshot)
                board, event, payload = wall, "wall.update", {"wall": wall.view}
            else:
                board = build_queues(self.hall.catalog, snapshot, participant.principal.subject)
                event, payload = "queues.update", board.view
            if only is None and self._views_sent.get(participant.id) == board.key:
                continue
            sid = participant.sid
            if self.connections.by_sid(sid) is not participant:
                continue  # gone while the view was built
            self._views_sent[participant.id] = board.key
            await self.sio.emit(event, payload, to=sid)

    async def _recent_snapshot(self) -> dict[str, Any]:
        """The hall's snapshot for the periodic views, built by one process per interval and
        shared: each build reads every queue under the hall lock, and N processes building
        their own every second would cost N times that (and hold the lock N times)."""
        shared = await self.state.shared_view("snapshot")
        if shared is not None:
            cached: dict[str, Any] = orjson.loads(shared)
            return cached
        snapshot = await self.hall.snapshot()
        await self.state.put_shared_view("snapshot", orjson.dumps(snapshot),
                                         self.config.wall_interval_s * 0.9)
        return snapshot

    def _ice(self, participant_id: str) -> list[dict[str, Any]]:
        c = self.config
        return ice_servers(stun_urls=c.stun_urls, turn_urls=c.turn_urls,
                           turn_secret=c.turn_secret, turn_ttl_s=c.turn_ttl_s,
                           participant=participant_id, now=time.time())

    async def _open_session(self, ticket: Ticket, clerk_pid: str) -> MediaSession:
        live = await self.state.session_find(ticket.id)
        if live is None:
            resident = await self.state.owner_of(ticket.id) or f"unknown:{ticket.id}"
            live = await self.state.session_open(ticket.id, resident, clerk_pid)
        return live

    async def _session_view(self, live: MediaSession, viewer: Principal) -> dict[str, Any]:
        is_clerk = viewer.participant_id == live.clerk
        record = await self.state.record(live.peer_of(viewer.participant_id))
        peer = None if record is None else record.principal
        ticket = await self.hall.get_ticket(live.id)
        view: dict[str, Any] = {
            "id": live.id,
            "ticket_id": live.id,
            "matter_id": ticket.matter_id,
            "role": viewer.role.value,
            "peer": {"role": peer.role.value if peer else None,
                     "name": peer.name if peer else ""},
            "initiator": is_clerk,
            "polite": not is_clerk,
            "ice_servers": self._ice(viewer.participant_id),
        }
        view["chat"] = await self.state.chat(live.id)
        if is_clerk:
            view["monitors"] = sorted(live.monitors)
            view["notes"] = await self.state.notes(live.id)
        return view

    # ------------------------------------------------------------------ session files
    async def check_file_access(self, principal: Principal, ticket_id: str) -> None:
        """Who may list, upload or download a ticket's files: the resident (or kiosk) who
        took it, the clerk it is offered to or held by, and supervisors. ForbiddenError else."""
        if principal.role == Role.SUPERVISOR:
            return  # also after a restart, when an embedded hall's live tickets are gone
        ticket = await self.hall.get_ticket(ticket_id)
        if principal.role == Role.CLERK:
            if ticket.clerk_id == principal.subject and not ticket.is_final:
                return
        elif (await self.state.owner_of(ticket_id) == principal.participant_id
              or ticket_id in await self._tickets_of(principal.participant_id)):
            return
        raise ForbiddenError("not a participant of this ticket's session")

    async def announce_file(self, ticket_id: str, file: dict[str, Any]) -> None:
        """Tell the other side (and monitors) that a file was added to the ticket."""
        ticket = await self.hall.get_ticket(ticket_id)
        targets = [pid for pid in (await self.state.owner_of(ticket_id),
                                   f"clerk:{ticket.clerk_id}" if ticket.clerk_id else None)
                   if pid is not None]
        live = await self.state.session_find(ticket_id)
        if live is not None:
            targets += sorted(live.monitors)
        for pid in targets:
            if pid != file.get("uploaded_by"):  # the uploader has the HTTP answer
                await self._send(pid, "file.added", {"ticket_id": ticket_id, "file": file})

    # ------------------------------------------------------------------ sending
    async def _send(self, participant_id: str, event: str, payload: dict[str, Any]) -> None:
        """Number the message and keep it for replay (shared state); emit it if the
        participant's socket is here. The state routes it to the process holding the socket
        otherwise (:meth:`_emit_numbered` there, through ``on_remote``)."""
        local = await self.state.send(participant_id, event, payload)
        if local is not None:
            await self._emit_numbered(participant_id, local[0], event, local[1])

    async def _emit_numbered(self, participant_id: str, seq: int, event: str,
                             payload: dict[str, Any]) -> None:
        """Emit message ``seq`` to the participant's socket here, in order and once: a seq
        that overtook others (numbered by another process, delivered faster) first brings the
        missing ones from the outbox."""
        participant = self.connections.get(participant_id)
        if participant is None:
            return
        async with participant.lock:
            if not participant.greeted or seq <= participant.delivered:
                return  # the greeting replays it, or it went out already
            if self.connections.get(participant_id) is not participant:
                return
            if seq == participant.delivered + 1 and event:
                entries = [(seq, event, payload)]
            else:
                try:
                    entries = await self.state.since(participant_id, participant.delivered)
                except ResumeError:
                    # Too far behind to fill the gap: the client resumes or starts afresh.
                    await self.sio.disconnect(participant.sid)
                    return
            for number, name, body in entries:
                if number > participant.delivered:
                    await self.sio.emit(name, body, to=participant.sid)
                    participant.delivered = number

    async def _resync(self) -> None:
        """Emit whatever the outbox has beyond what each socket here was last sent."""
        for participant in self.connections.all():
            record = await self.state.record(participant.id)
            if record is not None and record.seq > participant.delivered:
                # No event: everything up to record.seq comes from the outbox.
                await self._emit_numbered(participant.id, record.seq, "", {})

    async def _remote_kick(self, participant_id: str, sid: str) -> None:
        """The participant connected on another process: drop its old socket here."""
        participant = self.connections.by_sid(sid)
        if participant is not None and participant.id == participant_id:
            self.connections.detach(sid)
            await self.sio.emit("replaced", {}, to=sid)
            await self.sio.disconnect(sid)

    async def _deliver_notices(self) -> None:
        while True:
            batch = await self._notices.get()
            for notice in batch:
                try:
                    await self._deliver(notice)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("delivering %s failed", notice)

    async def _deliver(self, notice: Notice) -> None:
        kind = notice.kind
        if kind == NoticeKind.TICKET and notice.ticket_id is not None:
            await self._ticket_changed(notice)
        elif kind == NoticeKind.OFFER and notice.clerk_id is not None:
            await self._send(f"clerk:{notice.clerk_id}", "offer.new",
                             {"ticket_id": notice.ticket_id, **_offer_fields(notice.data)})
        elif kind == NoticeKind.OFFER_WITHDRAWN and notice.clerk_id is not None:
            await self._send(f"clerk:{notice.clerk_id}", "offer.withdrawn",
                             {"ticket_id": notice.ticket_id, "reason": notice.data["reason"]})
        elif kind == NoticeKind.YOU_ARE_NEXT and notice.ticket_id is not None:
            owner = await self.state.owner_of(notice.ticket_id)
            if owner is not None:
                await self._send(owner, "ticket.next", {"ticket_id": notice.ticket_id})
        elif kind == NoticeKind.QUEUE_CHANGED and notice.queue_key is not None:
            self._schedule_positions(notice.queue_key)
        elif kind == NoticeKind.CLERK and notice.clerk_id is not None:
            clerk = await self.hall.get_clerk(notice.clerk_id)
            await self._send(f"clerk:{clerk.id}", "clerk.state", {"clerk": clerk_view(clerk)})
        elif kind == NoticeKind.WRAPUP_OVERDUE and notice.clerk_id is not None:
            await self._send(f"clerk:{notice.clerk_id}", "wrapup.overdue",
                             {"ticket_id": notice.ticket_id})

    async def _ticket_changed(self, notice: Notice) -> None:
        assert notice.ticket_id is not None
        # The session before the ticket: an accept commits in_session, then opens the
        # session, so a session found here and a ticket read after it that is not in_session
        # means the session is really over. The other order closed a session just opened
        # when this notice (of an older command) read the ticket before the accept.
        live = await self.state.session_find(notice.ticket_id)
        ticket = await self.hall.get_ticket(notice.ticket_id)
        owner = await self.state.owner_of(ticket.id)
        if live is not None and ticket.state != TicketState.IN_SESSION:
            live = await self.state.session_close(ticket.id)
        if live is not None and ticket.state != TicketState.IN_SESSION:
            reason = _end_reason(notice.data)
            for pid in (live.resident, live.clerk, *sorted(live.monitors)):
                await self._send(pid, "session.ended", {"session_id": live.id,
                                                        "reason": reason})
        view = ticket_view(ticket)
        holder = notice.clerk_id or ticket.clerk_id
        watchers = [owner] if owner is not None else []
        if holder is not None:
            watchers.append(f"clerk:{holder}")
        for watcher in watchers:
            # Several notices of one command read the same (latest) ticket: send it once.
            if self._last_view.get((watcher, ticket.id)) != view:
                self._last_view[(watcher, ticket.id)] = view
                await self._send(watcher, "ticket.update", {"ticket": view})
        if ticket.state == TicketState.IN_SESSION and ticket.clerk_id is not None:
            live = await self._open_session(ticket, f"clerk:{ticket.clerk_id}")
            if await self.state.session_announce(live.id):
                for pid in (live.resident, live.clerk):
                    record = await self.state.record(pid)
                    if record is not None:
                        view = await self._session_view(live, record.principal)
                        await self._send(pid, "session.started", {"session": view})
        if (ticket.state == TicketState.DONE and ticket.outcome == "unresolved"
                and self.cases is not None):
            # 办不成事: a clerk's "could not be completed" files a case for the resident.
            reporter = owner if owner is not None and owner.startswith("resident:") else None
            case = await self.cases.file_from_outcome(ticket, reporter, time.time())
            self._case_counts_at = None
            if owner is not None:
                await self._send(owner, "case.update", {"case": case_view(case)})
        if ticket.is_final:
            for key in [k for k in self._last_view if k[1] == ticket.id]:
                del self._last_view[key]
            await self.state.owner_drop(ticket.id)
            self._sent_position.pop(ticket.id, None)
            if owner is not None:
                await self.state.clear_ticket(owner, ticket.id)

    # -- throttled position pushes ----------------------------------------------------------
    def _schedule_positions(self, queue_key: str) -> None:
        push = self._pushes.setdefault(queue_key, _QueuePush())
        if push.task is not None and not push.task.done():
            return  # a push is already due: it will read the latest ranks
        push.task = self._tasks.spawn(self._push_positions(queue_key, push),
                                      f"positions-{queue_key}")

    async def _push_positions(self, queue_key: str, push: _QueuePush) -> None:
        try:
            await self._push_positions_now(queue_key, push)
        except StoreUnavailableError as err:
            # The change must still reach the residents: try again when Redis may be back.
            logger.warning("positions of %s not pushed (%s); retrying", queue_key, err)
            await asyncio.sleep(1.0)
            push.task = None
            self._schedule_positions(queue_key)

    async def _push_positions_now(self, queue_key: str, push: _QueuePush) -> None:
        loop = asyncio.get_running_loop()
        wait = push.last + self.config.position_interval_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        push.last = loop.time()
        owners = await self.state.owners(await self.hall.store.queue_range(queue_key, 0, 1000))
        ids = sorted(owners)
        if not ids:
            return
        for info in await self.hall.positions(ids):
            sent = (info.position, info.eta_s, info.staffed)
            if self._sent_position.get(info.ticket_id) == sent:
                continue
            self._sent_position[info.ticket_id] = sent
            owner = owners.get(info.ticket_id)
            if owner is not None:
                await self._send(owner, "ticket.position", position_view(info))


def _offer_fields(data: dict[str, Any]) -> dict[str, Any]:
    keys = ("number", "matter_id", "kind", "priority", "callback", "callback_contact",
            "transfers", "wait_s", "deadline", "timeout_s")
    return {k: data.get(k) for k in keys}


def _end_reason(data: dict[str, Any]) -> str:
    if data.get("transferred_from"):
        return "transfer"
    if data.get("requeued"):
        return "clerk_lost"
    ended_by = data.get("ended_by")
    if ended_by == "resident_disconnected":
        return "resident_lost"
    return str(ended_by or data.get("state") or "ended")


def public_message(err: HallError) -> str:
    """What a client is told: an unavailable store's message names internal addresses."""
    if isinstance(err, StoreUnavailableError):
        return "the hall is briefly unavailable; please try again in a moment"
    return err.message


def _remote(environ: dict[str, Any]) -> str:
    request = environ.get("aiohttp.request")
    remote = getattr(request, "remote", None) if request is not None else None
    return str(remote or environ.get("REMOTE_ADDR") or "unknown")


