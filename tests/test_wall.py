"""The supervisors' wallboard and the clerks' queue view, day statistics, session notes,
kiosk presence and health, and the 办不成事 list: in the engine, in the pure view builders, in
the records database and over real sockets."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rooms.casebook import CaseBook
from rooms.cases import Case, CaseSource, CaseState
from rooms.errors import HallError, InvalidStateError, ValidationError
from rooms.events import EventKind, HallEvent
from rooms.hall import Unstaffed
from rooms.policy import QueuePolicy
from rooms.records import RecordsDB
from server import keys
from server.config import Settings
from signaling.hub import SignalingHub
from signaling.hub_state import embedded
from signaling.identity import Principal, Role
from signaling.kiosks import DeviceReport, Kiosks
from signaling.wall import build_queues, build_wall
from tests.hallkit import Rig, RigMaker
from tests.signalkit import Client, LiveHall, clients, live_hall

MATTER = "flexible_employment_registration"  # hrss: primary for clerk01 and clerk02
DAY = 24 * 3600.0
OK_HEALTH = {"camera": "ok", "microphone": "ok", "speaker": "ok", "document_camera": "ok"}


# -- helpers ---------------------------------------------------------------------------------


async def _count(rig: Rig, matter_id: str) -> dict[str, int]:
    return (await rig.hall.day_stats([matter_id]))[matter_id]


def _fast(hall: LiveHall, interval: float = 0.05) -> SignalingHub:
    """Look at the views every ``interval`` instead of every second (the pusher reads the
    interval after each pass, so the change applies within the default second)."""
    hub: SignalingHub = hall.app[keys.HUB]
    hub.config = replace(hub.config, wall_interval_s=interval)
    return hub


async def _connect(hall: LiveHall, c: Client, *, staff: str | None = None,
                   resident: str | None = None, kiosk: str | None = None) -> dict[str, Any]:
    if staff is not None:
        auth = {"token": await hall.clerk_token(staff)}
    elif kiosk is not None:
        auth = {"token": await hall.kiosk_token(kiosk)}
    else:
        auth = {"id_token": await hall.resident_id_token(resident or "r1")}
    await c.connect(hall.url, auth)
    welcome: dict[str, Any] = await c.next("welcome")
    return welcome


async def _in_session(hall: LiveHall, clerk: Client, resident: Client) -> tuple[str, dict[
        str, Any], dict[str, Any]]:
    """clerk01 and a resident in a session; returns its id, the clerk's welcome and the
    clerk's session view from the accept."""
    welcome = await _connect(hall, clerk, staff="clerk01")
    await _connect(hall, resident, resident="r1")
    took = await resident.call("ticket.take", {"matter_id": MATTER})
    assert took["ok"], took
    offer = await clerk.next("offer.new")
    accepted = await clerk.call("offer.accept", {"ticket_id": offer["ticket_id"]})
    assert accepted["ok"], accepted
    await resident.next("session.started")
    return str(offer["ticket_id"]), welcome, accepted["session"]


async def _wall(c: Client, match: Any = None, within: float = 5.0) -> dict[str, Any]:
    """The next wall.update whose wall matches."""
    got = await c.next("wall.update", None if match is None else lambda d: match(d["wall"]),
                       within=within)
    assert "seq" not in got
    wall: dict[str, Any] = got["wall"]
    return wall


def _kiosk(wall: dict[str, Any], kiosk_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(k for k in wall["kiosks"] if k["id"] == kiosk_id)
    return found


def _matter(rows: list[dict[str, Any]], matter_id: str, key: str = "id") -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in rows if m[key] == matter_id)
    return found


async def _logged(hall: LiveHall, *kinds: EventKind) -> list[HallEvent]:
    """Events of these kinds, whether still in the outbox or already in the records DB."""
    pending = await hall.app[keys.STORE].outbox_peek(100_000)
    written = await hall.app[keys.RECORDS].events(kinds=kinds, limit=100_000)
    by_seq = {e.seq: e for e in [*written, *pending] if e.kind in kinds}
    return [by_seq[s] for s in sorted(by_seq)]


# -- day statistics in the engine --------------------------------------------------------------


