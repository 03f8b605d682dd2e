"""Prometheus metrics of one hall process, served at ``GET /metrics`` (docs/metrics.md defines
every figure: name, unit, labels, source).

Two kinds of figures, kept apart because they aggregate differently over processes:

- **the hall's state** (queues, clerks, kiosks, the records outbox) is read from the live state
  when Prometheus scrapes (:class:`_StateCollector`), so nothing has to be kept in step with the
  engine. In Redis mode every process reports the same hall-wide values: aggregate them with
  ``max``, never ``sum``;
- **this process's activity** (connections, events handled, offers, resumes, store requests)
  is counted where it happens, at the cost of one dictionary look-up and an increment or a
  histogram observe; ``sum`` it over processes.

Nothing here edits a hot path: event handling is timed by wrapping the hub's one entry point
for client events (``HubServer.on_client_event``), offers come from the engine's notices (one
subscriber), store requests from the Redis link's ``on_request`` hook, lock contention from the
Redis store's own counters at scrape time.

Labels carry only names from closed sets (event names of the protocol's table, states, codes,
catalog matter / department / service-point ids), never a ticket, participant or socket id:
an event name a client made up is counted as ``unknown``, so no client can grow the series.

One registry per application, not prometheus_client's process-wide default: several halls in
one process (the tests) do not collide, and nothing else in the process leaks into /metrics.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import socketio
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rooms.clerks import ClerkState
from rooms.hall import Hall
from rooms.notices import Notice, NoticeKind
from rooms.redis_link import RedisLink
from rooms.redis_store import RedisStore
from rooms.store import Store
from server import keys
from server.forwarded import in_networks, parse_networks
from signaling import protocol as p
from signaling.hub import SignalingHub
from signaling.identity import Role
from signaling.kiosks import DEVICES, KioskStatus
from signaling.redis_hub_state import RedisHubState

log = logging.getLogger(__name__)

# Seconds. Event handling spans a local answer (~0.1 ms) to a command waiting for the hall lock
# under load (seconds: issue 12 measured p99 of 10 s); a Redis request ~0.1 ms to its timeout.
EVENT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# The call funnel (docs/metrics.md, "Call funnel"): seconds from the clerk's accept to each
# stage, and calls that never reached a stage. The pages and the kiosk agent report them.
CALL_STAGES = ("signaling", "ice_connected", "first_frame")
CALL_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0)
# Call quality, one observation per stats sample a side sends (every 5 s of a call): round
# trip and jitter in seconds, loss as a ratio, the receive rate in bytes a second.
RTT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
JITTER_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25)
RATE_BUCKETS = (8_000, 16_000, 32_000, 64_000, 125_000, 250_000, 500_000, 1_000_000)
CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")

UNKNOWN_EVENT = "unknown"
# ``connect``: the Socket.IO handshake, which authenticates when it carries the hello's fields
# (docs/protocol.md); then every event name a client may send and the hall knows. Anything
# else is UNKNOWN_EVENT.
KNOWN_EVENTS = frozenset({"connect", "hello", *p.EVENTS})

ClientEvent = Callable[..., Awaitable[Any]]


class HallMetrics:
    """The registry of one hall application and the instruments its parts observe."""

    def __init__(self, hub: SignalingHub, store: Store, app: web.Application) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.event_seconds = Histogram(
            "hall_event_handling_seconds",
            "Time from a client event's arrival to its answer, by event name",
            ["event"], buckets=EVENT_BUCKETS, registry=r)
        self.event_errors = Counter(
            "hall_event_errors", "Client events answered with an error, by event and code",
            ["event", "code"], registry=r)
        self.offers = Counter("hall_offers", "Tickets offered to a clerk", registry=r)
        self.offers_accepted = Counter(
            "hall_offers_accepted", "Offers a clerk accepted (offer.accept answered ok)",
            registry=r)
        self.offers_declined = Counter(
            "hall_offers_declined", "Offers a clerk declined", registry=r)
        self.offers_missed = Counter(
            "hall_offers_missed", "Offers that ran out unanswered (HALL_OFFER_TIMEOUT_S)",
            registry=r)
        self.offers_withdrawn = Counter(
            "hall_offers_withdrawn", "Offers withdrawn because the resident left", registry=r)
        self.resume_attempts = Counter(
            "hall_resume_attempts", "Handshakes and hello events that carried a resume token",
            registry=r)
        self.resume_failures = Counter(
            "hall_resume_failures", "Resumes refused, by error code", ["code"], registry=r)
        self.store_seconds = Histogram(
            "hall_store_request_seconds",
            "Duration of one request to Redis, by client (store: the engine's live state; "
            "hub_state: the signaling state)", ["link"], buckets=STORE_BUCKETS, registry=r)
        self.store_errors = Counter(
            "hall_store_errors", "Redis requests that failed (connection lost, timed out)",
            ["link"], registry=r)
        # Declared for the call funnel (docs/metrics.md): whoever receives the pages' and the
        # kiosk agent's funnel reports observes these, nothing else needs to change.
        self.call_stage_seconds = Histogram(
            "hall_call_stage_seconds",
            "Seconds from the clerk's accept until the call reached the stage",
            ["stage"], buckets=CALL_BUCKETS, registry=r)
        self.call_failures = Counter(
            "hall_call_failures", "Calls that never reached the stage (a technical failure)",
            ["stage"], registry=r)
        self.call_rtt = Histogram(
            "hall_call_rtt_seconds", "Round-trip time of a call's selected candidate pair, "
            "one observation per stats sample of a side", buckets=RTT_BUCKETS, registry=r)
        self.call_loss = Histogram(
            "hall_call_packet_loss_ratio", "Share of a side's inbound RTP packets lost, one "
            "observation per stats sample", buckets=LOSS_BUCKETS, registry=r)
        self.call_jitter = Histogram(
            "hall_call_jitter_seconds", "Inbound RTP jitter of a side, one observation per "
            "stats sample", buckets=JITTER_BUCKETS, registry=r)
        self.call_rate = Histogram(
            "hall_call_receive_bytes_per_second", "Media a side received over the last stats "
            "interval, bytes a second", buckets=RATE_BUCKETS, registry=r)
        self.call_freezes = Counter(
            "hall_call_freezes", "Video freezes the sides of calls reported", registry=r)
        self.call_candidates = Counter(
            "hall_call_candidate_types",
            "Sides of calls by the type of their selected local ICE candidate (first known)",
            ["candidate_type"], registry=r)
        for kind in CANDIDATE_TYPES:
            self.call_candidates.labels(kind)
        # Children resolved once: the hot path is a dict look-up and an observe.
        self._event_children = {name: self.event_seconds.labels(name)
                                for name in (*KNOWN_EVENTS, UNKNOWN_EVENT)}
        for stage in CALL_STAGES:  # every stage reported from the start, at zero
            self.call_stage_seconds.labels(stage)
            self.call_failures.labels(stage)
        self.state = _StateCollector(hub, store, app)
        r.register(self.state)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes

    # -- client events ------------------------------------------------------------------
    def time_events(self, handle: ClientEvent) -> ClientEvent:
        """``handle`` (the hub's entry point for every client event), timed and counted."""
        async def timed(event: Any, sid: str, *args: Any) -> Any:
            name = event if isinstance(event, str) and event in KNOWN_EVENTS else UNKNOWN_EVENT
            start = time.perf_counter()
            reply = await handle(event, sid, *args)
            self._event_children[name].observe(time.perf_counter() - start)
            self._count_reply(name, args[0] if args else None, reply)
            return reply

        return timed

    def time_connect(self, handle: ClientEvent) -> ClientEvent:
        """``handle`` (the hub's Socket.IO connect handler), timed and counted: a refused
        handshake raises ConnectionRefusedError with ``{code, message}`` as its data."""
        child = self._event_children["connect"]

        async def timed(sid: str, environ: Any, auth: Any = None) -> Any:
            start = time.perf_counter()
            try:
                result = await handle(sid, environ, auth)
            except socketio.exceptions.ConnectionRefusedError as err:
                child.observe(time.perf_counter() - start)
                data = err.error_args.get("data")
                self._count_reply("connect", auth, {"ok": False, "error": data})
                raise
            child.observe(time.perf_counter() - start)
            self._count_reply("connect", auth, {"ok": True})
            return result

        return timed

    def _count_reply(self, name: str, payload: Any, reply: Any) -> None:
        ok = isinstance(reply, dict) and reply.get("ok") is True
        code = None if ok else _error_code(reply)
        if code is not None:
            self.event_errors.labels(name, code).inc()
        if name in ("hello", "connect"):
            if isinstance(payload, dict) and payload.get("resume") is not None:
                self.resume_attempts.inc()
                if code is not None:
                    self.resume_failures.labels(code).inc()
        elif name == "offer.accept" and ok:
            self.offers_accepted.inc()

    # -- the call funnel (reported by the pages and the kiosk agent) -------------------
    def call_reached(self, stage: str, seconds: float) -> None:
        """A call reached ``stage`` ``seconds`` after the clerk's accept. Stages a client
        names are checked: only CALL_STAGES become label values."""
        if stage in CALL_STAGES and seconds >= 0:
            self.call_stage_seconds.labels(stage).observe(seconds)

    def call_failed(self, stage: str) -> None:
        """A call never reached ``stage`` (a technical failure, not a hang-up)."""
        if stage in CALL_STAGES:
            self.call_failures.labels(stage).inc()

    def call_stats(self, stats: Mapping[str, Any], *, first: bool, freezes: int) -> None:
        """One side's stats sample (validated by the protocol: every figure bounded)."""
        if (rtt := stats.get("rtt_ms")) is not None:
            self.call_rtt.observe(rtt / 1000)
        if (loss := stats.get("loss_ratio")) is not None:
            self.call_loss.observe(loss)
        if (jitter := stats.get("jitter_ms")) is not None:
            self.call_jitter.observe(jitter / 1000)
        if (kbps := stats.get("bitrate_kbps")) is not None:
            self.call_rate.observe(kbps * 1000 / 8)
        if freezes > 0:
            self.call_freezes.inc(freezes)
        kind = stats.get("candidate_type")
        if first and kind in CANDIDATE_TYPES:
            self.call_candidates.labels(kind).inc()

    # -- the engine's notices -------------------------------------------------------------
    def on_notices(self, notices: Sequence[Notice]) -> None:
        """A Hall subscriber: offers made, declined, missed, withdrawn."""
        for notice in notices:
            if notice.kind == NoticeKind.OFFER:
                self.offers.inc()
            elif notice.kind == NoticeKind.OFFER_WITHDRAWN:
                reason = notice.data.get("reason")
                if reason == "declined":
                    self.offers_declined.inc()
                elif reason == "timeout":
                    self.offers_missed.inc()
                else:
                    self.offers_withdrawn.inc()

    # -- Redis ------------------------------------------------------------------------------
    def watch_link(self, link: RedisLink, name: str) -> None:
        duration = self.store_seconds.labels(name)
        errors = self.store_errors.labels(name)

        def observe(seconds: float, failed: bool) -> None:
            duration.observe(seconds)
            if failed:
                errors.inc()

        link.on_request = observe


def _error_code(reply: Any) -> str | None:
    if not isinstance(reply, dict):
        return "unknown"
    error = reply.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    # The hall's own stable codes (docs/protocol.md); anything else is not a label value.
    if isinstance(code, str) and code.replace("_", "").isalnum() and len(code) <= 40:
        return code
    return "unknown"


# -- the hall's state, read at scrape time ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reading:
    """What one scrape read from the live state; None: that part could not be read."""

    at: float
    snapshot: Mapping[str, Any] | None
    kiosks: Sequence[KioskStatus] | None
    outbox_len: int | None
    outbox_oldest_at: float | None


class _StateCollector(Collector):
    """Gauges of the hall's state and this process's counters kept by others (the hub's, the
    Redis store's, the records writer's), computed from the last :meth:`read`."""

    def __init__(self, hub: SignalingHub, store: Store, app: web.Application) -> None:
        self._hub, self._store, self._app = hub, store, app
        self._hall: Hall = hub.hall
        self._reading: _Reading | None = None
        self._failing = False

    async def read(self) -> None:
        """Read the hall's state for the next collect (each part on its own: Redis away
        costs the hall-wide gauges, not the process's own figures)."""
        snapshot = kiosks = outbox_len = oldest = None
        try:
            snapshot = await self._snapshot()
            kiosks = await self._hub.state.kiosks_all()
            outbox_len = await self._store.outbox_len()
            head = await self._store.outbox_peek(1)
            oldest = head[0].at if head else None
            if self._failing:
                log.info("metrics: the live state reads again")
                self._failing = False
        except Exception as err:
            if not self._failing:  # once per outage, not at every scrape
                log.warning("metrics: the live state cannot be read (until it can): %r", err)
                self._failing = True
        self._reading = _Reading(self._hall.clock.now(), snapshot, kiosks, outbox_len, oldest)

    async def _snapshot(self) -> Mapping[str, Any]:
        # The wall's shared snapshot when one is fresh (a process builds one per second):
        # a scrape then costs no read of every queue under the hall lock.
        shared = await self._hub.state.shared_view("snapshot")
        if shared is not None:
            cached: dict[str, Any] = orjson.loads(shared)
            return cached
        return await self._hall.snapshot()

    def collect(self) -> Iterable[Metric]:
        reading = self._reading
        readable = reading is not None and reading.snapshot is not None
        yield _gauge("hall_live_state_readable",
                     "1 if this scrape read the hall's live state; 0: the hall-wide gauges "
                     "are missing from it", [((), int(readable))])
        yield from self._process_figures()
        if reading is None:
            return
        if reading.snapshot is not None:
            yield from _queue_figures(reading.snapshot)
        if reading.kiosks is not None:
            yield from _kiosk_figures(reading.kiosks)
        if reading.outbox_len is not None:
            yield _gauge("hall_records_outbox_events",
                         "Events in the live store's outbox not yet written to the records "
                         "database", [((), reading.outbox_len)])
            age = 0.0 if reading.outbox_oldest_at is None else max(
                0.0, reading.at - reading.outbox_oldest_at)
            yield _gauge("hall_records_outbox_age_seconds",
                         "Age of the oldest event not yet written to the records database "
                         "(0: none waiting)", [((), age)])

    def _process_figures(self) -> Iterable[Metric]:
        # A setting, exported so the alert rules compare against the hall's own target.
        yield _gauge("hall_service_level_seconds",
                     "The service level target, HALL_SERVICE_LEVEL_S",
                     [((), self._hall.policy.service_level_s)])
        roles = Tally(x.principal.role.value for x in self._hub.connections.all())
        yield _gauge("hall_connections", "Authenticated sockets this process holds, by role",
                     [((role.value,), roles.get(role.value, 0)) for role in Role], ["role"])
        stats = self._hub.stats
        yield _counter("hall_frames_undecodable", "Frames refused undecoded (invalid_payload)",
                       stats.get("undecodable", 0))
        yield _counter("hall_events_rate_limited",
                       "Client events refused by a rate limit (too_many_requests)",
                       stats.get("rate_limited", 0))
        writer = self._app.get(keys.WRITER)
        task = self._app.get(keys.WRITER_TASK)
        if writer is not None:
            healthy = writer.healthy and task is not None and not task.done()
            yield _gauge("hall_records_writer_healthy",
                         "1 if this process's records writer is working (as /readyz)",
                         [((), int(healthy))])
            yield _counter("hall_records_events_written",
                           "Events this process's records writer inserted", writer.written)
        if isinstance(self._store, RedisStore):
            lock = self._store.stats
            yield _counter("hall_lock_transactions",
                           "Engine transactions this process ran under the hall lock",
                           int(lock.get("transactions", 0)))
            yield _counter("hall_lock_attempts",
                           "Attempts to take the hall lock; minus transactions: lock waits",
                           int(lock.get("lock_attempts", 0)))


def _queue_figures(snapshot: Mapping[str, Any]) -> Iterable[Metric]:
    matters = list(snapshot.get("matters", ()))
    labels = ["matter", "department"]

    def per_matter(field: str) -> list[tuple[tuple[str, ...], float]]:
        return [((m["id"], m["department_id"]), float(m.get(field) or 0)) for m in matters]

    yield _gauge("hall_waiting_tickets",
                 "Tickets in the matter's queue (waiting or offered, not yet accepted)",
                 per_matter("queued"), labels)
    yield _gauge("hall_oldest_wait_seconds",
                 "Seconds the ticket at the head of the matter's queue has waited (0: empty)",
                 per_matter("head_wait_s"), labels)
    yield _gauge("hall_clerks_on_duty",
                 "Clerks on duty for the matter as a primary skill (available, offered, in "
                 "session or wrap-up)", per_matter("on_duty"), labels)
    states = Tally(c["state"] for c in snapshot.get("clerks", ()))
    yield _gauge("hall_clerks", "Clerks by state",
                 [((s.value,), states.get(s.value, 0)) for s in ClerkState], ["state"])


def _kiosk_figures(kiosks: Sequence[KioskStatus]) -> Iterable[Metric]:
    def state(k: KioskStatus) -> str:
        return "online" if k.online else "offline" if k.since is not None else "never_seen"

    states = Tally(state(k) for k in kiosks)
    yield _gauge("hall_kiosks", "Service-point kiosks by connection state",
                 [((s,), states.get(s, 0)) for s in ("online", "offline", "never_seen")],
                 ["state"])
    # Per point only for kiosks seen since the start: a point never installed is no outage.
    yield _gauge("hall_kiosk_online", "1 if the service point's kiosk is connected",
                 [((k.id,), int(k.online)) for k in kiosks if k.since is not None],
                 ["service_point"])
    failed = Tally(d for k in kiosks if k.online and k.health is not None
                   for d in k.health.failed)
    yield _gauge("hall_kiosk_devices_failed",
                 "Connected kiosks whose last health report says the device failed",
                 [((d,), failed.get(d, 0)) for d in DEVICES], ["device"])


def _gauge(name: str, doc: str, samples: Iterable[tuple[Sequence[str], float]],
           labels: Sequence[str] = ()) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


# -- the route ------------------------------------------------------------------------------

METRICS = web.AppKey("metrics", HallMetrics)  # here, not in server.keys: it imports this


def setup_metrics(app: web.Application) -> HallMetrics:
    """Build the app's metrics, hook them to the hub, the hall and Redis, add ``/metrics``.
    Call after the hub is built and after :func:`server.routes.setup_routes` (its forwarded
    middleware gives the handler the client's address behind a trusted proxy)."""
    # No ``*_created`` series (a timestamp per counter and histogram, doubling the series for
    # nothing Prometheus needs). prometheus_client keeps this switch process-wide.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    hub, store = app[keys.HUB], app[keys.STORE]
    metrics = HallMetrics(hub, store, app)
    app[METRICS] = metrics
    handle = hub.sio.on_client_event
    if handle is not None:
        hub.sio.on_client_event = metrics.time_events(handle)
    handlers = hub.sio.handlers.get("/", {})
    if "connect" in handlers:
        handlers["connect"] = metrics.time_connect(handlers["connect"])
    hub.hall.subscribe(metrics.on_notices)
    hub.call_observer = metrics  # call.report's funnel and quality figures
    if isinstance(store, RedisStore):
        metrics.watch_link(store.link, "store")
    if isinstance(hub.state, RedisHubState):
        metrics.watch_link(hub.state.link, "hub_state")
    allow = parse_networks(app[keys.SETTINGS].metrics_allow)

    async def serve(request: web.Request) -> web.Response:
        if not in_networks(request.remote, allow):
            return web.json_response(
                {"ok": False, "error": {"code": "forbidden",
                                        "message": "metrics are not served to this address "
                                                   "(HALL_METRICS_ALLOW)"}},
                status=403, headers={"Cache-Control": "no-store"})
        await metrics.state.read()
        return web.Response(body=generate_latest(metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4,
                                     "Cache-Control": "no-store"})

    app.router.add_get("/metrics", serve, name="metrics")
    return metrics
