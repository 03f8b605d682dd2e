"""Issue 11, "the protocol contract": what the independent client found, over real sockets.

Ownership answers (one rule for tickets and sessions), the transfer note and chat reaching the
receiving clerk, ``monitor_leave`` when a session ends under a monitor, each ``clerk.state``
pushed once and in order, a coded refusal of a foreign Origin, and the event-log columns
reports need.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import pytest

from rooms.events import EventKind, HallEvent
from server import keys
from tests.signalkit import Client, LiveHall, clients, hall_backend, live_hall

MATTER = "flexible_employment_registration"  # served by clerk01 and clerk02 (hrss)
MISSING = "T00000000000999999"


async def _clerk(hall: LiveHall, c: Client, username: str = "clerk01") -> dict[str, Any]:
    await c.connect(hall.url, {"token": await hall.clerk_token(username)})
    welcome: dict[str, Any] = await c.next("welcome")
    return welcome


async def _resident(hall: LiveHall, c: Client, who: str = "r1") -> dict[str, Any]:
    await c.connect(hall.url, {"id_token": await hall.resident_id_token(who)})
    welcome: dict[str, Any] = await c.next("welcome")
    return welcome


async def _in_session(hall: LiveHall, clerk: Client, resident: Client,
                      username: str = "clerk01") -> str:
    await _clerk(hall, clerk, username)
    await _resident(hall, resident)
    took = await resident.call("ticket.take", {"matter_id": MATTER})
    assert took["ok"], took
    offer = await clerk.next("offer.new")
    accepted = await clerk.call("offer.accept", {"ticket_id": offer["ticket_id"]})
    assert accepted["ok"], accepted
    await resident.next("session.started")
    await clerk.next("session.started")
    return str(offer["ticket_id"])


async def _log(hall: LiveHall, ticket_id: str | None = None) -> list[HallEvent]:
    """Every event-log line so far: those written to the records DB and those still queued."""
    records = await hall.app[keys.RECORDS].events(ticket_id=ticket_id, limit=10_000)
    queued = await hall.app[keys.STORE].outbox_peek(10_000)
    seen = {e.seq for e in records}
    return [*records, *(e for e in queued if e.seq not in seen
                        and (ticket_id is None or e.ticket_id == ticket_id))]


async def _until_logged(hall: LiveHall, kind: EventKind,
                        ticket_id: str | None = None) -> list[HallEvent]:
    for _ in range(600):  # 15 s: the records writer and the sweeps run on a busy machine
        rows = [e for e in await _log(hall, ticket_id) if e.kind == kind]
        if rows:
            return rows
        await asyncio.sleep(0.025)
    raise AssertionError(f"no {kind} logged")


def _code(reply: dict[str, Any]) -> str:
    assert not reply["ok"], reply
    return str(reply["error"]["code"])


# -- one ownership rule for tickets and sessions ----------------------------------------------


async def test_ids_not_owned_answer_not_found_whether_or_not_they_exist() -> None:
    """A stranger learns nothing: another resident's live ticket and session answer exactly
    like an id that never existed (``not_found``), on every ticket and session event."""
    async with live_hall() as hall, clients(4) as (clerk, resident, other, clerk2):
        session_id = await _in_session(hall, clerk, resident)
        await _resident(hall, other, "r2")
        await _clerk(hall, clerk2, "clerk02")
        sdp = {"type": "offer", "sdp": "v=0\r\n"}
        for target in (session_id, MISSING):
            stranger = [
                await other.call("ticket.leave", {"ticket_id": target}),
                await other.call("ticket.position", {"ticket_id": target}),
                await other.call("ticket.callback", {"ticket_id": target, "contact": "1"}),
                await other.call("session.rate", {"ticket_id": target, "score": 1}),
                await other.call("session.end", {"session_id": target}),
                await other.call("chat.send", {"session_id": target, "text": "hi"}),
                await other.call("media.screen", {"session_id": target, "active": True}),
                await other.call("rtc.signal", {"session_id": target, "description": sdp}),
                await other.call("case.file", {"matter_id": MATTER, "description": "x",
                                               "ticket_id": target}),
                await clerk2.call("offer.accept", {"ticket_id": target}),
                await clerk2.call("offer.decline", {"ticket_id": target}),
                await clerk2.call("session.end", {"session_id": target}),
                await clerk2.call("session.transfer", {"session_id": target,
                                                       "to_clerk": "clerk01"}),
                await clerk2.call("session.note", {"session_id": target, "text": "x"}),
                await clerk2.call("prereview.start", {"session_id": target}),
            ]
            assert [_code(r) for r in stranger] == ["not_found"] * len(stranger), (
                target, stranger)
        # The same message for both: nothing tells the two apart.
        live = await other.call("ticket.leave", {"ticket_id": session_id})
        missing = await other.call("ticket.leave", {"ticket_id": MISSING})
        assert live["error"]["message"].replace(session_id, "X") == \
            missing["error"]["message"].replace(MISSING, "X")


async def test_owned_ids_in_the_wrong_state_answer_invalid_state_naming_it() -> None:
    """The session's own participants, after it ended, get ``invalid_state`` naming the
    ticket's state (not ``not_found``, as if the session had never been theirs)."""
    async with live_hall() as hall, clients(2) as (clerk, resident):
        session_id = await _in_session(hall, clerk, resident)
        ended = await clerk.call("session.end", {"session_id": session_id})
        assert ended["ok"], ended
        await resident.next("session.ended")
        ref = {"session_id": session_id}
        answers = [
            await resident.call("session.end", ref),
            await resident.call("chat.send", {**ref, "text": "还在吗"}),
            await resident.call("media.screen", {**ref, "active": False}),
            await resident.call("rtc.signal", {**ref, "candidate": None}),
            await clerk.call("session.end", ref),
            await clerk.call("chat.send", {**ref, "text": "x"}),
            await clerk.call("session.note", {**ref, "text": "x"}),
            await clerk.call("session.transfer", {**ref, "to_clerk": "clerk02"}),
            await clerk.call("prereview.start", ref),
            await clerk.call("offer.accept", {"ticket_id": session_id}),
            await resident.call("ticket.callback", {"ticket_id": session_id, "contact": "1"}),
        ]
        for answer in answers:
            assert _code(answer) == "invalid_state", answer
            assert '"wrap_up"' in answer["error"]["message"], answer