async def test_accept_is_counted_within_or_over_the_service_level(new_rig: RigMaker) -> None:
    """An accept counts as answered, and as answered in SL only if the wait was within it."""
    rig = await new_rig(QueuePolicy(service_level_s=60))
    quick = await rig.hall.join("residence", when_unstaffed=Unstaffed.WAIT)
    await rig.advance(30)
    await rig.hall.login("c1")
    await rig.hall.accept("c1", quick.id)
    assert await _count(rig, "residence") == {"answered": 1, "answered_in_sl": 1,
                                              "abandoned": 0}
    slow = await rig.hall.join("residence")
    await rig.advance(100)
    await rig.hall.end_session("c1", quick.id)
    await rig.hall.finish_wrapup("c1", "resolved")
    await rig.hall.accept("c1", slow.id)
    assert await _count(rig, "residence") == {"answered": 2, "answered_in_sl": 1,
                                              "abandoned": 0}
    assert (await _count(rig, "employment"))["answered"] == 0


async def test_abandon_is_counted(new_rig: RigMaker) -> None:
    """A resident leaving the queue counts as abandoned for the matter, not as answered."""
    rig = await new_rig()
    ticket = await rig.hall.join("employment", when_unstaffed=Unstaffed.WAIT)
    await rig.advance(5)
    await rig.hall.leave(ticket.id)
    assert await _count(rig, "employment") == {"answered": 0, "answered_in_sl": 0,
                                               "abandoned": 1}


async def test_a_new_local_day_starts_from_zero(new_rig: RigMaker) -> None:
    """Counts are per local date of the catalog's time zone: after local midnight, zero."""
    rig = await new_rig()
    # 1_700_000_000 is 2023-11-14 22:13 UTC, already 2023-11-15 06:13 in Asia/Shanghai.
    ticket = await rig.hall.join("residence", when_unstaffed=Unstaffed.WAIT)
    await rig.hall.login("c1")
    await rig.hall.accept("c1", ticket.id)
    assert await rig.store.counter_get("day:2023-11-15:answered:residence") == 1
    assert await rig.store.counter_get("day:2023-11-14:answered:residence") == 0
    assert (await _count(rig, "residence"))["answered"] == 1
    await rig.advance(17 * 3600 + 40 * 60)  # 23:53 local: still the same day
    assert (await _count(rig, "residence"))["answered"] == 1
    await rig.advance(10 * 60)  # 00:03 on the 16th
    assert await _count(rig, "residence") == {"answered": 0, "answered_in_sl": 0,
                                              "abandoned": 0}


def test_service_level_and_wait_alert_come_from_the_environment() -> None:
    """HALL_SERVICE_LEVEL_S and HALL_WAIT_ALERT_S reach the policy; non-positive is refused."""
    policy = Settings.from_env({"HALL_SERVICE_LEVEL_S": "120",
                                "HALL_WAIT_ALERT_S": "900"}).policy()
    assert (policy.service_level_s, policy.wait_alert_s) == (120, 900)
    assert (QueuePolicy().service_level_s, QueuePolicy().wait_alert_s) == (300, 600)
    for name in ("HALL_SERVICE_LEVEL_S", "HALL_WAIT_ALERT_S"):
        with pytest.raises(HallError) as caught:
            Settings.from_env({name: "0"})
        assert caught.value.code == "config_invalid" and name in caught.value.message
    with pytest.raises(ValidationError):
        QueuePolicy(wait_alert_s=-1)


async def test_notes_are_only_for_the_clerk_holding_the_session(new_rig: RigMaker) -> None:
    """record_note logs a clerk_note for the clerk in session and refuses anyone else."""
    rig = await new_rig()
    ticket = await rig.hall.join("residence", when_unstaffed=Unstaffed.WAIT)
    await rig.hall.login("c1")
    with pytest.raises(InvalidStateError):  # offered, not yet in session
        await rig.hall.record_note(ticket.id, "c1", "早了")
    await rig.hall.accept("c1", ticket.id)
    await rig.hall.login("c2")
    with pytest.raises(InvalidStateError):
        await rig.hall.record_note(ticket.id, "c2", "不是我的")
    with pytest.raises(ValidationError):
        await rig.hall.record_note(ticket.id, "c1", "   ")
    note = await rig.hall.record_note(ticket.id, "c1", "  居民需补充户口本  ")
    assert note.text == "居民需补充户口本" and note.at == rig.clock.now()
    logged = [e for e in await rig.events() if e.kind == EventKind.CLERK_NOTE]
    assert [(e.ticket_id, e.clerk_id, e.data["text"]) for e in logged] == [
        (ticket.id, "c1", "居民需补充户口本")]


