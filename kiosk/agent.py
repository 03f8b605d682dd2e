"""The kiosk device agent: the unattended program on a remote-assistance point's box.

It logs the service point in (``POST /api/auth/kiosk``), stays connected over Socket.IO and
comes back by itself when the connection drops: with a resume (``auth {token, resume,
last_seq}``), so the hall replays what was missed, or with a fresh login when the resume is
refused. It
reports the health of its devices (``kiosk.health``), renews its token before it expires,
and acts for the anonymous resident at the kiosk: tickets, the session's media (it answers
the clerk with aiortc), chat, files, rating and 办不成事 reports.

Only the public protocol is used (docs/protocol.md): HTTP and Socket.IO.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kiosk.backoff import Backoff
from kiosk.config import KioskConfig
from kiosk.errors import (
    HallRefused,
    HallUnavailable,
    KioskAuthError,
    KioskDisconnected,
    KioskError,
    KioskStopped,
    Throttled,
)
from kiosk.events import EventFeed, Subscription
from kiosk.hall_http import HallHttp, HallToken
from kiosk.health import DeviceHealth, DeviceProbe, SourceProbe, agent_version
from kiosk.link import ConnectRefused, HallLink
from kiosk.media import MediaLink
from kiosk.sources import MediaSources
from kiosk.tasks import TaskSet

log = logging.getLogger("kiosk.agent")

Payload = dict[str, Any]

FINAL_TICKET_STATES = frozenset({"done", "abandoned", "timed_out"})
STABLE_CONNECTION_S = 10.0  # a connection that lasted this long resets the backoff
REUSE_PROBE_S = 60.0  # on a reconnect, a probe younger than this is reported again
THROTTLED_RESUME_WAIT_S = 60.0  # the handshake's too_many_attempts carries no Retry-After
TOKEN_MARGIN_S = 30.0  # a token closer than this to expiry is not used for a new connection


@dataclasses.dataclass
class _MediaTotals:
    """What closed sessions' media counted (the live session adds its own)."""

    video_received: int = 0
    audio_received: int = 0
    video_sent: int = 0
    sessions: int = 0