async def test_monitor_join_of_an_ended_session_is_invalid_state() -> None:
    async with live_hall() as hall, clients(3) as (clerk, resident, sup):
        session_id = await _in_session(hall, clerk, resident)
        await sup.connect(hall.url, {"token": await hall.clerk_token("supervisor")})
        await sup.next("welcome")
        assert (await clerk.call("session.end", {"session_id": session_id}))["ok"]
        await clerk.next("session.ended")
        assert _code(await sup.call("monitor.join", {"session_id": session_id})) == \
            "invalid_state"
        assert _code(await sup.call("monitor.join", {"session_id": MISSING})) == "not_found"


# -- transfers ---------------------------------------------------------------------------------


async def _transfer(hall: LiveHall, clerk: Client, resident: Client,
                    clerk2: Client) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A chat line, a transfer with a note to clerk02, who accepts: the offer and the
    session view the receiving clerk got."""
    session_id = await _in_session(hall, clerk, resident)
    await _clerk(hall, clerk2, "clerk02")
    said = await resident.call("chat.send", {"session_id": session_id, "text": "我想问社保补缴"})
    assert said["ok"], said
    moved = await clerk.call("session.transfer", {
        "session_id": session_id, "to_clerk": "clerk02", "note": "已核实身份，问补缴"})
    assert moved["ok"], moved
    offer: dict[str, Any] = await clerk2.next("offer.new", lambda d: d["ticket_id"] == session_id)
    accepted = await clerk2.call("offer.accept", {"ticket_id": session_id})
    assert accepted["ok"], accepted
    return session_id, offer, accepted["session"]


@pytest.mark.usefixtures(hall_backend.__name__)
async def test_chat_carries_over_a_transfer() -> None:
    async with live_hall() as hall, clients(3) as (clerk, resident, clerk2):
        _, _, session = await _transfer(hall, clerk, resident, clerk2)
        assert [m["text"] for m in session["chat"]] == ["我想问社保补缴"]
        started = await resident.next("session.started")
        assert [m["text"] for m in started["session"]["chat"]] == ["我想问社保补缴"]


async def test_transfer_note_reaches_the_receiving_clerk() -> None:
    async with live_hall() as hall, clients(3) as (clerk, resident, clerk2):
        _, offer, _ = await _transfer(hall, clerk, resident, clerk2)
        assert offer["transfer_note"] == "已核实身份，问补缴"


# -- monitor_leave when the session ends ------------------------------------------------------


async def test_session_end_under_a_monitor_logs_monitor_leave() -> None:
    async with live_hall() as hall, clients(3) as (clerk, resident, sup):
        session_id = await _in_session(hall, clerk, resident)
        await sup.connect(hall.url, {"token": await hall.clerk_token("supervisor")})
        await sup.next("welcome")
        assert (await sup.call("monitor.join", {"session_id": session_id}))["ok"]
        assert (await clerk.call("session.end", {"session_id": session_id}))["ok"]
        await sup.next("session.ended")
        rows = await _until_logged(hall, EventKind.MONITOR_LEAVE, session_id)
        assert [(r.data["supervisor"], r.data.get("reason")) for r in rows] == [
            ("supervisor", "session_ended")]


# -- clerk.state: each change once, in order -------------------------------------------------


async def test_clerk_state_pushes_each_change_once_in_order() -> None:
    """Finishing wrap-up with a resident waiting makes the clerk available, then offered:
    both steps are pushed, once each, in that order, each with the state it was made for."""
    async with live_hall() as hall, clients(3) as (clerk, resident, later):
        session_id = await _in_session(hall, clerk, resident)
        await _resident(hall, later, "r9")
        took = await later.call("ticket.take", {"matter_id": MATTER})
        assert took["ok"], took
        assert (await clerk.call("session.end", {"session_id": session_id}))["ok"]
        await clerk.next("clerk.state", lambda d: d["clerk"]["state"] == "wrap_up")
        # What came before (login, the first offer, the session) is not under test.
        clerk.events = [e for e in clerk.events if e[0] != "clerk.state"]
        assert (await clerk.call("wrapup.finish", {"outcome": "resolved"}))["ok"]
        await clerk.next("offer.new")
        pushed = []
        while True:
            state = (await clerk.next("clerk.state"))["clerk"]
            pushed.append((state["state"], state["ticket_id"]))
            if state["state"] == "offered":
                break
        assert pushed == [("available", None), ("offered", took["ticket"]["id"])]


# -- a foreign Origin ---------------------------------------------------------------------------


async def test_foreign_origin_is_refused_with_a_code(caplog: pytest.LogCaptureFixture) -> None:
    async with live_hall() as hall:
        token = await hall.clerk_token()
        refused: list[Any] = []
        for _ in range(2):
            c = Client()
            c.sio.on("connect_error", refused.append)
            with caplog.at_level(logging.INFO), pytest.raises(Exception):  # noqa: B017
                await c.connect(hall.url, {"token": token},
                                headers={"Origin": "https://evil.example"})
            await c.close()
        assert [r["data"]["code"] for r in refused] == ["origin_refused"] * 2, refused
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len([r for r in caplog.records if "origin" in r.getMessage().lower()
                    and r.name == "hall.signaling"]) == 1
        # The page's own origin still connects.
        ok = Client()
        await ok.connect(hall.url, {"token": token}, headers={"Origin": hall.url})
        await ok.next("welcome")
        await ok.close()


# -- event-log columns reports need -----------------------------------------------------------


async def test_log_rows_carry_the_ids_reports_group_by() -> None:
    env = {"HALL_RESUME_GRACE_S": "0.3"}
    async with live_hall(env) as hall, clients(3) as (clerk, resident, clerk2):
        session_id = await _in_session(hall, clerk, resident)
        token = resident.sio.connection_auth["id_token"]
        form = aiohttp.FormData()
        form.add_field("file", b"%PDF-1.4\n%%EOF\n", filename="a.pdf",
                       content_type="application/pdf")
        async with aiohttp.ClientSession() as http, http.post(
                f"{hall.url}/api/tickets/{session_id}/files", data=form,
                headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 201, await r.text()
        (upload,) = await _until_logged(hall, EventKind.FILE_UPLOAD, session_id)
        assert (upload.clerk_id, upload.matter_id, upload.department_id, upload.channel) == (
            "clerk01", MATTER, "hrss", "app")
        assert (await clerk.call("session.end", {"session_id": session_id}))["ok"]
        assert (await clerk.call("wrapup.extend", {"seconds": 30}))["ok"]
        (extend,) = await _until_logged(hall, EventKind.WRAPUP_EXTEND)
        assert (extend.ticket_id, extend.clerk_id, extend.matter_id) == (
            session_id, "clerk01", MATTER)
        assert (await clerk.call("wrapup.finish", {"outcome": "resolved"}))["ok"]
        # A requeue names the clerk who lost the session.
        await _clerk(hall, clerk2, "clerk02")
        assert (await clerk2.call("clerk.break", {"reason": "午饭"}))["ok"]
        again = Client()
        await again.connect(hall.url, {"id_token": await hall.resident_id_token("r5")})
        await again.next("welcome")
        took = await again.call("ticket.take", {"matter_id": MATTER})
        offer = await clerk.next("offer.new", lambda d: d["ticket_id"] == took["ticket"]["id"])
        assert (await clerk.call("offer.accept", {"ticket_id": offer["ticket_id"]}))["ok"]
        await clerk.sio.eio.disconnect(abort=True)
        (requeue,) = await _until_logged(hall, EventKind.REQUEUE, offer["ticket_id"])
        assert requeue.clerk_id == "clerk01"
        await again.close()


async def test_callback_request_on_a_named_transfer_names_that_clerk() -> None:
    async with live_hall() as hall, clients(3) as (clerk, resident, clerk2):
        session_id = await _in_session(hall, clerk, resident)
        await _clerk(hall, clerk2, "clerk02")
        assert (await clerk2.call("clerk.break", {"reason": "会议"}))["ok"]
        moved = await clerk.call("session.transfer", {"session_id": session_id,
                                                      "to_clerk": "clerk02"})
        assert moved["ok"], moved
        asked = await resident.call("ticket.callback", {"ticket_id": session_id,
                                                        "contact": "13800000000"})
        assert asked["ok"], asked
        (row,) = await _until_logged(hall, EventKind.CALLBACK_REQUESTED, session_id)
        assert row.clerk_id == "clerk02"


# -- queues.update says when it held ----------------------------------------------------------


async def test_queues_update_carries_at() -> None:
    async with live_hall() as hall, clients(1) as (clerk,):
        before = time.time()
        await _clerk(hall, clerk)
        view = await clerk.next("queues.update")
        assert before - 1 <= view["at"] <= time.time() + 1
        assert view["queues"] and "oldest_wait_s" in view["queues"][0]


# -- after a decline: the cooldown, and its setting -------------------------------------------


async def test_a_declined_ticket_comes_back_to_a_lone_clerk_after_the_cooldown() -> None:
    env = {"HALL_DECLINE_COOLDOWN_S": "0.3", "HALL_OFFER_TIMEOUT_S": "60"}
    async with live_hall(env) as hall, clients(2) as (clerk, resident):
        await _clerk(hall, clerk)
        await _resident(hall, resident)
        took = await resident.call("ticket.take", {"matter_id": MATTER})
        offer = await clerk.next("offer.new")
        declined_at = time.monotonic()
        assert (await clerk.call("offer.decline", {"ticket_id": offer["ticket_id"]}))["ok"]
        again = await clerk.next("offer.new", within=5)
        assert again["ticket_id"] == took["ticket"]["id"]
        assert time.monotonic() - declined_at >= 0.25


async def test_a_monitor_lost_past_the_grace_logs_monitor_leave() -> None:
    async with live_hall({"HALL_RESUME_GRACE_S": "0.3"}) as hall, clients(3) as (
            clerk, resident, sup):
        session_id = await _in_session(hall, clerk, resident)
        await sup.connect(hall.url, {"token": await hall.clerk_token("supervisor")})
        await sup.next("welcome")
        assert (await sup.call("monitor.join", {"session_id": session_id}))["ok"]
        await sup.sio.eio.disconnect(abort=True)
        rows = await _until_logged(hall, EventKind.MONITOR_LEAVE, session_id)
        assert [(r.data["supervisor"], r.data.get("reason")) for r in rows] == [
            ("supervisor", "disconnected")]