# -- the view builders (no sockets) -------------------------------------------------------------


async def test_wall_changes_with_content_not_with_time(new_rig: RigMaker) -> None:
    """The wall's fingerprint ignores waits growing; a new head, an alert or a kiosk going
    away changes it. A never-seen kiosk raises no alert."""
    rig = await new_rig(QueuePolicy(wait_alert_s=120))
    kiosks = Kiosks(rig.hall.catalog.service_points)

    async def wall() -> Any:
        return build_wall(rig.hall.catalog, rig.hall.policy, await rig.hall.snapshot(),
                          await rig.hall.day_stats(), kiosks.all(), [], {"open": 2})

    empty = await wall()
    assert empty.view["alerts"] == [] and empty.view["cases"] == {"open": 2, "overdue": 0}
    assert _kiosk(empty.view, "XH-001") == {
        "id": "XH-001", "name": "汇站居委会", "street_id": "xjh", "online": False,
        "since": None, "health": None, "health_at": None}
    await rig.hall.join("residence", when_unstaffed=Unstaffed.WAIT)
    waiting = await wall()
    assert waiting.key != empty.key
    assert _matter(waiting.view["matters"], "residence")["waiting"] == 1
    await rig.advance(60)
    later = await wall()
    assert later.key == waiting.key
    assert _matter(later.view["matters"], "residence")["oldest_wait_s"] == 60
    hr = _matter(later.view["departments"], "hr")
    assert (hr["waiting"], hr["oldest_wait_s"]) == (1, 60)
    await rig.advance(60)
    alerted = await wall()
    assert alerted.key != later.key
    assert alerted.view["alerts"] == [{"kind": "oldest_wait", "matter_id": "residence",
                                       "wait_s": 120}]
    kiosks.connected("XH-001", rig.clock.now())
    kiosks.report("XH-001", DeviceReport("failed", "ok", "ok", "absent"), rig.clock.now())
    assert {"kind": "kiosk_health", "kiosk_id": "XH-001", "failed": ["camera"]} in (
        await wall()).view["alerts"]
    kiosks.disconnected("XH-001", rig.clock.now())
    gone = await wall()
    assert {"kind": "kiosk_offline", "kiosk_id": "XH-001", "since": rig.clock.now()} in \
        gone.view["alerts"]
    assert not any(a["kind"] == "kiosk_health" for a in gone.view["alerts"])
    assert _kiosk(gone.view, "XH-001")["health"]["camera"] == "failed"  # last known


async def test_clerk_counts_and_queue_view_follow_skills(new_rig: RigMaker) -> None:
    """Clerks count in their primary departments by state; a clerk's queues are their primary
    matters, then their secondary ones."""
    rig = await new_rig()
    await rig.hall.login("c3")
    await rig.hall.login("c1")
    await rig.hall.set_break("c1", "tea")
    snapshot = await rig.hall.snapshot()
    board = build_wall(rig.hall.catalog, rig.hall.policy, snapshot, {}, [], [], {})
    med = _matter(board.view["departments"], "med")["clerks"]
    hr = _matter(board.view["departments"], "hr")["clerks"]
    assert (med["available"], med["logged_out"], hr["available"]) == (1, 1, 0)
    assert (hr["on_break"], hr["logged_out"]) == (1, 1)
    c3 = _matter(board.view["clerks"], "c3")
    assert c3["department_ids"] == ["med"] and c3["state"] == "available"
    queues = build_queues(rig.hall.catalog, snapshot, "c3").view["queues"]
    assert [(q["matter_id"], q["primary"]) for q in queues] == [
        ("medical", True), ("residence", False), ("employment", False)]


