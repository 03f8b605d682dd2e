"""Issue 11 item 2: a department supervisor's departments are an access boundary.

``supervisor_hrss`` (the demo catalog's supervisor of 人社局 only) against a medical-insurance
(医保局) session, its files, its case and the wall, over real sockets and real HTTP; the
hall-wide ``supervisor`` is the control that still sees and does everything.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser

from server import keys
from tests.browserkit import DESKTOP, open_page, wait_until
from tests.signalkit import PASSWORD, Client, LiveHall, clients, hall_backend, live_hall

# The socket and HTTP tests run on an embedded hall and on a Redis-mode one.
both_backends = pytest.mark.usefixtures(hall_backend.__name__)

MEDICARE = "medical_expense_reimbursement"  # 医保局, served by clerk03
HRSS = "flexible_employment_registration"  # 人社局, served by clerk01
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00"
       b"\x00\x90wS\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe"
       b"\x92\xef\x00\x00\x00\x00IEND\xaeB`\x82")


async def _staff(hall: LiveHall, client: Client, username: str) -> str:
    token = await hall.clerk_token(username)
    await client.connect(hall.url, {"token": token})
    await client.next("welcome")
    return token


async def _session(hall: LiveHall, clerk: Client, clerk_id: str, resident: Client,
                   resident_id: str, matter_id: str) -> str:
    """``clerk_id`` serves ``resident_id``'s ticket for ``matter_id``; returns the session."""
    await _staff(hall, clerk, clerk_id)
    await resident.connect(hall.url, {"id_token": await hall.resident_id_token(resident_id)})
    await resident.next("welcome")
    took = await resident.call("ticket.take", {"matter_id": matter_id})
    assert took["ok"], took
    offer = await clerk.next("offer.new")
    assert (await clerk.call("offer.accept", {"ticket_id": offer["ticket_id"]}))["ok"]
    await clerk.next("session.started")
    return str(offer["ticket_id"])


def _refused_for_scope(reply: dict[str, Any]) -> None:
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == "forbidden", reply
    message = reply["error"]["message"]
    # It names the caller's own scope, never the other department.
    assert "hrss" in message and "medicare" not in message, message


@both_backends
async def test_department_supervisor_cannot_monitor_another_departments_session() -> None:
    """monitor.join / monitor.leave / rtc.signal on a 医保 session are refused for the 人社
    supervisor (the clerk hears nothing of it); its own department's session and the
    hall-wide supervisor still work."""
    async with live_hall() as hall, clients(6) as (clerk3, resident, clerk1, resident2, hrss,
                                                  sup):
        medicare = await _session(hall, clerk3, "clerk03", resident, "r1", MEDICARE)
        own = await _session(hall, clerk1, "clerk01", resident2, "r2", HRSS)
        await _staff(hall, hrss, "supervisor_hrss")
        await _staff(hall, sup, "supervisor")
        ref = {"session_id": medicare}
        _refused_for_scope(await hrss.call("monitor.join", ref))
        _refused_for_scope(await hrss.call("monitor.leave", ref))
        _refused_for_scope(await hrss.call("rtc.signal", {
            **ref, "to": "peer", "description": {"type": "answer", "sdp": SDP}}))
        # The control joins the same session: the clerk's first monitor.joined is the
        # control's, so the refused join told the clerk nothing.
        joined = await sup.call("monitor.join", ref)
        assert joined["ok"] and joined["session"]["role"] == "monitor", joined
        assert (await clerk3.next("monitor.joined"))["supervisor"] == "supervisor:supervisor"
        assert (await sup.call("rtc.signal", {**ref, "to": "peer", "description": {
            "type": "answer", "sdp": SDP}}))["ok"]
        assert (await clerk3.next("rtc.signal"))["from"] == "supervisor:supervisor"
        assert (await sup.call("monitor.leave", ref))["ok"]
        # Inside its scope the department supervisor monitors as before.
        mine = await hrss.call("monitor.join", {"session_id": own})
        assert mine["ok"], mine
        assert (await clerk1.next("monitor.joined"))["supervisor"] == \
            "supervisor:supervisor_hrss"
        assert (await hrss.call("rtc.signal", {"session_id": own, "to": "peer",
                                               "description": {"type": "answer",
                                                               "sdp": SDP}}))["ok"]
        assert (await hrss.call("monitor.leave", {"session_id": own}))["ok"]


