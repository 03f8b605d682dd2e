"""Composition root: builds the aiohttp application out of the domain core.

What can be checked without I/O (configuration, the catalog file) is checked in
:func:`create_app`, so a bad setting fails before the server binds its port. Everything that
opens a connection or starts a task is a ``cleanup_ctx`` generator: aiohttp runs the set-ups in
order and the tear-downs in reverse, so each component is stopped before those it depends on:

    store → records DB → records writer → hall → timer runner → signaling hub

The store, the hall and the hub are *built* here (constructors do no I/O) because
python-socketio must add its routes before the application is frozen; they are *started* in
their cleanup contexts.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import jinja2
from aiohttp import web

from rooms.aio import retry_forever, stop_tasks
from rooms.casebook import CaseBook
from rooms.catalog import ServiceHours, load_catalog
from rooms.clock import SystemClock
from rooms.events import HallEvent
from rooms.file_index_db import DatabaseFileIndex
from rooms.files import FileLimits, LocalBlobStore, SessionFiles
from rooms.hall import Hall
from rooms.lost_state import close_lost_tickets
from rooms.memory_store import MemoryStore
from rooms.prereview_book import PreReviewBook
from rooms.records import RecordsDB
from rooms.records_writer import RecordsWriter
from rooms.redis_store import RedisStore
from rooms.runner import HallRunner
from rooms.store import Store
from server import keys
from server.auth_routes import setup_auth
from server.config import Settings
from server.csrf import csrf_middleware
from server.file_routes import setup_file_routes
from server.forwarded import proxy_networks, socketio_origin_check
from server.http_limits import body_timeout_middleware, server_options
from server.metrics import setup_metrics
from server.pages import default_vendor_dir, missing_vendor_files, setup_pages
from server.prereview_routes import correction_list
from server.routes import setup_routes
from signaling.case_desk import CaseDesk
from signaling.hub import HubConfig, SignalingHub
from signaling.hub_state import HubState, MemoryHubState
from signaling.prereview_desk import PreReviewDesk
from signaling.ratelimit import RateLimits
from signaling.redis_hub_state import RedisHubState

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, demo: bool = False) -> web.Application:
    """Build the hall's web application; nothing is opened until the app starts."""
    settings = settings.resolve(demo=demo)
    catalog = load_catalog(settings.catalog_path)
    if not settings.hours_enforced:
        catalog = catalog.with_hours(ServiceHours.always())

    app = web.Application()
    app[keys.SETTINGS] = settings
    if settings.public_url_setting is None and not demo:
        log.warning("HALL_PUBLIC_URL is not set: printed links and QR codes use %s, which "
                    "residents may not reach", settings.public_url)
    # Slow request bodies are cut (server/http_limits.py); slow headers by the runner's
    # keep-alive timer (server_options).
    app.middlewares.append(body_timeout_middleware(settings.http_body_timeout_s))
    app[keys.CATALOG] = catalog
    app[keys.DEMO_PASSWORD] = _demo_password(settings) if demo else None
    app[keys.TEMPLATES] = jinja2.Environment(
        loader=jinja2.PackageLoader("web", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly, in tests
    )
    setup_auth(app, settings, catalog, demo=demo, demo_password=app[keys.DEMO_PASSWORD])
    app.middlewares.append(csrf_middleware(settings.allowed_origins, proxy_networks(settings)))
    store: Store
    state: HubState
    if settings.redis_url is None:
        store = MemoryStore()
        state = MemoryHubState(catalog.service_points)
    else:
        # Several processes, one hall: live state in Redis (docs/architecture.md).
        store = RedisStore(settings.redis_url, prefix=settings.redis_prefix)
        state = RedisHubState(settings.redis_url, catalog.service_points,
                              prefix=settings.redis_prefix, process_id=settings.process_id)
    records = RecordsDB(settings.database_url)
    app[keys.RECORDS] = records
    hall = Hall(catalog, store, clock=SystemClock(), policy=settings.policy())
    app[keys.STORE] = store
    app[keys.HALL] = hall

    async def log_file_event(event: HallEvent) -> None:
        # The same outbox as the queue's events: the records writer takes them to the DB,
        # with the ticket's clerk, matter, department and channel (reports group by them).
        await store.outbox_append([await hall.with_ticket_fields(event)])

    app[keys.FILES] = SessionFiles(
        LocalBlobStore(settings.data_dir / "files"), DatabaseFileIndex(records), FileLimits(),
        SystemClock(), on_event=log_file_event,
    )
    app[keys.PREREVIEWS] = PreReviewBook(records)
    hub = SignalingHub(
        hall,
        tokens=app[keys.TOKENS],
        app_identity=app.get(keys.APP_IDENTITY),
        throttle=app[keys.THROTTLE],
        config=HubConfig(
            auth_timeout_s=settings.auth_timeout_s,
            max_unauthenticated_per_address=settings.max_unauthenticated_per_address,
            resume_grace_s=settings.resume_grace_s,
            allowed_origins=settings.allowed_origins,
            origin_check=socketio_origin_check(settings.allowed_origins,
                                               proxy_networks(settings)),
            stun_urls=settings.stun_urls,
            turn_urls=settings.turn_urls,
            turn_secret=settings.turn_secret,
            turn_ttl_s=settings.turn_ttl_s,
            rate_limits=RateLimits() if settings.rate_limits else None,
        ),
        prereviews=PreReviewDesk(hall, app[keys.PREREVIEWS], app[keys.FILES]),
        cases=CaseDesk(CaseBook(records), hall),
        state=state,
    )
    hub.sio.attach(app)
    app[keys.HUB] = hub
    setup_file_routes(app)
    app.router.add_get("/corrections/{review_id}", correction_list)
    app.cleanup_ctx.extend(
        [_store_ctx, _records_ctx, _writer_ctx, _hall_ctx, _runner_ctx, _hub_ctx,
         _case_filer_ctx, _file_sweep_ctx, _case_sweep_ctx]
    )
    setup_routes(app)
    setup_metrics(app)  # after the routes: behind a proxy it needs the client address
    app[keys.VENDOR_DIR] = settings.vendor_dir or default_vendor_dir()
    missing = missing_vendor_files(app[keys.VENDOR_DIR])
    if missing:
        # The hall still serves its API; the pages cannot run without these.
        log.warning("browser libraries missing under %s: %s (run the set-up: npm ci)",
                    app[keys.VENDOR_DIR], ", ".join(missing))
    setup_pages(app)
    return app


def _demo_password(settings: Settings) -> str:
    if settings.demo_password is not None:
        return settings.demo_password
    # Random per start: a demo reachable from the network must not have a well-known password.
    return secrets.token_urlsafe(9)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[keys.STORE]
    await store.open()
    yield
    await store.close()


async def _records_ctx(app: web.Application) -> AsyncIterator[None]:
    db = app[keys.RECORDS]
    await db.open()
    yield
    await db.close()


async def _writer_ctx(app: web.Application) -> AsyncIterator[None]:
    writer = RecordsWriter(app[keys.STORE], app[keys.RECORDS])
    task = asyncio.create_task(writer.run(), name="records-writer")
    task.add_done_callback(_log_writer_exit)
    app[keys.WRITER] = writer
    app[keys.WRITER_TASK] = task
    yield
    await writer.stop(task)
    # Events appended after the writer's last pass are still in the store's outbox; the
    # store is memory-only, so anything not written now would be lost with the process.
    try:
        await writer.flush()
    except Exception:
        # Say how much is lost, then let the remaining tear-downs (DB, store) still run.
        log.exception(
            "records: final flush failed; %d events were not written",
            await app[keys.STORE].outbox_len(),
        )


def _log_writer_exit(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("records writer stopped: %r; /readyz now reports not ready", exc, exc_info=exc)


async def _hall_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[keys.HALL].start()
    # An embedded hall starts with an empty store by definition, and a Redis may have come
    # back empty while no process ran: tickets of the previous run still open in the log are
    # closed there now (state_lost); again whenever the hub finds Redis emptied.
    task = asyncio.create_task(_close_lost_tickets(app, "startup"), name="state-lost")
    app[keys.HUB].on_state_lost = lambda: _close_lost_tickets(app, "store_lost")
    yield
    await stop_tasks([task])


async def _close_lost_tickets(app: web.Application, detected: str) -> None:
    """Close in the log the tickets the live store lost (rooms.lost_state): one process of
    several does it (a lease), retried with backoff until the records database answers."""
    store, hub = app[keys.STORE], app[keys.HUB]

    async def close() -> None:
        if await store.lease("state-lost", hub.state.process_id, 30.0):
            await close_lost_tickets(store, app[keys.RECORDS], now=time.time(),
                                     detected=detected)

    await retry_forever(close, what="closing tickets whose live state was lost",
                        interval_s=0.5, max_backoff_s=10.0, once=True, log=log)


async def _runner_ctx(app: web.Application) -> AsyncIterator[None]:
    runner = HallRunner(app[keys.HALL])
    await runner.start()
    app[keys.RUNNER] = runner
    yield
    await runner.close()



async def _hub_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = app[keys.HUB]
    await hub.start()
    yield
    await hub.close()


def _every(
    seconds: float, what: str, work: Callable[[web.Application], Awaitable[object]]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that runs ``work`` now and then every ``seconds`` until shutdown;
    a failing run is retried at the next interval, logged once per outage (retry_forever)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(
            retry_forever(lambda: work(app), what=what, interval_s=seconds,
                          max_backoff_s=seconds, log=log),
            name=what)
        yield
        await stop_tasks([task])

    return ctx


async def _sweep_files(app: web.Application) -> None:
    """Shared files past their retention period are personal data: delete them."""
    removed = await app[keys.FILES].sweep()
    if removed:
        log.info("files: %d past retention deleted", removed)


async def _sweep_cases(app: web.Application) -> None:
    """办不成事 deadlines: escalate the overdue, auto-close the unconfirmed resolved. One
    process of several does it (a lease in the store), so an escalation is announced once."""
    hub = app[keys.HUB]
    if await app[keys.STORE].lease("case-sweep", hub.state.process_id, 120.0):
        await hub.sweep_cases()


_file_sweep_ctx = _every(3600, "file retention sweep", _sweep_files)
_case_sweep_ctx = _every(60, "case deadline sweep", _sweep_cases)


async def _case_filer_ctx(app: web.Application) -> AsyncIterator[None]:
    """办不成事 cases that "unresolved" outcomes made due (the store's follow-up outbox) are
    filed in the records database by one process of several (a lease), at once when an
    outcome wakes it, and retried with backoff while the database is down."""
    hub, store = app[keys.HUB], app[keys.STORE]

    async def file_due() -> None:
        if await store.lease("case-filer", hub.state.process_id, 15.0):
            await hub.file_pending_cases()

    task = asyncio.create_task(
        retry_forever(file_due, what="filing 办不成事 cases", interval_s=1.0,
                      max_backoff_s=5.0, wake=hub.cases_due, log=log),
        name="case-filer")
    yield
    await stop_tasks([task])
    # As for the event log's final flush: an embedded store dies with the process, and with
    # it every outcome's case not yet filed.
    try:
        await file_due()
    except Exception:
        log.exception("cases: final filing failed; %d follow-ups were not filed",
                      len(await store.followup_peek(10_000)))


def make_runner(app: web.Application) -> web.AppRunner:
    """A runner with the options ``hall serve`` gives ``web.run_app`` (header timeout, the
    redacting access log), for tests and embedders that serve the app themselves."""
    return web.AppRunner(app, **server_options(app[keys.SETTINGS]))