# -- 办不成事 list in the records database ---------------------------------------------------------


def _case(n: int, now: float) -> Case:
    return Case.new(id=f"case-{n}", number=f"BCS-20261124-{n:04d}", matter_id=MATTER,
                    department_id="hrss", source=CaseSource.APP, reporter="resident:r1",
                    description="跑了两次没办成", now=now)


async def test_casebook_lists_overdue_first_then_by_deadline(db: RecordsDB) -> None:
    """listing() puts overdue cases first, then the soonest deadline; counts() agrees."""
    book = CaseBook(db)
    now = 1_700_000_000.0
    old, recent, fresh = _case(1, now - 10 * DAY), _case(2, now - 2 * DAY), _case(3, now)
    for case in (old, recent, fresh):
        await book.file(case)
    for case in await book.due(now):
        case.expire(now)
        await book.save(case)
    unswept = _case(4, now - 5 * DAY)  # past its deadline, but no sweep has marked it yet
    await book.file(unswept)
    closed = _case(5, now)
    closed.assign("hrss", actor="supervisor:s", now=now)
    closed.start(actor="clerk:c", now=now)
    closed.resolve(actor="clerk:c", now=now, note="已办")
    closed.confirm(actor="resident:r1", now=now)
    await book.file(closed)
    assert [c.id for c in await book.listing()] == ["case-1", "case-2", "case-4", "case-3"]
    assert [c.id for c in await book.listing(limit=2)] == ["case-1", "case-2"]
    assert [c.id for c in await book.listing(state=CaseState.CLOSED)] == ["case-5"]
    assert await book.counts() == {"open": 4, "overdue": 2}


# -- over the protocol: the wall -----------------------------------------------------------------


async def test_wall_shows_a_taken_and_accepted_ticket() -> None:
    """After a ticket is taken and accepted the wall counts it answered, lists the session
    and the clerk in session; wall.snapshot answers the same wall."""
    async with live_hall() as hall, clients(3) as (sup, clerk, resident):
        _fast(hall)
        await _connect(hall, sup, staff="supervisor")
        first = await _wall(sup)
        assert first["alerts"] == [] and first["sessions"] == []
        assert (first["service_level_s"], first["wait_alert_s"]) == (300, 600)
        assert len(first["kiosks"]) == len(hall.app[keys.CATALOG].service_points)
        session_id, _, _ = await _in_session(hall, clerk, resident)
        wall = await _wall(sup, lambda w: w["sessions"])
        matter = _matter(wall["matters"], MATTER)
        assert (matter["waiting"], matter["answered_today"], matter["answered_in_sl_today"],
                matter["abandoned_today"], matter["on_duty"]) == (0, 1, 1, 0, 1)
        hrss = _matter(wall["departments"], "hrss")
        assert hrss["answered_today"] == 1 and hrss["clerks"]["in_session"] == 1
        [session] = wall["sessions"]
        assert session["session_id"] == session_id and session["clerk_id"] == "clerk01"
        assert (session["clerk_name"], session["channel"], session["monitors"]) == (
            "王芳", "app", 0)
        assert session["matter_id"] == MATTER and session["ticket_number"].startswith("A")
        clerk01 = _matter(wall["clerks"], "clerk01")
        assert clerk01["state"] == "in_session" and clerk01["ticket_id"] == session_id
        snap = await sup.call("wall.snapshot")
        assert snap["ok"] and snap["snapshot"]["sessions"] == wall["sessions"]
        assert "wall.update" not in clerk.names() + resident.names()


