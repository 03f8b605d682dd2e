"""HTTP routes: health probes, the public catalog and queue views, the landing page, static files.

Handlers only translate between HTTP and the domain core; they hold no state of their own
(everything is on the application, under the keys of :mod:`server.keys`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

import web as web_assets  # the project's templates/static package, not aiohttp.web
from rooms.catalog import Catalog, Matter, ServiceHours, ServiceKind
from rooms.clerks import ClerkState
from rooms.errors import AuthError, StoreUnavailableError
from rooms.logsafe import safe_log
from server import keys
from server.access_log import redact_target
from server.forwarded import forwarded_middleware, parse_networks
from server.pages import PAGE_HEADERS
from signaling.hub import public_message
from signaling.identity import Role

log = logging.getLogger(__name__)

STATIC_DIR = Path(web_assets.__file__).parent / "static"

# Chinese stays readable in responses (and is half the size of \\uXXXX escapes).
_dumps = functools.partial(json.dumps, ensure_ascii=False)
# Probes and live views must never be answered from a cache.
_NO_STORE = {"Cache-Control": "no-store"}

_KIND_ZH = {ServiceKind.CONSULTATION: "咨询", ServiceKind.PRE_REVIEW: "预审"}
_WEEKDAY_ZH = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")


def setup_routes(app: web.Application) -> None:
    proxies = parse_networks(app[keys.SETTINGS].trusted_proxies)
    if proxies:
        # First: every handler after it, the throttles and python-socketio's included,
        # sees the client's address.
        app.middlewares.insert(0, forwarded_middleware(proxies))
    app.middlewares.append(store_unavailable)
    app.router.add_get("/", index, name="index")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/api/catalog", api_catalog, name="api_catalog")
    app.router.add_get("/api/queues", api_queues, name="api_queues")
    app.router.add_static("/static/", STATIC_DIR, name="static")


@web.middleware
async def store_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Redis away: every HTTP answer that needed it is a clear 503, not an internal error."""
    try:
        return await handler(request)
    except StoreUnavailableError as err:
        log.warning("%s %s: %s", safe_log(request.method),
                    safe_log(redact_target(request.path, {})), err)  # no secret link
        return _json({"ok": False, "error": {"code": err.code, "message": public_message(err)}},
                     status=503, no_store=True)


def _json(data: Any, *, status: int = 200, no_store: bool = False) -> web.Response:
    return web.json_response(
        data, status=status, dumps=_dumps, headers=_NO_STORE if no_store else None
    )


# -- probes ------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers HTTP. Deliberately checks nothing else, so that an
    orchestrator does not restart the hall (dropping every live session) over a database blip;
    that is what /readyz is for."""
    return _json({"status": "ok"}, no_store=True)


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the live-state store (Redis, when configured) and the records DB answer,
    and the records writer is keeping up."""
    app = request.app
    store = app.get(keys.STORE)
    hub = app.get(keys.HUB)
    store_ok = (store is not None and await store.ping()
                and (hub is None or await hub.state.ping()))
    db = app.get(keys.RECORDS)
    writer = app.get(keys.WRITER)
    task = app.get(keys.WRITER_TASK)
    db_ok = db is not None and await db.ping()
    # A writer task that ended (it only ends by crashing) moves nothing any more, even if its
    # last flush succeeded and `healthy` still says so.
    writer_ok = writer is not None and writer.healthy and task is not None and not task.done()
    checks = {
        "store": "ok" if store_ok else "failed",
        "records_db": "ok" if db_ok else "failed",
        "records_writer": "ok" if writer_ok else "failed",
    }
    ready = store_ok and db_ok and writer_ok
    return _json(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status=200 if ready else 503,
        no_store=True,
    )


# -- API ---------------------------------------------------------------------------------------


def _matter_json(matter: Matter) -> dict[str, Any]:
    return {
        "id": matter.id,
        "name": matter.name,
        "name_en": matter.name_en,
        "department_id": matter.department_id,
        "kinds": sorted(k.value for k in matter.kinds),
        "materials": [
            {
                "id": m.id,
                "name": m.name,
                "name_en": m.name_en,
                "required": m.required,
                "description": m.description,
            }
            for m in matter.materials
        ],
        "typical_handle_s": matter.typical_handle_s,
        "max_queue": matter.max_queue,
        "widen_after_s": matter.widen_after_s,
        "hours": None if matter.hours is None else matter.hours.describe(),
    }


