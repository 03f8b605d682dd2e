"""办不成事 cases through the protocol: filing, rights, the closed loop, escalation."""

from __future__ import annotations

import time

import pytest

from server import keys
from tests.signalkit import clients, hall_backend, live_hall

# Every test runs on an embedded hall and on a Redis-mode one.
pytestmark = pytest.mark.usefixtures(hall_backend.__name__)

MATTER = "flexible_employment_registration"  # hrss: served by clerk01


async def test_closed_loop_from_report_to_confirmation_with_rights_checked() -> None:
    """A resident reports; a supervisor assigns; the department's clerk resolves; only the
    reporter sees and confirms it; other people are refused."""
    async with live_hall() as hall, clients(4) as (resident, other, sup, clerk):
        await resident.connect(hall.url, {"id_token": await hall.resident_id_token("r1")})
        await other.connect(hall.url, {"id_token": await hall.resident_id_token("r2")})
        await sup.connect(hall.url, {"token": await hall.clerk_token("supervisor")})
        filed = await resident.call("case.file", {"matter_id": MATTER,
                                                  "description": "窗口说材料不全，但清单里没有"})
        case = filed["case"]
        assert case["state"] == "open" and case["number"].startswith("BCS-")
        assert case["source"] == "app" and case["claim_code"] is None
        assert [c["id"] for c in (await resident.call("case.mine"))["cases"]] == [case["id"]]
        assert (await other.call("case.mine"))["cases"] == []
        steal = await other.call("case.act", {"case_id": case["id"], "action": "confirm"})
        assert steal["error"]["code"] == "forbidden"
        assert (await other.call("case.act", {"case_id": case["id"], "action": "assign",
                                              "to": "hrss"}))["error"]["code"] == "forbidden"
        assigned = await sup.call("case.act", {"case_id": case["id"], "action": "assign",
                                               "to": "hrss", "note": "请人社局跟进"})
        assert assigned["case"]["state"] == "assigned"
        assert (await resident.next("case.update"))["case"]["state"] == "assigned"
        await clerk.connect(hall.url, {"token": await hall.clerk_token("clerk05")})
        foreign = await clerk.call("case.act", {"case_id": case["id"], "action": "start"})
        assert foreign["error"]["code"] == "forbidden"
        await clerk.close()
        clerk01 = type(clerk)()
        await clerk01.connect(hall.url, {"token": await hall.clerk_token("clerk01")})
        assert (await clerk01.call("case.act", {"case_id": case["id"],
                                                "action": "start"}))["ok"]
        no_note = await clerk01.call("case.act", {"case_id": case["id"], "action": "resolve"})
        assert no_note["error"]["code"] == "invalid_input"
        resolved = await clerk01.call("case.act", {"case_id": case["id"], "action": "resolve",
                                                   "note": "已更新材料清单并电话告知"})
        assert resolved["case"]["state"] == "resolved"
        await clerk01.close()
        closed = await resident.call("case.act", {"case_id": case["id"], "action": "confirm"})
        assert closed["case"]["state"] == "closed"
        actions = [s["action"] for s in closed["case"]["steps"]]
        assert actions == ["file", "assign", "start", "resolve", "confirm"]
        again = await resident.call("case.act", {"case_id": case["id"], "action": "confirm"})
        assert again["error"]["code"] == "invalid_state"


async def test_kiosk_reports_anonymously_and_the_claim_code_finds_it() -> None:
    """A kiosk report is anonymous; its claim code is the resident's way back to it."""
    async with live_hall() as hall, clients(2) as (kiosk, later):
        await kiosk.connect(hall.url, {"token": await hall.kiosk_token("XH-001")})
        filed = await kiosk.call("case.file", {"matter_id": MATTER, "description": "不会操作"})
        code = filed["case"]["claim_code"]
        assert filed["case"]["source"] == "kiosk" and code
        await later.connect(hall.url, {"token": await hall.kiosk_token("XH-002")})
        found = await later.call("case.lookup", {"claim_code": code.lower()})
        assert found["case"]["id"] == filed["case"]["id"]
        missing = await later.call("case.lookup", {"claim_code": "ZZZZZZZZ"})
        assert missing["error"]["code"] == "not_found"
        assert (await kiosk.call("case.mine"))["error"]["code"] == "forbidden"


async def test_unresolved_outcome_files_a_case_and_overdue_cases_escalate() -> None:
    """'Could not be completed' files a case for the resident; an overdue case escalates to
    the supervisors, once."""
    async with live_hall() as hall, clients(3) as (clerk, resident, sup):
        await clerk.connect(hall.url, {"token": await hall.clerk_token()})
        await resident.connect(hall.url, {"id_token": await hall.resident_id_token("r1")})
        await sup.connect(hall.url, {"token": await hall.clerk_token("supervisor")})
        took = await resident.call("ticket.take", {"matter_id": MATTER})
        ticket_id = took["ticket"]["id"]
        await clerk.next("offer.new")
        await clerk.call("offer.accept", {"ticket_id": ticket_id})
        await clerk.call("session.end", {"session_id": ticket_id})
        await clerk.call("wrapup.finish", {"outcome": "unresolved",
                                           "reason": "需要房屋产权证明, 系统无法核验"})
        update = await resident.next("case.update")
        assert update["case"]["source"] == "clerk_outcome"
        assert "产权" in update["case"]["description"]
        hub = hall.app[keys.HUB]
        assert await hub.sweep_cases(time.time() + 2 * 86400) == 1
        escalated = await sup.next("case.escalated")
        assert escalated["case"]["overdue"] is True
        assert await hub.sweep_cases(time.time() + 2 * 86400) == 0
        overdue = await sup.call("case.overdue")
        assert [c["id"] for c in overdue["cases"]] == [update["case"]["id"]]