async def test_wall_updates_are_unnumbered_and_not_replayed_on_resume() -> None:
    """wall.update carries no seq, never enters the outbox, goes out only on a change, and a
    resumed supervisor gets just the current wall right after its welcome."""
    async with live_hall() as hall, clients(3) as (sup, resident, back):
        hub = _fast(hall)
        welcome = await _connect(hall, sup, staff="supervisor")
        assert welcome["last_seq"] == 0
        await _wall(sup)
        await _connect(hall, resident, resident="r1")
        took = await resident.call("ticket.take", {"matter_id": MATTER,
                                                   "when_unstaffed": "wait"})
        assert took["ok"], took
        waiting = await _wall(sup, lambda w: _matter(w["matters"], MATTER)["waiting"] == 1)
        assert _matter(waiting["matters"], MATTER)["on_duty"] == 0
        await asyncio.sleep(0.4)  # eight passes of the pusher; nothing changed but time
        assert "wall.update" not in sup.names()
        supervisor = embedded(hub).peek("supervisor:supervisor")
        assert supervisor is not None and supervisor.seq == 0
        assert await hub.state.since("supervisor:supervisor", 0) == []
        await sup.sio.eio.disconnect(abort=True)
        await resident.call("ticket.leave", {"ticket_id": took["ticket"]["id"]})
        await back.connect(hall.url, {"token": await hall.clerk_token("supervisor"),
                                      "resume": welcome["resume_token"], "last_seq": 0})
        while True:
            back.arrived.clear()  # before looking, so an arrival in between is not missed
            if "wall.update" in back.names():
                break
            await asyncio.wait_for(back.arrived.wait(), 5)
        assert back.names() == ["welcome", "wall.update"]  # nothing replayed, one wall
        resumed = await back.next("welcome")
        assert resumed["resumed"] is True and resumed["last_seq"] == 0
        current = await _wall(back)
        assert _matter(current["matters"], MATTER)["waiting"] == 0
        assert _matter(current["matters"], MATTER)["abandoned_today"] == 1
        await asyncio.sleep(0.3)
        assert "wall.update" not in back.names()


async def test_kiosk_presence_and_health_show_in_the_wall_and_the_log() -> None:
    """A kiosk goes online, reports a failed camera (alert), repeats it (not logged again),
    recovers, and goes offline at once when its socket drops (alert); never-seen kiosks
    raise nothing."""
    async with live_hall() as hall, clients(2) as (sup, kiosk):
        _fast(hall)
        await _connect(hall, sup, staff="supervisor")
        start = await _wall(sup)
        assert all(not k["online"] and k["since"] is None for k in start["kiosks"])
        assert start["alerts"] == []
        await _connect(hall, kiosk, kiosk="XH-001")
        online = await _wall(sup, lambda w: _kiosk(w, "XH-001")["online"])
        assert _kiosk(online, "XH-001")["since"] is not None and online["alerts"] == []
        failed = {**OK_HEALTH, "camera": "failed", "document_camera": "absent",
                  "detail": "camera: no frames", "agent": "hall-kiosk/1.0"}
        assert await kiosk.call("kiosk.health", failed) == {"ok": True}
        assert (await kiosk.call("kiosk.health", failed))["ok"]
        wall = await _wall(sup, lambda w: _kiosk(w, "XH-001")["health"] is not None)
        assert _kiosk(wall, "XH-001")["health"] == {
            "camera": "failed", "microphone": "ok", "speaker": "ok",
            "document_camera": "absent", "detail": "camera: no frames"}
        assert _kiosk(wall, "XH-001")["health_at"] is not None
        assert wall["alerts"] == [{"kind": "kiosk_health", "kiosk_id": "XH-001",
                                   "failed": ["camera"]}]
        assert (await kiosk.call("kiosk.health", OK_HEALTH))["ok"]
        healthy = await _wall(sup, lambda w: not w["alerts"])
        assert _kiosk(healthy, "XH-001")["health"]["camera"] == "ok"
        await kiosk.sio.eio.disconnect(abort=True)  # the resume grace (30 s) is not awaited
        gone = await _wall(sup, lambda w: not _kiosk(w, "XH-001")["online"], within=3)
        assert gone["alerts"] == [{"kind": "kiosk_offline", "kiosk_id": "XH-001",
                                   "since": _kiosk(gone, "XH-001")["since"]}]
        logged = await _logged(hall, EventKind.KIOSK_ONLINE, EventKind.KIOSK_OFFLINE,
                               EventKind.KIOSK_HEALTH)
        assert [e.kind for e in logged] == [EventKind.KIOSK_ONLINE, EventKind.KIOSK_HEALTH,
                                            EventKind.KIOSK_HEALTH, EventKind.KIOSK_OFFLINE]
        assert {e.service_point_id for e in logged} == {"XH-001"}
        assert logged[1].data["failed"] == ["camera"] and logged[2].data["failed"] == []