def catalog_json(catalog: Catalog) -> dict[str, Any]:
    """The public view of the catalog.

    Built field by field (an allow-list) rather than by dumping the dataclasses, so that a
    field added to the catalog later, such as a service point's ``device_secret``, is not
    published until someone decides it should be.
    """
    return {
        "hall": {"name": catalog.hall_name, "hours": catalog.hours.describe()},
        "departments": [
            {"id": d.id, "name": d.name, "name_en": d.name_en, "letter": d.letter}
            for d in catalog.departments.values()
        ],
        "matters": [_matter_json(m) for m in catalog.matters.values()],
        "streets": [
            {"id": s.id, "name": s.name, "name_en": s.name_en} for s in catalog.streets.values()
        ],
        "service_points": [
            {"id": p.id, "name": p.name, "address": p.address, "street_id": p.street_id}
            for p in catalog.service_points.values()
        ],
    }


async def api_catalog(request: web.Request) -> web.Response:
    return _json(catalog_json(request.app[keys.CATALOG]))


async def api_queues(request: web.Request) -> web.Response:
    """The live queues, for anyone: counts only (per matter, and clerks per state).

    Names, tickets and break reasons are personal data (a break reason once read as a medical
    note): nobody gets them here without a login. A clerk's or supervisor's bearer token adds
    the staff directory the clerk console's transfer form needs (id, name, state), still
    without tickets or reasons; the full detail is on the supervisors' socket wall.
    """
    try:
        staff = await _staff(request)
    except AuthError as err:
        return _json({"ok": False, "error": {"code": err.code, "message": err.message}},
                     status=401, no_store=True)
    snapshot = await request.app[keys.HALL].snapshot()
    return _json(public_queues(snapshot, staff=staff), no_store=True)


_PUBLIC_MATTER_FIELDS = ("id", "name", "department_id", "queued", "on_duty", "head_wait_s",
                         "handle_time_s")


def public_queues(snapshot: dict[str, Any], *, staff: bool) -> dict[str, Any]:
    """The public view of :meth:`rooms.hall.Hall.snapshot` (an allow-list, like the catalog's:
    a field added to the snapshot later is not published until someone decides it should be)."""
    states = Counter(str(c["state"]) for c in snapshot["clerks"])
    view: dict[str, Any] = {
        "at": snapshot["at"],
        "matters": [{k: m[k] for k in _PUBLIC_MATTER_FIELDS} for m in snapshot["matters"]],
        "clerk_states": {state.value: states.get(state.value, 0) for state in ClerkState},
        "active_tickets": snapshot["active_tickets"],
    }
    if staff:
        view["clerks"] = [{"id": c["id"], "name": c["name"], "state": c["state"]}
                          for c in snapshot["clerks"]]
    return view


async def _staff(request: web.Request) -> bool:
    """Whether the request carries a clerk's or supervisor's token; AuthError if it carries a
    credential that is not valid."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None:
        return False
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise AuthError("send Authorization: Bearer <token>")
    principal = (await request.app[keys.TOKENS].verify_live(credential.strip())).principal
    return principal.role in (Role.CLERK, Role.SUPERVISOR)


# -- pages -------------------------------------------------------------------------------------


def hours_zh(hours: ServiceHours) -> str:
    """Opening hours in Chinese, e.g. ``周一至周五 09:00–17:00；周六 09:00–12:00``."""
    whole_day = ((0, 24 * 60),)
    if all(hours.weekly.get(day) == whole_day for day in range(7)) and not hours.closed_dates:
        return "全天开放"
    groups: list[tuple[list[int], str]] = []
    previous = ""
    for day in range(7):
        text = "、".join(
            f"{o // 60:02d}:{o % 60:02d}–{c // 60:02d}:{c % 60:02d}"
            for o, c in hours.weekly.get(day, ())
        )
        if text and text == previous:
            groups[-1][0].append(day)
        elif text:
            groups.append(([day], text))
        previous = text
    if not groups:
        return "暂不开放"
    parts = []
    for days, text in groups:
        label = _WEEKDAY_ZH[days[0]]
        if len(days) > 1:
            label += "至" + _WEEKDAY_ZH[days[-1]]
        parts.append(f"{label} {text}")
    result = "；".join(parts)
    if hours.closed_dates:
        result += "（法定节假日除外）"
    return result


async def index(request: web.Request) -> web.Response:
    catalog = request.app[keys.CATALOG]
    departments = [
        {
            "department": department,
            "matters": [
                {
                    "matter": m,
                    "kinds": [_KIND_ZH[k] for k in ServiceKind if k in m.kinds],
                }
                for m in catalog.matters.values()
                if m.department_id == department.id
            ],
        }
        for department in catalog.departments.values()
    ]
    template = request.app[keys.TEMPLATES].get_template("index.html")
    html = template.render(
        hall_name=catalog.hall_name,
        hours=hours_zh(catalog.hours),
        departments=departments,
        matter_count=len(catalog.matters),
        point_count=len(catalog.service_points),
        street_count=len(catalog.streets),
    )
    return web.Response(text=html, content_type="text/html", charset="utf-8",
                        headers=PAGE_HEADERS)
