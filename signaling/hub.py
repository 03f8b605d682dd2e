"""The Socket.IO hub: authenticates connections, validates and authorises every event, drives
the hall engine, and turns the engine's notices into numbered, resumable messages.

One hub per process. Every event goes through :meth:`SignalingHub._on_event` (the catch-all
handler), so validation, size limits, authorisation and error answers are the same for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import socketio

from rooms.aio import stop_tasks
from rooms.cases import PENDING_CASE_PREFIX, CaseState, PendingCase
from rooms.catalog import ServiceKind
from rooms.clerks import Clerk
from rooms.errors import (
    AuthError,
    ForbiddenError,
    HallError,
    InvalidStateError,
    NotFoundError,
    RateLimitedError,
    StoreUnavailableError,
    ThrottledError,
)
from rooms.events import EventKind
from rooms.hall import Hall, Unstaffed
from rooms.logsafe import safe_log
from rooms.notices import Notice, NoticeKind
from rooms.prereview import PreReview
from rooms.tickets import Channel, PriorityReason, Ticket, TicketState
from signaling import call_quality
from signaling import protocol as p
from signaling.case_desk import CaseDesk, case_view
from signaling.hub_state import (
    HubState,
    MemoryHubState,
    Record,
    ReplayGapError,
    ResumeError,
    role_of,
)
from signaling.identity import (
    AppIdentityVerifier,
    Credential,
    Principal,
    Role,
    TokenService,
    ice_servers,
)
from signaling.kiosks import DeviceReport
from signaling.participants import Connections, Participant
from signaling.prereview_desk import PreReviewDesk
from signaling.ratelimit import RateLimiter, RateLimits
from signaling.scope import Scope, scope_of, scope_of_supervisor
from signaling.sessions import MediaSession
from signaling.throttle import AuthThrottle
from signaling.views import clerk_view, offer_view, position_view, ticket_view
from signaling.wall import Board, LiveSession, build_queues, build_wall
from signaling.wire import HubServer, OrjsonPacket, UndecodablePacket

logger = logging.getLogger("hall.signaling")

Handler = Callable[[Participant, Any], Awaitable[dict[str, Any]]]

# The wall's 办不成事 counts are read again after this process changed a case, and at least
# this often otherwise (changes made elsewhere); not on every pass, not to poll the database.
_CASE_COUNTS_MAX_AGE_S = 30.0

# A ticket notice's idempotent clean-up that failed is tried this often more (backoff from
# 0.5 s to 10 s: about a minute and a half in all) before it is given up, loudly.
_EFFECT_RETRIES = 12

# After clerk.logout's ack, its socket is closed this much later (so the ack arrives first).
_LOGOUT_CLOSE_S = 0.2

# A resident's (or kiosk's) uploads are open until the session is over; a kiosk's access to
# the files at all, too.
_UPLOADS_OPEN = frozenset({TicketState.WAITING, TicketState.TRANSFERRED, TicketState.OFFERED,
                           TicketState.IN_SESSION})

_LIVE_TICKET = frozenset({TicketState.WAITING, TicketState.TRANSFERRED, TicketState.OFFERED,
                          TicketState.IN_SESSION, TicketState.WRAP_UP})


@dataclass(frozen=True, slots=True)
class HubConfig:
    auth_timeout_s: float = 5.0
    # Engine.IO connections from one address not authenticated yet; more are refused at once
    # (a connection is unauthenticated for milliseconds normally: NAT-ed centres fit).
    max_unauthenticated_per_address: int = 200  # HALL_MAX_UNAUTHENTICATED_PER_ADDRESS
    resume_grace_s: float = 30.0
    allowed_origins: tuple[str, ...] = ()  # empty: same origin only
    # Decides the handshake's Origin instead (server.forwarded.socketio_origin_check):
    # python-socketio's own same-origin check believes X-Forwarded-Host from anyone.
    origin_check: Callable[[str | None, dict[str, Any]], bool] | None = None
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
    # Per-principal event budgets (signaling/ratelimit.py); None: no limits (benchmarks).
    rate_limits: RateLimits | None = field(default_factory=RateLimits)
    # A kiosk may rate the ticket it just finished this long after its session ended (its
    # after-screen), unless it took another ticket since; its files are closed at once.
    kiosk_rating_window_s: float = 120.0


# Position messages sent at once by one push (each is one round trip to the shared state).
_POSITION_SENDS = 32


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
        throttle: AuthThrottle,
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
        if self.config.origin_check is not None:
            origins = self.config.origin_check
        # The Origin is decided in the connect handler, which refuses a foreign one with a
        # code the client can read; Engine.IO's own refusal is a bare 400 (no code, and
        # logged at ERROR), so Engine.IO lets every origin through (_every_origin).
        self._origin_ok = _origin_rule(origins)
        self._origins_refused: set[str] = set()  # logged once each (bounded)
        # Counters a metrics endpoint can export: frames refused undecoded, events refused
        # by a rate limit.
        self.stats: dict[str, int] = {"undecodable": 0, "rate_limited": 0}
        self.limiter = (RateLimiter(self.config.rate_limits)
                        if self.config.rate_limits is not None else None)
        self.sio = HubServer(
            async_mode="aiohttp",
            cors_allowed_origins=_every_origin,
            # Every origin passes Engine.IO: no credentials (cookies) ride along cross-site.
            cors_credentials=False,
            ping_interval=self.config.ping_interval_s,
            ping_timeout=self.config.ping_timeout_s,
            # Engine.IO drops a frame this large outright; events up to 64 KiB get an answer.
            max_http_buffer_size=2 * p.MAX_EVENT_BYTES,
            serializer=OrjsonPacket,
            on_undecodable=self._undecodable,
        )
        self.connections = Connections()
        # participant id -> fingerprint of the wall / queue view it was last sent
        self._views_sent: dict[str, bytes] = {}
        self._case_counts: dict[str, dict[str, int]] = {}  # per department, last known
        self._case_counts_at: float | None = None  # loop time of that read; None: read again
        self._pusher: asyncio.Task[None] | None = None
        self._pending: dict[str, str] = {}  # sid -> remote address, not yet authenticated
        # Engine.IO connections not authenticated yet: eio sid -> address, and per address
        # how many (capped: max_unauthenticated_per_address).
        self._unauthenticated: dict[str, str] = {}
        self._unauthenticated_from: dict[str, int] = {}
        self._pushes: dict[str, _QueuePush] = {}
        # Per-process de-duplication only (another process may send the same view again;
        # a client takes the latest): what was last sent for a ticket.
        self._sent_position: dict[str, tuple[int | None, float | None, bool]] = {}
        self._last_view: dict[tuple[str, str], dict[str, Any]] = {}  # (participant, ticket)
        self._beat_ok_since: float | None = None  # loop time heartbeats have worked since
        self._undetached: dict[str, str] = {}  # sid -> participant: detach failed, to retry
        self._tasks = _Tasks()
        self._notices: asyncio.Queue[Sequence[Notice]] = asyncio.Queue()
        # Set when an outcome made a 办不成事 case due: wakes the case filer (server.app).
        self.cases_due = asyncio.Event()
        # Called when the heartbeat finds the shared state emptied (server.app closes the
        # tickets it lost in the records database).
        self.on_state_lost: Callable[[], Awaitable[None]] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        # Told of every call.report's funnel stage, failure and stats (server/metrics.py).
        self.call_observer: call_quality.CallObserver | None = None
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
            "call.report": self._call_report,
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
        self.sio.on_client_event = self._on_event  # every client event, whatever its name
        self.sio.on_transport_open = self._transport_open
        self.sio.on_transport_closed = self._transport_closed

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
        self._check_origin(environ)
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
                data: dict[str, Any] = {"code": err.code, "message": message}
                if isinstance(err, ThrottledError):
                    data["retry_after_s"] = round(err.retry_after_s, 1)
                raise socketio.exceptions.ConnectionRefusedError(message, data) from None
            # Greet once the handshake is answered: a message emitted from inside the connect
            # handler would reach the client before its CONNECT packet.
            self._tasks.spawn(self._greet(participant, welcome, start, back), f"greet-{sid}")
            return
        self._pending[sid] = address
        self._tasks.spawn(self._auth_deadline(sid), f"auth-deadline-{sid}")

    def _check_origin(self, environ: dict[str, Any]) -> None:
        """Refuse a handshake from a page of a foreign origin: ``connect_error`` with
        ``data.code`` ``origin_refused``, logged once per origin (a warning, no traceback)."""
        origin = environ.get("HTTP_ORIGIN")
        if self._origin_ok(origin, environ):
            return
        shown = repr(str(origin)[:200])  # the client's text, escaped for the log
        if shown not in self._origins_refused and len(self._origins_refused) < 1000:
            self._origins_refused.add(shown)
            logger.warning("refusing socket handshakes from origin %s (not allowed; "
                           "HALL_ALLOWED_ORIGINS); further ones are not logged", shown)
        message = "this page's origin may not connect to the hall"
        raise socketio.exceptions.ConnectionRefusedError(
            message, {"code": "origin_refused", "message": message})

    async def _auth_deadline(self, sid: str) -> None:
        await asyncio.sleep(self.config.auth_timeout_s)
        if sid in self._pending:
            self._pending.pop(sid, None)
            logger.info("closing %s: not authenticated within %.0fs", sid,
                        self.config.auth_timeout_s)
            await self._close_transport(sid)

    async def _close_transport(self, sid: str) -> None:
        """Close the socket's Engine.IO connection, not only its namespace (which the client
        could join again, for ever, on the same websocket)."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is None:
            await self.sio.disconnect(sid)
        else:
            await self._hang_up(eio_sid)

    async def _hang_up(self, eio_sid: str) -> None:
        """End an Engine.IO connection. Engine.IO's disconnect only sends a CLOSE packet and
        leaves a websocket open until the client closes it (a hostile one does not)."""
        socket = self.sio.eio.sockets.get(eio_sid)
        await self.sio.eio.disconnect(eio_sid)
        if socket is not None and socket.upgraded:
            socket.queue.put_nowait(None)  # its writer ends, closing the websocket

    # -- Engine.IO connections before authentication (HubServer's hooks) -------------------
    def _transport_open(self, eio_sid: str, environ: dict[str, Any]) -> bool:
        """A new Engine.IO connection: refused at once if its address already has
        ``max_unauthenticated_per_address`` unauthenticated ones, else it has
        ``auth_timeout_s`` to authenticate, namespace joined or not."""
        address = _remote(environ)
        count = self._unauthenticated_from.get(address, 0)
        if count >= self.config.max_unauthenticated_per_address:
            return False
        self._watch_transport(eio_sid, address)
        return True

    def _watch_transport(self, eio_sid: str, address: str) -> None:
        if eio_sid in self._unauthenticated:
            return
        self._unauthenticated[eio_sid] = address
        self._unauthenticated_from[address] = self._unauthenticated_from.get(address, 0) + 1
        self._tasks.spawn(self._transport_deadline(eio_sid), f"eio-deadline-{eio_sid}")

    def _namespace_left(self, sid: str) -> None:
        """The namespace is gone but the Engine.IO connection may stay (a client DISCONNECT
        packet, a replaced socket): unauthenticated again, it gets a deadline again."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        socket = self.sio.eio.sockets.get(eio_sid) if eio_sid is not None else None
        if socket is None or socket.closing or socket.closed:
            return
        self._watch_transport(eio_sid, _remote(self.sio.environ.get(eio_sid) or {}))

    def _transport_closed(self, eio_sid: str) -> None:
        address = self._unauthenticated.pop(eio_sid, None)
        if address is None:
            return
        left = self._unauthenticated_from.get(address, 1) - 1
        if left > 0:
            self._unauthenticated_from[address] = left
        else:
            self._unauthenticated_from.pop(address, None)

    def _transport_authenticated(self, sid: str) -> None:
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:
            self._transport_closed(eio_sid)  # no longer counted, no deadline

    async def _transport_deadline(self, eio_sid: str) -> None:
        await asyncio.sleep(self.config.auth_timeout_s)
        if eio_sid in self._unauthenticated:
            logger.info("closing connection %s: not authenticated within %.1fs", eio_sid,
                        self.config.auth_timeout_s)
            self._transport_closed(eio_sid)
            await self._hang_up(eio_sid)

    async def _authenticate(
        self, sid: str, address: str, hello: p.Hello
    ) -> tuple[Participant, dict[str, Any], int, bool]:
        """Check credentials and bind the socket; returns the welcome, the seq to replay
        from (the client's ``last_seq`` on resume, else everything numbered from now on), and
        whether the participant is coming back from a drop (resumed, or a fresh connection
        within the grace, e.g. a reloaded page): its peer is then told it is back."""
        # A valid credential is accepted whatever its address did (signaling.throttle): the
        # throttle is consulted only once one was refused.
        credential: Credential | None = None  # a hall token's: its expiry is watched
        try:
            # A resume presents the credential it came from too, verified as at a fresh
            # connect: a resume token alone (stolen, or outliving its credential) is nothing.
            if hello.token is not None:
                credential = await self.tokens.verify_live(hello.token)
                principal = credential.principal
            elif hello.id_token is not None:
                if self.app_identity is None:
                    raise AuthError("resident identity tokens are not configured")
                principal = self.app_identity.verify(hello.id_token)
            elif hello.resume is not None:
                raise AuthError("a resume needs its credential too: send token or id_token "
                                "with resume and last_seq")
            else:
                raise AuthError("send token or id_token")
            if hello.resume is not None:
                await self._redeem(principal, hello.resume, hello.last_seq)
        except ReplayGapError:
            raise  # a wrong last_seq, not a wrong credential: the token stays good
        except (AuthError, ResumeError):
            await self.throttle.refused(address)
            raise
        self._pending.pop(sid, None)
        self._transport_authenticated(sid)
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
        if credential is not None:
            self._watch_expiry(participant, credential)
        return participant, welcome, start, back

    async def _redeem(self, principal: Principal, token: str, last_seq: int) -> None:
        """Resume the credential's own participant (the token must be one of its good ones,
        hub_state.HubState.redeem). The gap is checked first: a wrong ``last_seq`` is refused
        (ReplayGapError) without touching the token."""
        participant_id = principal.participant_id
        await self.state.since(participant_id, last_seq)
        await self.state.redeem(token, participant_id)

    # -- the end of a hall token's life ---------------------------------------------------
    def _watch_expiry(self, participant: Participant, credential: Credential) -> None:
        """Close the socket when its token expires, unless ``auth.refresh`` moved it on
        (docs/protocol.md, "session.expired"). One timer per clerk, supervisor or kiosk
        socket, nothing per event."""
        participant.credential = credential
        if participant.expiry is not None:
            participant.expiry.cancel()
        sid = participant.sid
        participant.expiry = asyncio.get_running_loop().call_later(
            max(0.0, credential.expires_at - time.time()),
            lambda: self._tasks.spawn(self._expire(sid, credential), f"expired-{sid}"))

    async def _expire(self, sid: str, credential: Credential) -> None:
        # The loop's clock is not the wall clock: a timer may fire a little early.
        early = credential.expires_at - time.time()
        if early > 0:
            await asyncio.sleep(early)
        participant = self.connections.by_sid(sid)
        if participant is not None and participant.credential is credential:
            await self._end_session(sid, "token_expired")  # not refreshed meanwhile

    async def _end_session(self, sid: str, code: str) -> None:
        """Tell the socket its hall session is over (``session.expired``) and close it."""
        participant = self.connections.by_sid(sid)
        if participant is None:
            return  # gone already
        message = ("your hall token expired; log in again" if code == "token_expired"
                   else "you logged out")
        logger.info("closing %s (%s): %s", sid, safe_log(participant.id), code)
        await self.sio.emit("session.expired", {"code": code, "message": message}, to=sid)
        await self.sio.disconnect(sid)

    async def _greet(
        self, participant: Participant, welcome: dict[str, Any], start: int, back: bool
    ) -> None:
        """Send the welcome, then every message numbered after ``start``, then go live."""
        sid = participant.sid
        if self.connections.by_sid(sid) is not participant:
            return
        # With an ack: the client's answer proves it holds the new resume token, so the one
        # it resumed with stops working (hub_state, "Resume tokens"). No answer: that one
        # stays good until the new one is redeemed.
        token = str(welcome["resume_token"])

        def acknowledged(*_: Any) -> None:
            # Called as the ack packet is read, before any later packet of the socket.
            participant.welcome_ack = self._tasks.spawn(
                self._welcome_received(participant.id, token), f"welcome-ack-{sid}")

        await self.sio.emit("welcome", welcome, to=sid, callback=acknowledged)
        try:
            await self._push_views(only=participant)
        except Exception:
            # The pusher sends it within a second anyway: a view that cannot be built must
            # not cost the participant its replay.
            logger.exception("first view for %s failed", safe_log(participant.id))
        async with participant.lock:
            # Under the lock: a message numbered while the replay is read waits for it, then
            # finds the participant greeted and goes out after the replay, in order.
            for seq, event, payload in await self.state.since(participant.id, start):
                await self.sio.emit(event, payload, to=sid)
                participant.delivered = seq
            participant.greeted = True
        if back:
            await self._came_back(participant.id)

    async def _welcome_received(self, participant_id: str, token: str) -> None:
        # Redis away: the old token then lives until the new one is redeemed, as without an ack.
        with contextlib.suppress(StoreUnavailableError):
            await self.state.resume_received(participant_id, token)

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
            "resume_token": await self.state.issue_resume(participant.id, resumed=resumed),
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
        self._namespace_left(sid)
        if self.limiter is not None:
            self.limiter.forget(f"sid:{sid}")  # a principal's budget outlives its socket
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
                           safe_log(participant.id))

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
                    # Every monitor_join has its monitor_leave in the log.
                    await self.hall.record_monitor(live.id, record.principal.subject,
                                                   joined=False, reason="disconnected")
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
                                    "started", safe_log(record.id))
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
                    if self.on_state_lost is not None:
                        # Tickets the log shows open and Redis forgot are closed there
                        # (state_lost), by one process (a lease), retried until it lands.
                        self._tasks.spawn(self.on_state_lost(), "hub-state-lost")
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
                        logger.info("%s lost its process; resume grace started",
                                    safe_log(record.id))
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
            if len(args) > 1 and (event == "hello" or event in p.EVENTS):
                raise p.ProtocolError("an event carries exactly one payload object")
            return await self._dispatch(event, sid, args[0] if args else {})
        except HallError as err:
            extra: dict[str, Any] = {}
            if isinstance(err, ThrottledError):
                extra["retry_after_s"] = round(err.retry_after_s, 1)
            return p.fail(err.code, public_message(err), **extra)
        except Exception:
            ref = secrets.token_hex(4)
            logger.exception("event %s from %s failed (ref %s)", safe_log(event), sid, ref)
            return p.fail("internal_error", f"internal error, reference {ref}")

    async def _dispatch(self, event: str, sid: str, data: Any) -> dict[str, Any]:
        participant = self.connections.by_sid(sid)
        # Budgets first, the cheapest check: a flood must not cost an encode per frame. Per
        # principal (a reconnect keeps its budget); a socket not yet authenticated by sid.
        limit_key = participant.id if participant is not None else f"sid:{sid}"
        if self.limiter is not None:
            try:
                self.limiter.check(limit_key, event)
            except RateLimitedError:
                self.stats["rate_limited"] += 1
                raise
        try:
            return await self._dispatch_within_budget(event, sid, data, participant)
        except HallError:
            # A take refused (invalid, no clerk, queue full, ...) put nothing on the wall:
            # its token of the tighter budget is given back (the general one is spent).
            if self.limiter is not None:
                self.limiter.refund(limit_key, event)
            raise

    async def _dispatch_within_budget(self, event: str, sid: str, data: Any,
                                      participant: Participant | None) -> dict[str, Any]:
        if len(orjson.dumps(data)) > p.MAX_EVENT_BYTES:
            raise p.ProtocolError("the event is larger than 64 KiB", code="payload_too_large")
        if event == "hello":
            return await self._hello(sid, data)
        spec = p.EVENTS.get(event)
        if spec is None:
            raise p.ProtocolError(f'unknown event "{event}"', code="unknown_event")
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
            if participant.welcome_ack is not None:
                await asyncio.wait([participant.welcome_ack])  # its failure is logged there
                participant.welcome_ack = None
            return await self._handlers[event](participant, payload)

    def _undecodable(self, eio_sid: str, err: UndecodablePacket) -> None:
        """A frame refused undecoded (HubServer): counted, one short line, no traceback."""
        self.stats["undecodable"] += 1
        logger.info("refused an undecodable frame from %s (event %s): %s", eio_sid,
                    safe_log(err.event or "-", 60), err.reason)

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

    # -- ownership: one rule for every ticket and session event (docs/protocol.md) ---------
    async def _owned(self, participant: Participant, ticket_id: str) -> Ticket:
        """The ticket (a session's id is its ticket's) if it is the participant's; else
        ``not_found`` with the same message whether or not it exists, so nobody learns that
        another resident's ticket is there. A resident's or kiosk's: the ticket it holds and
        the last one it held; a clerk's: the one offered to, held or wrapped up by them, and
        one they declined or missed during its cooldown; a supervisor's: any."""
        role = participant.principal.role
        ticket: Ticket | None = None
        if role in (Role.RESIDENT, Role.KIOSK):
            if ticket_id in await self._tickets_of(participant.id):
                ticket = await self._ticket_or_none(ticket_id)
        elif role == Role.CLERK:
            clerk = await self.hall.get_clerk(participant.principal.subject)
            ticket = await self._ticket_or_none(ticket_id)
            if ticket is not None and clerk.id != ticket.clerk_id and (
                    ticket_id != clerk.ticket_id and ticket_id not in clerk.skipped):
                ticket = None
        elif role == Role.SUPERVISOR:
            ticket = await self._ticket_or_none(ticket_id)
        if ticket is None:
            raise NotFoundError(f'no ticket or session "{ticket_id}" of yours')
        return ticket

    async def _ticket_or_none(self, ticket_id: str) -> Ticket | None:
        try:
            return await self.hall.get_ticket(ticket_id)
        except NotFoundError:
            return None

    # -- residents and kiosks -------------------------------------------------------------
    async def _own_ticket(self, participant: Participant, ticket_id: str) -> Ticket:
        return await self._owned(participant, ticket_id)

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
        clerk = await self.hall.logout(participant.principal.subject)
        # Every token of the clerk stops working everywhere (another tab, a resume, the file
        # routes)...
        await self.tokens.revoke_all(participant.principal)
        if participant.credential is not None:
            await self.tokens.revoke(participant.credential)
        # ...and this socket closes once the ack is out (a task started now could overtake it).
        sid = participant.sid
        asyncio.get_running_loop().call_later(
            _LOGOUT_CLOSE_S,
            lambda: self._tasks.spawn(self._end_session(sid, "logged_out"), f"logout-{sid}"))
        return p.ok(clerk=clerk_view(clerk))

    async def _clerks_ticket(self, participant: Participant, ticket_id: str) -> None:
        """An offer of the clerk's: owned (see :meth:`_owned`) and still offered to them."""
        ticket = await self._owned(participant, ticket_id)
        if ticket.state != TicketState.OFFERED or ticket.clerk_id != participant.principal.subject:
            raise InvalidStateError(f'the offer of ticket {ticket.number} ({ticket.id}) is '
                                    f'over: the ticket is "{ticket.state}"')

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
        """The live session of an owned ticket (:meth:`_owned`, else ``not_found``), in
        which the participant takes part (a supervisor: any); ``invalid_state`` naming the
        ticket's state if the session is over, or over for this participant."""
        ticket = await self._owned(participant, session_id)
        live = await self.state.session_find(session_id)
        if live is None or ticket.state != TicketState.IN_SESSION:
            raise InvalidStateError(f'session {session_id} is not live: its ticket '
                                    f'{ticket.number} is "{ticket.state}"')
        if participant.principal.role != Role.SUPERVISOR and participant.id not in (
                live.resident, live.clerk):
            raise InvalidStateError(f'your part of session {session_id} is over: its ticket '
                                    f'{ticket.number} is "{ticket.state}" with another clerk')
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
        old = participant.credential
        if old is not None and old.expires_at <= time.time():
            raise AuthError("token expired")
        token, credential = self.tokens.issue_credential(participant.principal)
        if old is not None:
            # The old token is retired: one live token per socket.
            await self.tokens.revoke(old)
        self._watch_expiry(participant, credential)
        return p.ok(token=token, expires_at=credential.expires_at)

    # -- WebRTC -----------------------------------------------------------------------------
    async def _rtc_signal(self, participant: Participant, req: Any) -> dict[str, Any]:
        assert isinstance(req, p.RtcSignal)
        if req.description is None and "candidate" not in req.model_fields_set:
            raise p.ProtocolError("rtc.signal needs a description or a candidate")
        live = await self._session_of(participant, req.session_id)
        if participant.principal.role == Role.SUPERVISOR:
            await self._check_session_scope(participant, live.id)
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

    # -- the call funnel and call quality (signaling/call_quality.py) -----------------------
    async def _call_report(self, participant: Participant, req: Any) -> dict[str, Any]:
        assert isinstance(req, p.CallReport)
        live = await self._session_of(participant, req.session_id)
        side = "clerk" if participant.id == live.clerk else "resident"
        at_ms = req.at_ms
        if at_ms is None:  # the client could not time it: the hall's clock since the accept
            started = (await self.hall.get_ticket(live.id)).session_started_at
            at_ms = 0 if started is None else min(
                p.MAX_CALL_AT_MS, max(0, round((self.now() - started) * 1000)))
        sides = await self.state.quality_get(live.id)
        before = sides.get(side) or call_quality.empty(participant.principal.role.value)
        stats = None if req.stats is None else req.stats.model_dump(exclude_none=True)
        summary, reached, failed = call_quality.apply(
            before, stage=req.stage, at_ms=at_ms, failure=req.failure, stats=stats)
        if not await self.state.quality_put(live.id, side, summary):
            raise InvalidStateError(f"session {live.id} is over")
        observer = self.call_observer
        if observer is not None:
            # Per call, not per side: the first side to reach a stage (or to fail) counts.
            others = [s for name, s in sides.items() if name != side]
            if reached is not None and not any(reached in s.get("stages", {}) for s in others):
                observer.call_reached(reached, at_ms / 1000)
            if failed is not None and not any(s.get("failure") for s in others):
                observer.call_failed(failed)
            if stats is not None:
                observer.call_stats(stats, first=before.get("candidate_type") is None,
                                    freezes=max(0, int(summary.get("freezes") or 0)
                                                - int(before.get("freezes") or 0)))
        return p.ok()

    async def _call_quality_over(self, live: MediaSession) -> None:
        """The session ended (this process closed it, so this runs once): what its sides
        reported goes to the event log as one ``call_quality`` event, if they reported."""
        try:
            sides = await self.state.quality_get(live.id)
            if sides:
                await self.hall.record_call_quality(live.id, live.clerk.partition(":")[2] or None,
                                                    call_quality.event_data(sides))
            await self.state.quality_drop(live.id)
        except HallError:
            # The end of the session must still reach everyone else.
            logger.warning("could not log call_quality of %s", live.id, exc_info=True)

    async def _session_rate(self, participant: Participant, req: Any) -> dict[str, Any]:
        owned = await self._owned(participant, req.ticket_id)
        if participant.principal.role == Role.KIOSK and owned.state not in _UPLOADS_OPEN:
            # The kiosk's after-screen rates the session just finished; later, or once the
            # next person took a ticket, the rating is no longer that resident's to give.
            ended = owned.session_ended_at or owned.ended_at
            if ended is None or self.now() - ended > self.config.kiosk_rating_window_s:
                raise ForbiddenError("this kiosk's rating window for that ticket has closed")
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
            ticket = await self._owned(participant, req.ticket_id)
        case = await self._desk().file(participant.principal, req.matter_id, req.description,
                                       ticket, time.time())
        self._case_counts_at = None
        return p.ok(case=case_view(case))

    async def _case_mine(self, participant: Participant, req: Any) -> dict[str, Any]:
        cases = await self._desk().mine(participant.principal)
        return p.ok(cases=[case_view(c) for c in cases])

    async def _case_lookup(self, participant: Participant, req: Any) -> dict[str, Any]:
        # Claim codes are secrets of anonymous residents: failed look-ups are throttled per
        # principal (a kiosk serves many residents; a resident is one identity).
        await self.throttle.lookup_check(participant.id)
        try:
            case = await self._desk().book.by_claim(req.claim_code)
        except NotFoundError:
            await self.throttle.lookup_failed(participant.id)
            raise
        return p.ok(case=case_view(case))

    async def _case_act(self, participant: Participant, req: Any) -> dict[str, Any]:
        case = await self._desk().act(participant.principal, req.case_id, req.action,
                                      to=req.to, note=req.note, now=time.time())
        self._case_counts_at = None
        if case.reporter is not None and case.reporter != participant.id:
            await self._send(case.reporter, "case.update", {"case": case_view(case)})
        return p.ok(case=case_view(case))

    def _case_departments(self, participant: Participant) -> frozenset[str] | None:
        """The departments whose cases a supervisor lists; None: every department."""
        scope = self._scope(participant.principal)
        return None if scope.whole_hall else scope.departments

    async def _case_overdue(self, participant: Participant, req: Any) -> dict[str, Any]:
        cases = await self._desk().book.overdue(departments=self._case_departments(participant))
        return p.ok(cases=[case_view(c) for c in cases])

    async def _case_list(self, participant: Participant, req: Any) -> dict[str, Any]:
        state = CaseState(req.state) if req.state is not None else None
        cases = await self._desk().book.listing(
            state=state, limit=req.limit, departments=self._case_departments(participant))
        return p.ok(cases=[case_view(c) for c in cases])

    async def sweep_cases(self, now: float | None = None) -> int:
        """Apply passed case deadlines; tell every connected supervisor what escalated."""
        escalated = await self._desk().sweep(time.time() if now is None else now)
        self._case_counts_at = None
        for case in escalated:
            for pid in await self.state.participant_ids():
                if role_of(pid) == Role.SUPERVISOR and scope_of_supervisor(
                        self.hall.catalog, pid.partition(":")[2]).covers_department(
                            case.department_id):
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

    def _scope(self, principal: Principal) -> Scope:
        return scope_of(self.hall.catalog, principal)

    async def _check_session_scope(self, participant: Participant, session_id: str) -> None:
        """A department supervisor watches only sessions of its departments' matters (the
        ticket's department now: a transfer ends the session and opens another)."""
        scope = self._scope(participant.principal)
        if not scope.whole_hall:
            ticket = await self.hall.get_ticket(session_id)
            scope.check_department(ticket.department_id, "this session")

    async def _monitor_join(self, participant: Participant, req: Any) -> dict[str, Any]:
        live = await self._session_of(participant, req.session_id)
        await self._check_session_scope(participant, live.id)
        await self.hall.record_monitor(live.id, participant.principal.subject, joined=True)
        await self.state.monitor_add(live.id, participant.id)
        await self._send(live.clerk, "monitor.joined", {
            "session_id": live.id, "supervisor": participant.id,
            "name": participant.principal.name})
        return p.ok(session={
            "id": live.id, "ticket_id": live.id, "clerk": live.clerk, "role": "monitor",
            "ice_servers": self._ice(participant.id)})

    async def _monitor_leave(self, participant: Participant, req: Any) -> dict[str, Any]:
        await self._check_session_scope(participant, req.session_id)
        live = await self.state.monitor_remove(req.session_id, participant.id)
        await self.hall.record_monitor(live.id, participant.principal.subject, joined=False)
        await self._send(live.clerk, "monitor.left", {
            "session_id": live.id, "supervisor": participant.id,
            "name": participant.principal.name})
        return p.ok()

    async def _session_note(self, participant: Participant, req: Any) -> dict[str, Any]:
        """The clerk's private note: logged, and kept with the session for the clerk's view
        (a reload or resume gets them back); never sent to the resident or monitors."""
        live = await self._session_of(participant, req.session_id)
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
                logger.warning("could not log %s for %s", kind, safe_log(kiosk_id), exc_info=True)

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
        scope = self._scope(participant.principal)
        walls = await self._walls(await self.hall.snapshot(), {scope})
        return p.ok(snapshot=walls[scope].view)

    async def _walls(self, snapshot: dict[str, Any], scopes: set[Scope]) -> dict[Scope, Board]:
        """The wall as each of ``scopes`` sees it (a department supervisor: its departments
        only, signaling.wall.build_wall), from one read of the sessions, stats and kiosks."""
        names = {c["id"]: c["name"] for c in snapshot["clerks"]}
        sessions = []
        departments: dict[str, str] = {}  # ticket id -> department, for scoped walls
        for live in await self.state.sessions_all():
            try:
                ticket = await self.hall.get_ticket(live.id)
            except NotFoundError:
                continue  # ended meanwhile
            departments[ticket.id] = ticket.department_id
            sessions.append(LiveSession(
                session_id=live.id, ticket_number=ticket.number, matter_id=ticket.matter_id,
                clerk_id=ticket.clerk_id, clerk_name=names.get(ticket.clerk_id or "", ""),
                channel=ticket.channel.value, service_point_id=ticket.service_point_id,
                started_at=ticket.session_started_at, monitors=len(live.monitors)))
        if any(not s.whole_hall for s in scopes):
            # Offered and wrap-up tickets too: a scoped wall shows a clerk's ticket only if
            # it is of the scope's departments.
            for clerk in snapshot["clerks"]:
                held = clerk["ticket_id"]
                if held is not None and held not in departments:
                    with contextlib.suppress(NotFoundError):
                        departments[held] = (await self.hall.get_ticket(held)).department_id
        stats = await self.hall.day_stats()
        kiosks = await self.state.kiosks_all()
        counts = await self._cases_now()
        walls: dict[Scope, Board] = {}
        for scope in scopes:
            cases = {k: sum(c[k] for d, c in counts.items() if scope.covers_department(d))
                     for k in ("open", "overdue")}
            walls[scope] = build_wall(self.hall.catalog, self.hall.policy, snapshot, stats,
                                      kiosks, sessions, cases, scope=scope,
                                      ticket_departments=departments)
        return walls

    async def _cases_now(self) -> dict[str, dict[str, int]]:
        """The open and overdue 办不成事 counts per department (last known on a failure)."""
        now = asyncio.get_running_loop().time()
        if self.cases is None or (self._case_counts_at is not None
                                  and now - self._case_counts_at < _CASE_COUNTS_MAX_AGE_S):
            return self._case_counts
        # Marked fresh before the read: a case changed while it runs marks it stale again.
        self._case_counts_at = now
        try:
            self._case_counts = await self.cases.book.department_counts()
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
        walls: dict[Scope, Board] | None = None
        for participant in targets:
            if participant.principal.role == Role.SUPERVISOR:
                scope = self._scope(participant.principal)
                if walls is None:
                    walls = await self._walls(snapshot, {
                        self._scope(x.principal) for x in targets
                        if x.principal.role == Role.SUPERVISOR})
                board = walls[scope]
                event, payload = "wall.update", {"wall": board.view}
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
    async def check_file_access(self, principal: Principal, ticket_id: str, *,
                                upload: bool = False) -> None:
        """Who may list, upload or download a ticket's files: the resident (or kiosk) who
        took it, the clerk it is offered to or held by, and supervisors whose scope has the
        ticket's department. Anyone else gets ``not_found`` with the same message whether or
        not the ticket exists (the rule of the events, :meth:`_owned`): ticket ids are not
        secret, so a 403 for another resident's ticket would tell that it is there."""
        if principal.role == Role.SUPERVISOR:
            await self._check_supervisor_files(principal, ticket_id, upload=upload)
            return
        ticket = await self._ticket_or_none(ticket_id)
        if ticket is None:
            raise NotFoundError(f'no ticket or session "{ticket_id}" of yours')
        if principal.role == Role.CLERK:
            if ticket.clerk_id == principal.subject and not ticket.is_final:
                return
        elif principal.role == Role.KIOSK:
            # A kiosk is a shared device: the next person at it must not see the last
            # resident's documents, so a kiosk reaches a ticket's files only while that
            # ticket's session is still to come or going on.
            if (ticket.state in _UPLOADS_OPEN
                    and (await self._tickets_of(principal.participant_id))[0] == ticket_id):
                return
        elif (await self.state.owner_of(ticket_id) == principal.participant_id
              or ticket_id in await self._tickets_of(principal.participant_id)):
            # An app resident keeps reading their own files; adding more ends with the
            # session (leaving, wrap-up, done): the clerk may still attach during wrap-up.
            if upload and ticket.state not in _UPLOADS_OPEN:
                raise HallError(f"ticket {ticket.number} is {ticket.state}: its uploads are "
                                "closed", code="uploads_closed")
            return
        raise NotFoundError(f'no ticket or session "{ticket_id}" of yours')

    async def _check_supervisor_files(self, principal: Principal, ticket_id: str, *,
                                      upload: bool) -> None:
        """A supervisor reaches the files of its departments' tickets. An upload needs the
        ticket (nothing is stored for one that does not exist: not_found). The hall-wide
        supervisor still reads a ticket's files once its live state is gone (an embedded
        hall's restart); a department supervisor cannot then tell the ticket's department,
        so it gets not_found too."""
        scope = self._scope(principal)
        try:
            ticket = await self.hall.get_ticket(ticket_id)
        except NotFoundError:
            if scope.whole_hall and not upload:
                return
            raise
        scope.check_department(ticket.department_id, "this ticket")

    async def _file_watchers(self, ticket: Ticket) -> list[str]:
        """Who hears of a ticket's files changing: its resident (a kiosk only while it may
        still reach them, :meth:`check_file_access`), its clerk and the session's monitors."""
        owner = await self.state.owner_of(ticket.id)
        if (owner is not None and role_of(owner) == Role.KIOSK
                and ticket.state not in _UPLOADS_OPEN):
            owner = None  # the kiosk's access ended with the session
        targets = [pid for pid in (owner,
                                   f"clerk:{ticket.clerk_id}" if ticket.clerk_id else None)
                   if pid is not None]
        live = await self.state.session_find(ticket.id)
        if live is not None:
            targets += sorted(live.monitors)
        return targets

    async def announce_file(self, ticket_id: str, file: dict[str, Any]) -> None:
        """Tell the other side (and monitors) that a file was added to the ticket."""
        ticket = await self.hall.get_ticket(ticket_id)
        for pid in await self._file_watchers(ticket):
            if pid != file.get("uploaded_by"):  # the uploader has the HTTP answer
                await self._send(pid, "file.added", {"ticket_id": ticket_id, "file": file})

    async def announce_file_removed(self, ticket_id: str, file_id: str, *, by: str) -> None:
        """Tell the ticket's file watchers (not the deleter, who has the HTTP answer) that a
        file is gone, so no list keeps offering it; a ticket no longer live has nobody to
        tell."""
        ticket = await self._ticket_or_none(ticket_id)
        if ticket is None:
            return
        for pid in await self._file_watchers(ticket):
            if pid != by:
                await self._send(pid, "file.removed",
                                 {"ticket_id": ticket_id, "file_id": file_id, "by": by})

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
                if notice.kind == NoticeKind.TICKET and notice.ticket_id is not None:
                    # Its effects stand alone (_ticket_changed); what can fail as a whole is
                    # reading the ticket (the store down): then it is delivered again later,
                    # which is safe, as it renders the ticket as it is by then.
                    await self._effect("notice", notice.ticket_id,
                                       functools.partial(self._deliver, notice), retry=True)
                    continue
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
            # The clerk as the notice's change left it, not the latest (which would show a
            # command's last state once per change, and never the steps before it).
            made = notice.data.get("clerk")
            clerk = (Clerk.from_dict(made) if isinstance(made, dict)
                     else await self.hall.get_clerk(notice.clerk_id))
            await self._send(f"clerk:{clerk.id}", "clerk.state", {"clerk": clerk_view(clerk)})
        elif kind == NoticeKind.WRAPUP_OVERDUE and notice.clerk_id is not None:
            await self._send(f"clerk:{notice.clerk_id}", "wrapup.overdue",
                             {"ticket_id": notice.ticket_id})

    async def _monitors_left(self, live: MediaSession) -> None:
        """The session ended under its monitors: their watch ends with it, logged like a
        ``monitor.leave`` (reason ``session_ended``) so every join has its leave."""
        for pid in sorted(live.monitors):
            try:
                await self.hall.record_monitor(live.id, pid.partition(":")[2], joined=False,
                                               reason="session_ended")
            except HallError:
                # The end of the session must still reach everyone else.
                logger.warning("could not log monitor_leave of %s on %s", pid, live.id,
                               exc_info=True)

    async def _ticket_changed(self, notice: Notice) -> None:
        assert notice.ticket_id is not None
        # The session before the ticket: an accept commits in_session, then opens the
        # session, so a session found here and a ticket read after it that is not in_session
        # means the session is really over. The other order closed a session just opened
        # when this notice (of an older command) read the ticket before the accept.
        live = await self.state.session_find(notice.ticket_id)
        ticket = await self.hall.get_ticket(notice.ticket_id)
        owner = await self.state.owner_of(ticket.id)
        # From here each effect stands alone: one that fails (a store hiccup) is logged and
        # costs none of the others; the ticket's final clean-up is retried until it lands.
        await self._effect("session end", ticket.id,
                           lambda: self._session_over(notice, ticket, live))
        await self._effect("ticket.update", ticket.id,
                           lambda: self._ticket_views(notice, ticket, owner))
        if ticket.state == TicketState.IN_SESSION and ticket.clerk_id is not None:
            await self._effect("session start", ticket.id, lambda: self._session_begun(ticket))
        if (ticket.state == TicketState.DONE and ticket.outcome == "unresolved"
                and self.cases is not None):
            # 办不成事: the engine made the case due with the outcome (the store's follow-up
            # outbox); the case filer files it in the records database and tells the
            # resident. Waking it here files it now rather than at its next look.
            self.cases_due.set()
        if ticket.is_final:
            for key in [k for k in self._last_view if k[1] == ticket.id]:
                del self._last_view[key]
            self._sent_position.pop(ticket.id, None)
            await self._effect("ticket clean-up", ticket.id,
                               lambda: self._ticket_gone(ticket.id, owner), retry=True)

    async def _session_over(self, notice: Notice, ticket: Ticket,
                            live: MediaSession | None) -> None:
        if live is not None and ticket.state != TicketState.IN_SESSION:
            # A transfer keeps the chat for the session with the receiving clerk.
            live = await self.state.session_close(
                ticket.id, keep_chat=bool(notice.data.get("transferred_from")))
        if live is not None and ticket.state != TicketState.IN_SESSION:
            reason = _end_reason(notice.data)
            for pid in (live.resident, live.clerk, *sorted(live.monitors)):
                await self._send(pid, "session.ended", {"session_id": live.id,
                                                        "reason": reason})
            await self._monitors_left(live)
            await self._call_quality_over(live)

    async def _ticket_views(self, notice: Notice, ticket: Ticket, owner: str | None) -> None:
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

    async def _session_begun(self, ticket: Ticket) -> None:
        live = await self._open_session(ticket, f"clerk:{ticket.clerk_id}")
        if await self.state.session_announce(live.id):
            for pid in (live.resident, live.clerk):
                record = await self.state.record(pid)
                if record is not None:
                    view = await self._session_view(live, record.principal)
                    await self._send(pid, "session.started", {"session": view})

    async def _ticket_gone(self, ticket_id: str, owner: str | None) -> None:
        await self.state.owner_drop(ticket_id)  # both idempotent: safe to retry
        if owner is not None:
            await self.state.clear_ticket(owner, ticket_id)

    async def _effect(self, what: str, ticket_id: str, run: Callable[[], Awaitable[None]],
                      *, retry: bool = False) -> None:
        """Run one effect of a ticket notice; a failure is logged once and, with ``retry``
        (idempotent effects), tried again with backoff in the background."""
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            # A store outage is expected now and then; anything else gets its traceback.
            logger.warning("ticket %s: %s failed (%r)%s", ticket_id, what, err,
                           "; retrying" if retry else "; the notice's other effects go on",
                           exc_info=not isinstance(err, StoreUnavailableError))
            if retry:
                self._tasks.spawn(self._retry_effect(what, ticket_id, run),
                                  f"retry-{what}-{ticket_id}")

    async def _retry_effect(self, what: str, ticket_id: str,
                            run: Callable[[], Awaitable[None]]) -> None:
        delay = 0.5
        for _ in range(_EFFECT_RETRIES):
            await asyncio.sleep(delay)
            try:
                await run()
            except Exception:
                delay = min(2 * delay, 10.0)
                continue
            logger.info("ticket %s: %s done on a retry", ticket_id, what)
            return
        logger.error("ticket %s: %s still failing after %d retries; given up", ticket_id,
                     what, _EFFECT_RETRIES)

    async def file_pending_cases(self, limit: int = 100) -> int:
        """File the 办不成事 cases that "unresolved" outcomes made due (the store's follow-up
        outbox), each exactly once (:meth:`CaseDesk.file_pending`), tell its resident
        (``case.update``), and only then acknowledge it; returns how many. Raises at the
        first failure (the records database down): that one and the rest stay due."""
        if self.cases is None:
            return 0
        store = self.hall.store
        filed = 0
        for key, raw in await store.followup_peek(limit):
            if not key.startswith(PENDING_CASE_PREFIX):
                continue
            pending = PendingCase.from_dict(raw)
            case = await self.cases.file_pending(pending)
            self._case_counts_at = None
            to = await self._case_recipient(pending)
            if to is not None:
                await self._send(to, "case.update", {"case": case_view(case)})
            await store.followup_ack(key)
            filed += 1
        return filed

    async def _case_recipient(self, pending: PendingCase) -> str | None:
        """Who is told of an outcome's case: the app resident it was filed for; a kiosk only
        while that ticket is still its last one (a filing delayed by an outage must not show
        the claim code to the next resident at the point)."""
        if pending.resident_id is not None:
            return f"{Role.RESIDENT}:{pending.resident_id}"
        if pending.service_point_id is None:
            return None
        kiosk = f"{Role.KIOSK}:{pending.service_point_id}"
        return kiosk if (await self._tickets_of(kiosk))[1] == pending.ticket_id else None

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
        # The whole queue, however long, in a fixed number of reads (ranks, owners, the ETA's
        # inputs) and without the hall lock: every waiting resident is told, and what one
        # push costs grows only with the residents whose position changed.
        infos = await self.hall.queue_positions(queue_key)
        if not infos:
            return
        owners = await self.state.owners([info.ticket_id for info in infos])
        sends: list[tuple[str, dict[str, Any]]] = []
        for info in infos:
            owner = owners.get(info.ticket_id)
            sent = (info.position, info.eta_s, info.staffed)
            if owner is None or self._sent_position.get(info.ticket_id) == sent:
                continue
            self._sent_position[info.ticket_id] = sent
            sends.append((owner, position_view(info)))
        # One message per resident, each numbered on its own: in parallel, a few at a time
        # (bounded by the Redis pool rather than queued behind it).
        for start in range(0, len(sends), _POSITION_SENDS):
            await asyncio.gather(*(self._send(owner, "ticket.position", view)
                                   for owner, view in sends[start : start + _POSITION_SENDS]))