async def test_kiosk_health_is_refused_for_other_roles_and_bad_payloads() -> None:
    """Only a kiosk may report health, and only the four devices with known states."""
    async with live_hall() as hall, clients(4) as (sup, clerk, resident, kiosk):
        await _connect(hall, sup, staff="supervisor")
        await _connect(hall, clerk, staff="clerk01")
        await _connect(hall, resident, resident="r1")
        await _connect(hall, kiosk, kiosk="XH-002")
        for someone in (sup, clerk, resident):
            refused = await someone.call("kiosk.health", OK_HEALTH)
            assert refused["error"]["code"] == "forbidden"
        bad = [
            {k: v for k, v in OK_HEALTH.items() if k != "speaker"},
            {**OK_HEALTH, "camera": "broken"},
            {**OK_HEALTH, "camera": True},
            {**OK_HEALTH, "detail": "x" * 301},
            {**OK_HEALTH, "agent": "a" * 65},
            {**OK_HEALTH, "printer": "ok"},
        ]
        for payload in bad:
            refused = await kiosk.call("kiosk.health", payload)
            assert refused["error"]["code"] == "invalid_payload", payload
        kiosks = {k.id: k for k in await hall.app[keys.HUB].state.kiosks_all()}
        assert kiosks["XH-002"].health is None
        edge = {**OK_HEALTH, "detail": "x" * 300, "agent": "a" * 64}
        assert (await kiosk.call("kiosk.health", edge))["ok"]


# -- over the protocol: the clerk's queues -----------------------------------------------------


async def test_clerk_gets_the_queues_of_their_own_matters() -> None:
    """queues.update arrives after the welcome with only the clerk's matters (primary, then
    secondary), unnumbered, and again when a queue changes."""
    async with live_hall() as hall, clients(3) as (clerk, other, resident):
        _fast(hall)
        catalog = hall.app[keys.CATALOG]
        await _connect(hall, clerk, staff="clerk01")
        first = await clerk.next("queues.update")
        assert "seq" not in first
        assert {q["matter_id"] for q in first["queues"]} == set(
            catalog.department_matters("hrss"))
        assert all(q["primary"] and q["department_id"] == "hrss" for q in first["queues"])
        await _connect(hall, other, staff="clerk02")
        theirs = (await other.next("queues.update"))["queues"]
        secondary = [q["matter_id"] for q in theirs if not q["primary"]]
        assert set(secondary) == set(catalog.department_matters("medicare"))
        assert [q["primary"] for q in theirs] == sorted((q["primary"] for q in theirs),
                                                        reverse=True)
        assert (await other.call("clerk.logout"))["ok"]
        await clerk.call("clerk.break", {"reason": "开会"})
        await _connect(hall, resident, resident="r1")
        assert (await resident.call("ticket.take", {"matter_id": MATTER,
                                                    "when_unstaffed": "wait"}))["ok"]
        update = await clerk.next("queues.update",
                                  lambda d: _matter(d["queues"], MATTER, "matter_id")[
                                      "waiting"] == 1)
        row = _matter(update["queues"], MATTER, "matter_id")
        assert row["on_duty"] == 0 and row["oldest_wait_s"] is not None
        assert row["name"] == catalog.matters[MATTER].name
        assert "queues.update" not in resident.names()


# -- over the protocol: session notes ----------------------------------------------------------