async def _http(method: str, url: str, token: str, **kwargs: Any) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.request(
            method, url, headers={"Authorization": f"Bearer {token}"}, **kwargs) as r:
        return r.status, await r.read()


def _form() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", PNG, filename="scan.png", content_type="image/png")
    return form


@both_backends
async def test_department_supervisor_reaches_only_its_departments_files() -> None:
    """List, download, upload and delete on a 医保 ticket: 403 for the 人社 supervisor and
    nothing stored; the hall-wide supervisor lists and downloads; both may use an 人社
    ticket; an upload to a ticket that does not exist is 404 and stores nothing."""
    async with live_hall() as hall, clients(2) as (resident, resident2):
        files = hall.app[keys.FILES]
        r1 = await hall.resident_id_token("r1")
        await resident.connect(hall.url, {"id_token": r1})
        took = await resident.call("ticket.take", {"matter_id": MEDICARE,
                                                   "when_unstaffed": "wait"})
        medicare = took["ticket"]["id"]
        r2 = await hall.resident_id_token("r2")
        await resident2.connect(hall.url, {"id_token": r2})
        took = await resident2.call("ticket.take", {"matter_id": HRSS, "when_unstaffed": "wait"})
        own = took["ticket"]["id"]
        status, body = await _http("POST", f"{hall.url}/api/tickets/{medicare}/files", r1,
                                   data=_form())
        assert status == 201, body
        file_id = (await files.list(medicare))[0].id
        hrss = await hall.clerk_token("supervisor_hrss")
        sup = await hall.clerk_token("supervisor")
        base = f"{hall.url}/api/tickets/{medicare}/files"
        for method, url, extra in (("GET", base, {}), ("GET", f"{base}/{file_id}", {}),
                                   ("POST", base, {"data": _form()}),
                                   ("DELETE", f"{base}/{file_id}", {})):
            status, body = await _http(method, url, hrss, **extra)
            assert status == 403, (method, url, status, body)
            assert b'"forbidden"' in body and b"medicare" not in body, body
        assert [f.id for f in await files.list(medicare)] == [file_id]  # nothing added/removed
        status, body = await _http("GET", base, sup)
        assert status == 200 and file_id.encode() in body, body
        status, body = await _http("GET", f"{base}/{file_id}", sup)
        assert (status, body) == (200, PNG)
        for token in (hrss, sup):
            status, body = await _http("POST", f"{hall.url}/api/tickets/{own}/files", token,
                                       data=_form())
            assert status == 201, body
            status, body = await _http("GET", f"{hall.url}/api/tickets/{own}/files", token)
            assert status == 200, body
            status, body = await _http("POST", f"{hall.url}/api/tickets/no-such-ticket/files",
                                       token, data=_form())
            assert status == 404 and b'"not_found"' in body, (status, body)
        assert await files.list("no-such-ticket") == []
        assert len(await files.list(own)) == 2


@both_backends
async def test_department_supervisor_sees_and_moves_only_its_departments_cases() -> None:
    """case.list, case.overdue, case.act and case.escalated are bounded by the scope; the
    hall-wide supervisor sees both departments' cases."""
    async with live_hall() as hall, clients(4) as (r1, r2, hrss, sup):
        await r1.connect(hall.url, {"id_token": await hall.resident_id_token("r1")})
        await r2.connect(hall.url, {"id_token": await hall.resident_id_token("r2")})
        foreign = (await r1.call("case.file", {"matter_id": MEDICARE,
                                               "description": "报销材料清单不一致"}))["case"]
        mine = (await r2.call("case.file", {"matter_id": HRSS,
                                            "description": "灵活就业登记办不成"}))["case"]
        await _staff(hall, hrss, "supervisor_hrss")
        await _staff(hall, sup, "supervisor")
        listed = await hrss.call("case.list", {})
        assert [c["id"] for c in listed["cases"]] == [mine["id"]]
        everything = await sup.call("case.list", {})
        assert {c["id"] for c in everything["cases"]} == {mine["id"], foreign["id"]}
        _refused_for_scope(await hrss.call("case.act", {"case_id": foreign["id"],
                                                        "action": "assign", "to": "hrss"}))
        assigned = await hrss.call("case.act", {"case_id": mine["id"], "action": "assign",
                                                "to": "hrss"})
        assert assigned["ok"], assigned
        assert (await sup.call("case.act", {"case_id": foreign["id"], "action": "assign",
                                            "to": "medicare"}))["ok"]
        hub = hall.app[keys.HUB]
        assert await hub.sweep_cases(time.time() + 30 * 86400) == 2
        seen = {(await sup.next("case.escalated"))["case"]["id"] for _ in range(2)}
        assert seen == {mine["id"], foreign["id"]}
        assert (await hrss.next("case.escalated"))["case"]["id"] == mine["id"]
        overdue = await hrss.call("case.overdue")  # also the fence: escalations came first
        assert [c["id"] for c in overdue["cases"]] == [mine["id"]]
        assert "case.escalated" not in hrss.names()
        overdue = await sup.call("case.overdue")
        assert {c["id"] for c in overdue["cases"]} == {mine["id"], foreign["id"]}