def _offer_fields(data: dict[str, Any]) -> dict[str, Any]:
    keys = ("number", "matter_id", "kind", "priority", "callback", "callback_contact",
            "transfers", "transfer_note", "wait_s", "deadline", "timeout_s")
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


def _every_origin(origin: str | None, environ: dict[str, Any]) -> bool:
    return True


def _origin_rule(origins: Any) -> Callable[[str | None, dict[str, Any]], bool]:
    """What decides a handshake's Origin: the configured check, or (a hub built without one)
    python-socketio's rule for ``cors_allowed_origins`` (None: the request's own origin;
    ``*``; a list)."""
    if callable(origins):
        check: Callable[[str | None, dict[str, Any]], bool] = origins
        return check
    allowed = None if origins is None else ("*",) if origins == "*" else tuple(origins)

    def rule(origin: str | None, environ: dict[str, Any]) -> bool:
        if not origin or (allowed is not None and "*" in allowed):
            return True  # not a browser: nothing to protect
        if allowed is not None:
            return origin in allowed
        # X-Forwarded-* are not believed here: which proxies may set them is the app's
        # configuration (server.forwarded.socketio_origin_check, passed as origin_check).
        return origin == f"{environ.get('wsgi.url_scheme')}://{environ.get('HTTP_HOST')}"

    return rule


def _remote(environ: dict[str, Any]) -> str:
    request = environ.get("aiohttp.request")
    remote = getattr(request, "remote", None) if request is not None else None
    return str(remote or environ.get("REMOTE_ADDR") or "unknown")