async def test_session_note_round_trip_and_back_after_resume_and_reload() -> None:
    """The session's clerk writes a note (logged, trimmed); the resident never sees notes;
    the clerk's session view has them after a resume and after a reload."""
    async with live_hall() as hall, clients(6) as (clerk, resident, back, again, other,
                                                    resident_again):
        session_id, welcome, view = await _in_session(hall, clerk, resident)
        assert view["notes"] == []
        sent = await clerk.call("session.note", {"session_id": session_id,
                                                 "text": "  居民需补充户口本原件  "})
        assert sent["ok"], sent
        note = sent["note"]
        assert note["text"] == "居民需补充户口本原件" and note["id"] and note["at"] > 0
        for bad in ("", "   ", "字" * 2001):
            refused = await clerk.call("session.note", {"session_id": session_id, "text": bad})
            assert refused["error"]["code"] == "invalid_payload"
        ok_long = await clerk.call("session.note", {"session_id": session_id,
                                                    "text": "字" * 2000})
        assert ok_long["ok"]
        mine = await resident.call("session.note", {"session_id": session_id, "text": "x"})
        assert mine["error"]["code"] == "forbidden"
        await _connect(hall, other, staff="clerk02")
        theirs = await other.call("session.note", {"session_id": session_id, "text": "x"})
        assert theirs["error"]["code"] == "not_found"  # another clerk's session
        logged = await _logged(hall, EventKind.CLERK_NOTE)
        assert [(e.ticket_id, e.clerk_id, e.data["text"][:3]) for e in logged] == [
            (session_id, "clerk01", "居民需"), (session_id, "clerk01", "字字字")]
        await clerk.sio.eio.disconnect(abort=True)
        await back.connect(hall.url, {"token": await hall.clerk_token("clerk01"),
                                      "resume": welcome["resume_token"], "last_seq": 0})
        resumed = await back.next("welcome")
        assert resumed["session"]["notes"] == [note, ok_long["note"]]
        reload = await _connect(hall, again, staff="clerk01")  # a new tab replaces it
        assert [n["id"] for n in reload["session"]["notes"]] == [note["id"],
                                                                  ok_long["note"]["id"]]
        await asyncio.sleep(0.2)
        assert not any("note" in name for name in resident.names())
        welcome_again = await _connect(hall, resident_again, resident="r1")  # a reload
        assert "notes" not in welcome_again["session"]


# -- over the protocol: the 办不成事 list -------------------------------------------------------


async def test_case_list_orders_overdue_first_and_is_for_supervisors(tmp_path: Path) -> None:
    """case.list gives supervisors the cases not closed, overdue first then by deadline, or
    one state, at most limit; clerks and residents are refused; bad filters are invalid."""
    # A file database: on ":memory:" every session shares one connection, and filing cases
    # right away would collide with the start-up case sweep.
    env = {"HALL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'hall.db'}"}
    async with live_hall(env) as hall, clients(3) as (sup, clerk, resident):
        hub: SignalingHub = hall.app[keys.HUB]
        desk = hub.cases
        assert desk is not None
        who = Principal(Role.RESIDENT, "r1", "居民")
        now = time.time()

        async def file(age_days: float) -> str:
            case = await desk.file(who, MATTER, "材料要求前后不一致", None, now - age_days * DAY)
            return case.id

        old, recent, fresh = await file(10), await file(2), await file(0)
        assert await hub.sweep_cases(now) == 2
        unswept = await file(5)
        await _connect(hall, sup, staff="supervisor")
        assigned = await sup.call("case.act", {"case_id": fresh, "action": "assign",
                                               "to": "hrss"})
        assert assigned["ok"], assigned
        listed = await sup.call("case.list", {})
        assert [c["id"] for c in listed["cases"]] == [old, recent, unswept, fresh]
        assert [c["overdue"] for c in listed["cases"]] == [True, True, False, False]
        by_state = await sup.call("case.list", {"state": "assigned"})
        assert [c["id"] for c in by_state["cases"]] == [fresh]
        limited = await sup.call("case.list", {"limit": 1})
        assert [c["id"] for c in limited["cases"]] == [old]
        for bad in ({"state": "lost"}, {"limit": 0}, {"limit": 501}, {"limit": "5"},
                    {"mine": True}):
            assert (await sup.call("case.list", bad))["error"]["code"] == "invalid_payload"
        await _connect(hall, clerk, staff="clerk01")
        await _connect(hall, resident, resident="r1")
        for someone in (clerk, resident):
            assert (await someone.call("case.list", {}))["error"]["code"] == "forbidden"
        wall = (await sup.call("wall.snapshot"))["snapshot"]
        assert wall["cases"] == {"open": 4, "overdue": 2}