class KioskAgent:
    """One service point's agent. ``await start()`` returns once connected (or raises
    KioskAuthError for a refused secret); ``await close()`` stops everything (idempotent).

    State, read-only for callers: :attr:`state` (``idle``, ``connecting``, ``online``,
    ``reconnecting``, ``stopped``), :attr:`ticket`, :attr:`session`, :attr:`position`,
    :attr:`health`, the media counters :attr:`frames_received` and :attr:`frames_sent`.
    Events: :attr:`events` (see :mod:`kiosk.events`).
    """

    def __init__(self, config: KioskConfig, *, probe: DeviceProbe | None = None,
                 name: str | None = None) -> None:
        self.config = config
        self.name = name or f"kiosk-{config.service_point_id}"
        self.events = EventFeed()
        self.probe: DeviceProbe = probe or SourceProbe(config.media)
        self.agent = agent_version()[:64]  # the hall takes at most 64 characters
        self.state = "idle"
        self.participant: str | None = None
        self.ticket: Payload | None = None
        self.last_ticket_id: str | None = None  # kept after the ticket ends: it may be rated
        self.session: Payload | None = None
        self.position: Payload | None = None
        self.health: DeviceHealth | None = None
        self.health_accepted: bool | None = None  # None: not reported yet
        self.stop_reason: str | None = None
        self.stop_error: BaseException | None = None
        self.connections = 0
        self.resumes = 0
        self.logins = 0
        self.resume_refusals = 0
        self.token_refreshes = 0
        self._http = HallHttp(config.base_url, timeout_s=config.request_timeout_s)
        self._link = HallLink(config.base_url, self._on_event, self._on_drop)
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        self._tasks = TaskSet(self.name)
        self._rng = random.Random()
        self._token: HallToken | None = None
        self._token_received_at = 0.0
        self._token_changed = asyncio.Event()
        self._online = asyncio.Event()
        self._health_now = asyncio.Event()
        self._stopped = asyncio.Event()
        self._first: asyncio.Future[Payload] | None = None
        self._run_task: asyncio.Task[Any] | None = None
        self._loops: list[asyncio.Task[Any]] = []
        self._close_task: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        self._replaced = False
        self._media: MediaLink | None = None
        self._sources: MediaSources | None = None
        self._media_closing: set[asyncio.Task[Any]] = set()
        self._totals = _MediaTotals()
        self._renegotiate_at: tuple[int, int] | None = None  # (seq, generation)
        self._ticket_events = 0
        self._probed_at: float | None = None
        self._health_unsupported = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Payload:
        """Log in and connect; returns the first ``welcome``.

        Transient failures (hall unreachable, 429) are retried with backoff until this
        succeeds; bound it with ``asyncio.timeout`` if needed. KioskAuthError when the hall
        refuses the secret: the agent is stopped then, it does not retry.
        """
        if self._run_task is not None:
            raise RuntimeError(f"{self.name}: already started")
        self._first = asyncio.get_running_loop().create_future()
        self.state = "connecting"
        log.info("%s: connecting to %s as service point %s", self.name, self.config.base_url,
                 self.config.service_point_id)
        self._run_task = self._tasks.spawn(self._run(), "connection")
        self._loops = [self._tasks.spawn(self._health_loop(), "health"),
                       self._tasks.spawn(self._refresh_loop(), "token-refresh")]
        try:
            return await asyncio.shield(self._first)
        except BaseException:
            await self.close()
            raise

    async def wait_stopped(self) -> str:
        """Until the agent stops (closed, replaced, or refused); returns the reason."""
        await self._stopped.wait()
        return self.stop_reason or "closed"

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    async def close(self, reason: str = "closed") -> None:
        """Stop: the periodic loops, the session's media, the connection, in that order.
        Idempotent; a second call waits for the first to finish."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        try:
            if self.stop_reason is None:
                self.stop_reason = reason
            self.state = "stopped"
            self._online.clear()
            first = self._first
            if first is not None and not first.done():
                first.set_exception(self.stop_error or KioskStopped(self.stop_reason))
                # start() may no longer wait for it (cancelled): the error is not news then.
                first.add_done_callback(lambda f: f.exception())
            for task in self._loops:
                await self._tasks.cancel(task)
            self._close_media()
            for closing in list(self._media_closing):
                with contextlib.suppress(Exception):
                    await closing
            await self._tasks.cancel(self._run_task)
            await self._link.disconnect()
            await self._tasks.cancel_all()
            await self._http.close()
            log.info("%s: stopped (%s)", self.name, self.stop_reason)
            self.events.publish("agent.stopped", {"reason": self.stop_reason})
            self._stopped.set()
        finally:
            self._closing.set_result(None)

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        """The agent stops by itself (replaced, refused): close in a task of its own, since
        the caller is one of the tasks that close() cancels."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_error = error
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(
                self.close(reason), name=f"{self.name}:close")

    # ------------------------------------------------------------------ connection

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        try:
            while True:
                await self._establish(delay=not first)
                first = False
                up_since = loop.time()
                await self._link.wait_dropped()
                self._online.clear()
                if self._replaced:
                    self._finish("replaced")
                    return
                if loop.time() - up_since >= STABLE_CONNECTION_S:
                    self._backoff.reset()
        except KioskAuthError as exc:
            log.error("%s: %s. Stopping: fix the secret, then start the agent again.",
                      self.name, exc)
            self._finish("auth_refused", exc)

    async def _establish(self, *, delay: bool) -> Payload:
        """Connect, retrying transient failures with backoff; KioskAuthError is final."""
        while True:
            if delay:
                await asyncio.sleep(self._backoff.next_delay())
            delay = True
            try:
                return await self._connect_once()
            except Throttled as exc:
                wait = exc.retry_after_s * self._rng.uniform(1.0, 1.2)
                log.warning("%s: the hall throttles this address; waiting %.0f s", self.name,
                            wait)
                await asyncio.sleep(wait)
                delay = False
            except (HallUnavailable, ConnectRefused) as exc:
                log.warning("%s: %s; retrying", self.name, exc)

    async def _connect_once(self) -> Payload:
        timeout = self.config.request_timeout_s
        # A resume presents the hall token too: the hall verifies it as at a fresh connect.
        hall_token = await self._valid_token()
        token = self._link.resume_token
        if token is not None:
            try:
                return await self._link.connect(
                    {"token": hall_token.token, "resume": token,
                     "last_seq": self._link.last_seq}, timeout=timeout)
            except ConnectRefused as exc:
                if exc.code == "too_many_attempts":
                    raise Throttled(THROTTLED_RESUME_WAIT_S) from None
                if exc.code == "unauthenticated":
                    self._token = None  # expired or revoked: log in again, then resume
                    raise
                # resume_invalid: the grace period passed, or the token was superseded;
                # last_seq_ahead / replay_unavailable: the gap cannot be replayed.
                log.info("%s: resume refused (%s); connecting afresh", self.name, exc.code)
                self.resume_refusals += 1
                self._link.resume_token = None
        try:
            return await self._link.connect({"token": hall_token.token}, timeout=timeout)
        except ConnectRefused as exc:
            if exc.code == "too_many_attempts":
                raise Throttled(THROTTLED_RESUME_WAIT_S) from None
            if exc.code == "unauthenticated":
                self._token = None  # expired or signed with a rotated key: log in again
            raise

    async def _valid_token(self) -> HallToken:
        token = self._token
        if token is not None:
            lifetime = token.expires_at - self._token_received_at
            if token.expires_at - time.time() > min(TOKEN_MARGIN_S, 0.25 * lifetime):
                return token
        token = await self._http.login_kiosk(self.config.service_point_id, self.config.secret)
        self.logins += 1
        self._set_token(token)
        return token

    def _set_token(self, token: HallToken) -> None:
        self._token = token
        self._token_received_at = time.time()
        self._token_changed.set()

    def _on_drop(self, connection: int, reason: str) -> None:
        self._online.clear()
        if self._closing is not None:
            return
        if self._replaced:
            log.warning("%s: another instance of service point %s connected and took over; "
                        "this one stops", self.name, self.config.service_point_id)
        else:
            self.state = "reconnecting"
            log.warning("%s: connection lost (%s); reconnecting", self.name, reason)
        self.events.publish("agent.disconnected", {"reason": reason})

    # ------------------------------------------------------------------ server events

    def _on_event(self, connection: int, event: str, payload: Payload) -> None:
        """Every server event, in order (see HallLink): update state, route media, publish."""
        self.events.connection = connection
        if event == "welcome":
            self._on_welcome(payload)
        elif event == "replaced":
            self._replaced = True
        elif event == "ticket.update":
            self._ticket_events += 1
            self._set_ticket(payload.get("ticket"))
        elif event == "ticket.position":
            self.position = payload
            log.info("%s: position %s (about %s s)", self.name, payload.get("position"),
                     payload.get("eta_s"))
        elif event == "session.started":
            session = payload.get("session")
            if isinstance(session, dict):
                self._session_started(session)
        elif event == "session.ended":
            self._session_ended(payload)
        elif event in ("rtc.signal", "media.screen"):
            media = self._media
            if media is not None and payload.get("session_id") == media.session_id:
                media.handle(event, payload)
        self.events.publish(event, payload)
        if event == "welcome":
            self.events.publish("agent.connected", {"resumed": bool(payload.get("resumed")),
                                                    "participant": self.participant})
        self._maybe_renegotiate()

    def _on_welcome(self, welcome: Payload) -> None:
        resumed = bool(welcome.get("resumed"))
        self.connections += 1
        self.resumes += int(resumed)
        participant = welcome.get("participant")
        self.participant = participant if isinstance(participant, str) else None
        self.state = "online"
        log.info("%s: online as %s (%s)", self.name, self.participant,
                 "resumed" if resumed else "fresh connection")
        ticket = welcome.get("ticket")
        if isinstance(ticket, dict):
            self._set_ticket(ticket)
        else:
            self.ticket = None
        session = welcome.get("session")
        media = self._media
        if not isinstance(session, dict):
            if self.session is not None or media is not None:
                log.info("%s: the session ended while away", self.name)
            self.session = None
            self._close_media()
        else:
            self.session = session
            if media is None or media.session_id != session.get("id"):
                self._close_media()
                media = self._open_media(session)
            if media is not None:
                # aiortc cannot restart ICE: offer from a fresh connection, once the replay
                # is in (it may hold an offer of the clerk's, which then wins instead).
                last = welcome.get("last_seq")
                self._renegotiate_at = (last if isinstance(last, int) else 0, media.generation)
        self._online.set()
        self._health_now.set()
        if self._first is not None and not self._first.done():
            self._first.set_result(welcome)

    def _maybe_renegotiate(self) -> None:
        pending, media = self._renegotiate_at, self._media
        if pending is None or self._link.last_seq < pending[0]:
            return
        self._renegotiate_at = None
        if media is not None:
            media.renegotiate("reconnected", unless_renewed_since=pending[1])

    def _set_ticket(self, ticket: Any) -> None:
        if not isinstance(ticket, dict) or not isinstance(ticket.get("id"), str):
            return
        before = self.ticket
        final = ticket.get("state") in FINAL_TICKET_STATES
        if before is not None and before.get("id") != ticket["id"] and final:
            return  # late news of an earlier resident's ticket: not the one held now
        self.ticket = None if final else ticket
        self.last_ticket_id = ticket["id"]
        if before is None or before.get("id") != ticket["id"] or before.get(
                "state") != ticket.get("state"):
            log.info("%s: ticket %s (%s) %s", self.name, ticket.get("number"),
                     ticket.get("matter_id"), ticket.get("state"))
        if self.ticket is None:
            self.position = None

    def _session_started(self, session: Payload) -> None:
        self.session = session
        media = self._media
        if media is not None and media.session_id == session.get("id"):
            return  # replayed after a resume: the welcome already set it up
        log.info("%s: session %s with %s", self.name, session.get("id"),
                 (session.get("peer") or {}).get("name"))
        self._close_media()
        self._open_media(session)

    def _session_ended(self, payload: Payload) -> None:
        session = self.session
        if session is not None and session.get("id") == payload.get("session_id"):
            log.info("%s: session %s ended (%s)", self.name, session.get("id"),
                     payload.get("reason"))
            self.session = None
            self._close_media()

    # ------------------------------------------------------------------ media

    def _open_media(self, session: Payload) -> MediaLink | None:
        if not self.config.media.answer_sessions or self._closing is not None:
            return None
        sources = MediaSources(self.config.media, owner=self.name)
        media = MediaLink(session, sources, self._media_call, self.events.publish,
                          owner=self.name)
        self._sources, self._media = sources, media
        media.start()
        return media

    def _close_media(self) -> asyncio.Task[Any] | None:
        media, sources = self._media, self._sources
        self._media = self._sources = None
        self._renegotiate_at = None
        if media is None or sources is None:
            return None
        self._totals.video_received += media.received.video_frames
        self._totals.audio_received += media.received.audio_frames
        self._totals.video_sent += sources.sent.video_frames
        self._totals.sessions += 1
        log.info("%s: session %s media: %d video frames received, %d sent, %d connection(s)",
                 self.name, media.session_id, media.received.video_frames,
                 sources.sent.video_frames, media.generation)

        async def close() -> None:
            await media.close()
            await sources.close()

        task = self._tasks.spawn(close(), f"media-close-{media.session_id}")
        self._media_closing.add(task)
        task.add_done_callback(self._media_closing.discard)
        return task

    async def _media_call(self, event: str, payload: Payload) -> Payload:
        return await self._link.call(event, payload, timeout=self.config.request_timeout_s)

    @property
    def media(self) -> MediaLink | None:
        """The live session's media, if any."""
        return self._media

    @property
    def frames_received(self) -> int:
        """Video frames received from clerks, over every session so far."""
        live = self._media.received.video_frames if self._media is not None else 0
        return self._totals.video_received + live

    @property
    def audio_frames_received(self) -> int:
        live = self._media.received.audio_frames if self._media is not None else 0
        return self._totals.audio_received + live

    @property
    def frames_sent(self) -> int:
        """Camera video frames handed to the encoder, over every session so far."""
        live = self._sources.sent.video_frames if self._sources is not None else 0
        return self._totals.video_sent + live

    # ------------------------------------------------------------------ health and token

    async def _health_loop(self) -> None:
        while True:
            await self._online.wait()
            reconnected = self._health_now.is_set()
            self._health_now.clear()
            try:
                await self._report_health(reuse_recent=reconnected)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: health report failed", self.name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.health_interval_s):
                    await self._health_now.wait()

    async def _probe(self, *, reuse_recent: bool) -> DeviceHealth:
        """The devices' health: probed, or the last result while a session holds the devices
        (reopening a camera in use can fail) or, on a reconnect, when it is recent (a flapping
        network must not make the box reopen its devices every few seconds)."""
        previous = self.health
        now = time.monotonic()
        recent = self._probed_at is not None and now - self._probed_at < REUSE_PROBE_S
        if previous is not None and (self._sources is not None or (reuse_recent and recent)):
            return previous
        try:
            async with asyncio.timeout(self.config.probe_timeout_s):
                report = await self.probe.probe()
        except TimeoutError:
            report = dataclasses.replace(previous or DeviceHealth(), detail=(
                f"the device check did not finish within {self.config.probe_timeout_s:.0f} s"))
        self._probed_at = now
        return report

    async def _report_health(self, *, reuse_recent: bool) -> None:
        report = await self._probe(reuse_recent=reuse_recent)
        if self.health is None or report.failed != self.health.failed:
            level = logging.WARNING if report.failed else logging.INFO
            log.log(level, "%s: devices %s", self.name, report.payload())
        self.health = report
        payload = report.payload(self.agent)
        try:
            await self._link.call("kiosk.health", payload,
                                  timeout=self.config.request_timeout_s)
            self.health_accepted = True
        except HallRefused as exc:
            self.health_accepted = False
            if exc.code == "unknown_event":
                if not self._health_unsupported:
                    log.info("%s: this hall does not take kiosk.health yet", self.name)
                self._health_unsupported = True
            else:
                log.warning("%s: the hall refused the health report: %s", self.name, exc)
        except (KioskDisconnected, HallUnavailable) as exc:
            log.info("%s: health not reported (%s); again on the next connection", self.name,
                     exc)
            return
        self.events.publish("agent.health", {"report": payload,
                                             "accepted": self.health_accepted})

    async def _refresh_loop(self) -> None:
        """Renew the hall token with ``auth.refresh`` when three quarters of its life are
        gone, so that a reconnect or an upload never has to wait for a login."""
        retry = Backoff(5.0, 120.0)
        while True:
            token = self._token
            self._token_changed.clear()
            if token is None:
                await self._token_changed.wait()
                continue
            lifetime = max(0.0, token.expires_at - self._token_received_at)
            due = self._token_received_at + 0.75 * lifetime
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - time.time())):
                    await self._token_changed.wait()
                    continue  # a new token (a login) arrived meanwhile
            await self._online.wait()
            try:
                ack = await self._link.call("auth.refresh", {},
                                            timeout=self.config.request_timeout_s)
            except (KioskDisconnected, HallUnavailable, HallRefused) as exc:
                log.info("%s: token refresh failed (%s); retrying", self.name, exc)
                await asyncio.sleep(retry.next_delay())
                continue
            retry.reset()
            self.token_refreshes += 1
            self._set_token(HallToken(token=str(ack["token"]),
                                      expires_at=float(ack["expires_at"]), name=token.name))
            log.debug("%s: token renewed", self.name)

    # ------------------------------------------------------------------ resident actions

    async def call(self, event: str, payload: Mapping[str, Any], *,
                   timeout: float | None = None) -> Payload:  # noqa: ASYNC109
        """Send any client event of the protocol; returns the ack's fields.

        Waits up to ``timeout`` for the connection (the agent may be reconnecting), then
        sends once: an event is never repeated, since the hall may have acted on it.
        HallRefused with the hall's error code; KioskDisconnected; KioskStopped.
        """
        if self.stop_reason is not None:
            raise KioskStopped(self.stop_reason)
        limit = timeout if timeout is not None else self.config.request_timeout_s
        try:
            async with asyncio.timeout(limit):
                await self._online.wait()
        except TimeoutError:
            raise KioskDisconnected(f"{event}: not connected to the hall") from None
        return await self._link.call(event, payload, timeout=limit)

    async def _ticket_call(self, event: str, payload: Mapping[str, Any]) -> Payload:
        """A call whose ack carries the ticket: applied unless a ticket.update (newer than
        the ack may be) arrived meanwhile."""
        seen = self._ticket_events
        ack = await self.call(event, payload)
        if self._ticket_events == seen:
            self._set_ticket(ack.get("ticket"))
        ticket: Payload = ack["ticket"]
        return ticket

    def _ticket_id(self) -> str:
        if self.ticket is None:
            raise KioskError("the kiosk holds no ticket")
        return str(self.ticket["id"])

    async def take_ticket(self, matter_id: str, kind: str | None = None,
                          priority: str | None = None, *, when_unstaffed: str | None = None,
                          callback_contact: str | None = None) -> Payload:
        """Take a ticket for the resident at the kiosk; returns it (state ``waiting``)."""
        payload: Payload = {"matter_id": matter_id}
        for key, value in (("kind", kind), ("priority", priority),
                           ("when_unstaffed", when_unstaffed),
                           ("callback_contact", callback_contact)):
            if value is not None:
                payload[key] = value
        return await self._ticket_call("ticket.take", payload)

    async def leave(self) -> Payload:
        """Give the current ticket up (the resident walked away)."""
        return await self._ticket_call("ticket.leave", {"ticket_id": self._ticket_id()})

    async def request_callback(self, contact: str) -> Payload:
        """Ask to be called back instead of waiting at the kiosk."""
        return await self._ticket_call("ticket.callback", {"ticket_id": self._ticket_id(),
                                                           "contact": contact})

    async def query_position(self) -> Payload:
        """Ask for the ticket's position now (it is also pushed as ``ticket.position``)."""
        ack = await self.call("ticket.position", {"ticket_id": self._ticket_id()})
        position: Payload = ack["position"]
        return position

    async def end_session(self) -> Payload:
        """The resident ends the session; returns the ticket."""
        if self.session is None:
            raise KioskError("no session to end")
        return await self._ticket_call("session.end", {"session_id": str(self.session["id"])})

    async def rate(self, score: int, comment: str | None = None, *,
                   ticket_id: str | None = None) -> Payload:
        """Rate the session that just ended (1-5, once); returns the ticket."""
        target = ticket_id or self.last_ticket_id
        if target is None:
            raise KioskError("no ticket to rate")
        payload: Payload = {"ticket_id": target, "score": score}
        if comment:
            payload["comment"] = comment
        return await self._ticket_call("session.rate", payload)

    async def file_case(self, matter_id: str, description: str, *,
                        ticket_id: str | None = None) -> Payload:
        """A 办不成事 report; from a kiosk it is anonymous and carries a ``claim_code``."""
        payload: Payload = {"matter_id": matter_id, "description": description}
        if ticket_id is not None:
            payload["ticket_id"] = ticket_id
        ack = await self.call("case.file", payload)
        case: Payload = ack["case"]
        return case

    async def lookup_case(self, claim_code: str) -> Payload:
        ack = await self.call("case.lookup", {"claim_code": claim_code})
        case: Payload = ack["case"]
        return case

    async def send_chat(self, text: str) -> Payload:
        """A chat message to the clerk of the live session; returns the message."""
        if self.session is None:
            raise KioskError("no session to chat in")
        ack = await self.call("chat.send", {"session_id": str(self.session["id"]),
                                            "text": text})
        message: Payload = ack["message"]
        return message

    async def upload_file(self, content: bytes | Path, *, filename: str | None = None,
                          content_type: str | None = None, ticket_id: str | None = None,
                          snapshot: bool = False) -> Payload:
        """Share a document (a photo or scan) with the ticket's clerk over HTTP; returns the
        file's view. Allowed from the moment the ticket is taken."""
        target = ticket_id or (str(self.ticket["id"]) if self.ticket else self.last_ticket_id)
        if target is None:
            raise KioskError("no ticket to attach a file to")
        try:
            return await self._http.upload(await self._valid_token(), target, content,
                                           filename=filename, content_type=content_type,
                                           snapshot=snapshot)
        except HallRefused as exc:
            if exc.code != "unauthenticated":
                raise
        # The token expired early by the box's clock (or the hall's key changed): log in again.
        self._token = None
        return await self._http.upload(await self._valid_token(), target, content,
                                       filename=filename, content_type=content_type,
                                       snapshot=snapshot)

    def share_document(self, active: bool = True) -> None:
        """Start (or stop) sharing the document camera with the clerk as a screen share."""
        if self._media is None:
            raise KioskError("no session media to share the document camera in")
        self._media.share_document(active)

    def subscribe(self, maxlen: int = 1000) -> Subscription:
        """Events from now on; see :mod:`kiosk.events`."""
        return self.events.subscribe(maxlen)