def _wall_departments(wall: dict[str, Any]) -> set[str]:
    return {d["id"] for d in wall["departments"]}


@both_backends
async def test_department_supervisor_wall_shows_only_its_departments() -> None:
    """wall.snapshot and the wall.update push: queues, clerks, sessions, alerts and case
    counts of the scope only; kiosks stay (they serve every department); the hall-wide
    wall has everything."""
    async with live_hall() as hall, clients(7) as (clerk3, resident, clerk1, resident2, r3,
                                                  hrss, sup):
        medicare = await _session(hall, clerk3, "clerk03", resident, "r1", MEDICARE)
        own = await _session(hall, clerk1, "clerk01", resident2, "r2", HRSS)
        await r3.connect(hall.url, {"id_token": await hall.resident_id_token("r3")})
        await r3.call("case.file", {"matter_id": MEDICARE, "description": "报销办不成"})
        await r3.call("case.file", {"matter_id": MEDICARE, "description": "又一次办不成"})
        await _staff(hall, hrss, "supervisor_hrss")
        await _staff(hall, sup, "supervisor")
        catalog = hall.app[keys.CATALOG]
        hrss_matters = {m.id for m in catalog.matters.values() if m.department_id == "hrss"}
        pushed = await hrss.next("wall.update", lambda w: len(w["wall"]["sessions"]) == 1)
        for wall in ((await hrss.call("wall.snapshot"))["snapshot"], pushed["wall"]):
            assert _wall_departments(wall) == {"hrss"}
            assert {m["id"] for m in wall["matters"]} == hrss_matters
            assert [s["session_id"] for s in wall["sessions"]] == [own]
            assert all("hrss" in c["department_ids"] for c in wall["clerks"])
            assert "clerk01" in {c["id"] for c in wall["clerks"]}
            assert "clerk03" not in {c["id"] for c in wall["clerks"]}
            assert all(a.get("matter_id") in (None, *hrss_matters) for a in wall["alerts"])
            assert wall["cases"] == {"open": 0, "overdue": 0}
            assert len(wall["kiosks"]) == len(catalog.service_points)
            assert wall["scope"] == {"whole_hall": False, "departments": ["hrss"]}
        whole = (await sup.call("wall.snapshot"))["snapshot"]
        assert _wall_departments(whole) == set(catalog.departments)
        assert {s["session_id"] for s in whole["sessions"]} == {medicare, own}
        assert {"clerk01", "clerk03"} <= {c["id"] for c in whole["clerks"]}
        assert whole["cases"]["open"] == 2
        assert whole["scope"] == {"whole_hall": True, "departments": []}


@pytest.mark.browser
async def test_department_supervisors_board_hides_other_departments(browser: Browser) -> None:
    """The /supervisor page of the 人社 supervisor shows the 人社 row only (the catalog's
    other departments are not left as empty rows); kiosks are all there."""
    async with live_hall() as hall:
        watched = await open_page(browser, f"{hall.url}/supervisor", viewport=DESKTOP)
        page = watched.page
        await page.fill("#login-username", "supervisor_hrss")
        await page.fill("#login-password", PASSWORD)
        await page.click("#login-submit")
        await page.wait_for_selector("#wall", state="visible")

        async def scoped() -> bool:
            shown = await page.locator("#dept-table tbody.sv-dept-group:visible").count()
            return bool(shown == 1)

        await wait_until(scoped, what="only the hrss department on the board")
        assert await page.is_visible("tbody.sv-dept-group[data-dept-id=hrss]")
        catalog = hall.app[keys.CATALOG]
        assert await page.locator("[data-testid=kiosk-cell]").count() == len(
            catalog.service_points)
        watched.assert_no_errors()
