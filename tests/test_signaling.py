"""The real-time protocol over real sockets: flows, validation, authorisation, resume."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time

import aiohttp
import jwt
import pytest
import socketio

from rooms.events import EventKind
from server import keys
from tests.signalkit import Client, LiveHall, clients, hall_backend, live_hall

# Every test runs on an embedded hall and on a Redis-mode one.
pytestmark = pytest.mark.usefixtures(hall_backend.__name__)

MATTER = "flexible_employment_registration"  # served by clerk01 and clerk02 (hrss)
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" + "a=x\r\n" * 200


async def _clerk(hall: LiveHall, c: Client, username: str = "clerk01") -> dict:  # type: ignore[type-arg]
    await c.connect(hall.url, {"token": await hall.clerk_token(username)})
    return await c.next("welcome")  # type: ignore[no-any-return]


async def _resident(hall: LiveHall, c: Client, who: str = "r1") -> dict:  # type: ignore[type-arg]
    await c.connect(hall.url, {"id_token": await hall.resident_id_token(who)})
    return await c.next("welcome")  # type: ignore[no-any-return]


async def _in_session(hall: LiveHall, clerk: Client, resident: Client) -> str:
    await _clerk(hall, clerk)
    resident.welcome = await _resident(hall, resident)  # type: ignore[attr-defined]
    took = await resident.call("ticket.take", {"matter_id": MATTER})
    assert took["ok"], took
    offer = await clerk.next("offer.new")
    accepted = await clerk.call("offer.accept", {"ticket_id": offer["ticket_id"]})
    assert accepted["ok"], accepted
    resident.session = (await resident.next("session.started"))["session"]  # type: ignore[attr-defined]
    await clerk.next("session.started")
    return str(offer["ticket_id"])


async def test_whole_session_from_ticket_to_done() -> None:
    """Take, offer, accept, signal both ways, end, wrap up: each side sees its events."""
    async with live_hall() as hall, clients(2) as (clerk, resident):
        welcome = await _clerk(hall, clerk)
        assert welcome["role"] == "clerk" and welcome["participant"] == "clerk:clerk01"
        assert "seq" not in welcome and welcome["resume_token"]
        await _resident(hall, resident)
        took = await resident.call("ticket.take", {"matter_id": MATTER, "kind": "pre_review"})
        assert took["ok"] and took["ticket"]["number"].startswith("A")
        offer = await clerk.next("offer.new")
        assert offer["ticket_id"] == took["ticket"]["id"] and offer["deadline"] > time.time()
        accepted = await clerk.call("offer.accept", {"ticket_id": offer["ticket_id"]})
        assert accepted["session"]["initiator"] is True
        mine = (await resident.next("session.started"))["session"]
        assert mine["initiator"] is False and mine["polite"] is True
        assert mine["peer"] == {"role": "clerk", "name": "王芳"}
        session_id = mine["id"]
        sent = await clerk.call("rtc.signal", {"session_id": session_id,
                                               "description": {"type": "offer", "sdp": SDP}})
        assert sent == {"ok": True}
        got = await resident.next("rtc.signal")
        assert got["from"] == "peer" and got["description"]["sdp"] == SDP
        await resident.call("rtc.signal", {"session_id": session_id,
                                           "candidate": {"candidate": "candidate:1 1 udp 1 "
                                                         "10.0.0.1 9 typ host",
                                                         "sdpMid": "0", "sdpMLineIndex": 0}})
        await resident.call("rtc.signal", {"session_id": session_id, "candidate": None})
        first = await clerk.next("rtc.signal")
        assert first["candidate"]["sdpMid"] == "0"
        assert (await clerk.next("rtc.signal"))["candidate"] is None
        ended = await clerk.call("session.end", {"session_id": session_id})
        assert ended["ticket"]["state"] == "wrap_up"
        assert (await resident.next("session.ended"))["reason"] == "clerk"
        done = await clerk.call("wrapup.finish", {"outcome": "pre_review_corrections"})
        assert done["ok"] and done["clerk"]["state"] == "available"
        final = await resident.next("ticket.update", lambda d: d["ticket"]["state"] == "done")
        assert final["ticket"]["outcome"] == "pre_review_corrections"
        seqs = [d["seq"] for name, d in [*resident.events, ("x", final)] if "seq" in d]
        assert seqs == sorted(seqs)


async def test_bad_events_get_stable_errors_and_change_nothing() -> None:
    """Unknown events, bad payloads, oversized events: clear codes, state untouched."""
    async with live_hall() as hall, clients(1) as (resident,):
        await _resident(hall, resident)
        assert (await resident.call("ticket.steal", {}))["error"]["code"] == "unknown_event"
        bad = await resident.call("ticket.take", {"matter_id": 42})
        assert bad["error"]["code"] == "invalid_payload" and "matter_id" in \
            bad["error"]["message"]
        extra = await resident.call("ticket.take", {"matter_id": MATTER, "vip": True})
        assert extra["error"]["code"] == "invalid_payload"
        not_obj = await resident.call("ticket.take", ["x"])
        assert not_obj["error"]["code"] == "invalid_payload"
        two = await resident.sio.call("ticket.take", ({"matter_id": MATTER}, {"x": 1}),
                                      timeout=5)
        assert two["error"]["code"] == "invalid_payload"
        bare = await resident.sio.call("ticket.take", timeout=5)
        assert bare["error"]["code"] == "invalid_payload"
        huge = await resident.call("ticket.take", {"matter_id": MATTER, "callback_contact":
                                                   "x" * 70_000})
        assert huge["error"]["code"] == "payload_too_large"
        nobody = await resident.call("ticket.take", {"matter_id": MATTER})
        assert nobody["error"]["code"] == "no_clerk_on_duty"
        assert (await hall.app[keys.HALL].snapshot())["active_tickets"] == 0
        assert resident.sio.connected


async def test_roles_and_ownership_are_checked_on_every_event() -> None:
    """A resident cannot act as a clerk, on another's ticket, or inside another's session."""
    async with live_hall() as hall, clients(3) as (clerk, resident, other):
        session_id = await _in_session(hall, clerk, resident)
        await _resident(hall, other, "r2")
        forbidden = await other.call("offer.accept", {"ticket_id": session_id})
        assert forbidden["error"]["code"] == "forbidden"
        # Another's ticket or session is not_found, as if it did not exist (docs/protocol.md).
        assert (await other.call("ticket.leave", {"ticket_id": session_id}))["error"][
            "code"] == "not_found"
        intrude = await other.call("rtc.signal", {"session_id": session_id,
                                                  "description": {"type": "offer", "sdp": SDP}})
        assert intrude["error"]["code"] == "not_found"
        assert (await clerk.call("ticket.take", {"matter_id": MATTER}))["error"][
            "code"] == "forbidden"
        assert (await resident.call("monitor.join", {"session_id": session_id}))["error"][
            "code"] == "forbidden"
        assert "rtc.signal" not in resident.names()


async def test_expired_or_forged_tokens_are_refused_at_connect() -> None:
    """An expired hall token or one signed with another key cannot connect."""
    async with live_hall() as hall:
        settings = hall.app[keys.SETTINGS]
        secret = settings.secret_key
        assert secret is not None
        now = int(time.time())
        expired = jwt.encode({"sub": "clerk01", "role": "clerk", "name": "x", "iss":
                              "virtual-hall", "iat": now - 100, "exp": now - 10}, secret,
                             algorithm="HS256")
        forged = jwt.encode({"sub": "clerk01", "role": "clerk", "name": "x", "iss":
                             "virtual-hall", "iat": now, "exp": now + 600}, "x" * 40,
                            algorithm="HS256")
        for token in (expired, forged, "not-a-token"):
            c = Client()
            with pytest.raises(socketio.exceptions.ConnectionError):
                await c.connect(hall.url, {"token": token})
            await c.close()


async def test_unauthenticated_connection_must_hello_in_time() -> None:
    """A socket without credentials may hello; one that stays silent is closed."""
    async with live_hall({"HALL_AUTH_TIMEOUT_S": "0.5"}) as hall, clients(2) as (late, quick):
        await late.connect(hall.url)
        await quick.connect(hall.url)
        denied = await quick.call("ticket.take", {"matter_id": MATTER})
        assert denied["error"]["code"] == "unauthenticated"
        welcome = await quick.call("hello", {"id_token": await hall.resident_id_token("q")})
        assert welcome["ok"] and welcome["role"] == "resident"
        again = await quick.call("hello", {"id_token": await hall.resident_id_token("q")})
        assert again["error"]["code"] == "invalid_state"
        await asyncio.sleep(1.0)
        assert not late.sio.connected
        assert quick.sio.connected


async def test_resume_replays_missed_events_in_order_and_token_is_single_use() -> None:
    """A dropped resident resumes with every message sent while away, once."""
    async with live_hall() as hall, clients(3) as (clerk, resident, back):
        session_id = await _in_session(hall, clerk, resident)
        resume_token = resident.welcome["resume_token"]  # type: ignore[attr-defined]
        seen = [d["seq"] for _, d in resident.events if isinstance(d, dict) and "seq" in d]
        last_seq = max(seen)
        await resident.sio.eio.disconnect(abort=True)
        await clerk.next("session.peer", lambda d: d["state"] == "reconnecting")
        for i in range(3):
            await clerk.call("rtc.signal", {"session_id": session_id,
                                            "description": {"type": "offer", "sdp": f"s{i}"}})
        # A resume presents the credential it came from (the resident's identity token).
        id_token = await hall.resident_id_token("r1")
        await back.connect(hall.url, {"id_token": id_token, "resume": resume_token,
                                      "last_seq": last_seq})
        welcome = await back.next("welcome")
        assert welcome["resumed"] is True and welcome["session"]["id"] == session_id
        replay = [await back.next("rtc.signal") for _ in range(3)]
        assert [r["description"]["sdp"] for r in replay] == ["s0", "s1", "s2"]
        assert [r["seq"] for r in replay] == list(range(replay[0]["seq"], replay[0]["seq"] + 3))
        assert replay[0]["seq"] > last_seq
        await clerk.next("session.peer", lambda d: d["state"] == "back")
        reuse = Client()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await reuse.connect(hall.url, {"id_token": id_token, "resume": resume_token,
                                           "last_seq": 0})
        await reuse.close()


async def test_reloaded_page_within_the_grace_tells_the_peer_it_is_back() -> None:
    """A resident who reconnects afresh (a reloaded page, no resume) is announced as back."""
    async with live_hall() as hall, clients(3) as (clerk, resident, reloaded):
        session_id = await _in_session(hall, clerk, resident)
        await resident.sio.eio.disconnect(abort=True)
        await clerk.next("session.peer", lambda d: d["state"] == "reconnecting")
        welcome = await _resident(hall, reloaded)  # same resident, new id_token connection
        assert welcome["resumed"] is False and welcome["session"]["id"] == session_id
        back = await clerk.next("session.peer", lambda d: d["state"] == "back")
        assert back["session_id"] == session_id


async def test_reloaded_console_gets_its_clerk_state_and_pending_offer_back() -> None:
    """A clerk's fresh welcome carries its state and the open offer, deadline and callback
    number included, so a reloaded console can show the countdown where it was."""
    async with live_hall() as hall, clients(3) as (clerk, resident, reloaded):
        first = await _clerk(hall, clerk)
        assert first["clerk"]["state"] == "available" and first["offer"] is None
        await _resident(hall, resident)
        took = await resident.call("ticket.take", {"matter_id": MATTER,
                                                   "when_unstaffed": "callback",
                                                   "callback_contact": "13800000000"})
        assert took["ok"], took
        offer = await clerk.next("offer.new")
        assert offer["callback_contact"] == "13800000000"
        welcome = await _clerk(hall, reloaded)  # the console reloaded: a new connection
        assert welcome["clerk"]["state"] == "offered"
        assert welcome["offer"]["ticket_id"] == took["ticket"]["id"]
        assert welcome["offer"]["deadline"] == offer["deadline"]
        assert welcome["offer"]["callback_contact"] == "13800000000"


async def test_resident_gone_past_grace_abandons_the_ticket() -> None:
    """A waiting resident who does not come back loses the ticket, logged as an abandon."""
    env = {"HALL_ABANDON_GRACE_S": "0.3", "HALL_RESUME_GRACE_S": "0.3"}
    async with live_hall(env) as hall, clients(1) as (resident,):
        await _resident(hall, resident)
        took = await resident.call("ticket.take", {"matter_id": MATTER,
                                                   "when_unstaffed": "wait"})
        await resident.sio.eio.disconnect(abort=True)
        started = time.monotonic()
        ticket = await hall.app[keys.HALL].get_ticket(took["ticket"]["id"])
        while ticket.state != "abandoned" and time.monotonic() - started < 5:
            await asyncio.sleep(0.05)
            ticket = await hall.app[keys.HALL].get_ticket(took["ticket"]["id"])
        assert ticket.state == "abandoned"
        assert time.monotonic() - started < 1.5  # the grace is 0.3 s: the timer fired on time
        events = await hall.app[keys.STORE].outbox_peek(10_000)
        records = await hall.app[keys.RECORDS].events(ticket_id=ticket.id)
        kinds = [e.kind for e in events + records if e.ticket_id == ticket.id]
        assert EventKind.ABANDON in kinds


async def test_clerk_gone_past_grace_requeues_resident_at_front() -> None:
    """If the clerk never comes back, the session ends and the resident is first in line."""
    env = {"HALL_RESUME_GRACE_S": "0.3"}
    async with live_hall(env) as hall, clients(3) as (clerk, resident, later):
        session_id = await _in_session(hall, clerk, resident)
        await _resident(hall, later, "r9")
        await later.call("ticket.take", {"matter_id": MATTER, "when_unstaffed": "wait"})
        await clerk.sio.eio.disconnect(abort=True)
        assert (await resident.next("session.ended", within=5))["reason"] == "clerk_lost"
        update = await resident.next("ticket.update",
                                     lambda d: d["ticket"]["state"] == "waiting")
        assert update["ticket"]["priority"] == "requeued"
        position = await resident.call("ticket.position", {"ticket_id": session_id})
        assert position["position"]["position"] == 1


async def test_positions_are_pushed_and_you_are_next_is_distinct() -> None:
    """Waiting residents get position pushes that never go up, and one 'you are next'."""
    async with live_hall() as hall, clients(2) as (first, second):
        await _resident(hall, first, "p1")
        await _resident(hall, second, "p2")
        a = await first.call("ticket.take", {"matter_id": MATTER, "when_unstaffed": "wait"})
        b = await second.call("ticket.take", {"matter_id": MATTER, "when_unstaffed": "wait"})
        assert b["ticket"]["position"] == 2
        await first.next("ticket.next")
        await first.call("ticket.leave", {"ticket_id": a["ticket"]["id"]})
        await second.next("ticket.next", within=5)
        pushed = await second.next("ticket.position", lambda d: d["position"] == 1, within=5)
        assert pushed["ticket_id"] == b["ticket"]["id"] and pushed["staffed"] is False
        dup = await second.call("ticket.take", {"matter_id": MATTER, "when_unstaffed": "wait"})
        assert dup["error"]["code"] == "ticket_active"


async def test_failed_logins_are_throttled_per_address() -> None:
    """After ten bad tokens from one address the next attempt is refused as throttled."""
    async with live_hall() as hall, clients(1) as (c,):
        await c.connect(hall.url)
        codes = [(await c.call("hello", {"token": "bad"}))["error"]["code"]
                 for _ in range(11)]
        assert codes[:10] == ["unauthenticated"] * 10
        assert codes[10] == "too_many_attempts"


async def test_foreign_origin_is_refused() -> None:
    """The handshake from an origin not on the allow-list is refused."""
    async with live_hall() as hall:
        c = Client()
        token = await hall.clerk_token()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await c.connect(hall.url, {"token": token}, headers={"Origin": "http://evil.test"})
        await c.close()


async def test_turn_credentials_follow_coturn_rest_format() -> None:
    """session.started hands out TURN credentials in the use-auth-secret format."""
    env = {"HALL_TURN_URLS": "turn:turn.example:3478", "HALL_TURN_SECRET": "s3cr3t",
           "HALL_STUN_URLS": "stun:stun.example:3478"}
    async with live_hall(env) as hall, clients(2) as (clerk, resident):
        await _in_session(hall, clerk, resident)
        servers = resident.session["ice_servers"]  # type: ignore[attr-defined]
        assert {"urls": ["stun:stun.example:3478"]} in servers
        turn = next(s for s in servers if "username" in s)
        assert turn["urls"] == ["turn:turn.example:3478"]
        expiry, who = turn["username"].split(":", 1)
        assert who == "resident:r1" and int(expiry) > time.time()
        want = base64.b64encode(hmac.new(b"s3cr3t", turn["username"].encode(),
                                         hashlib.sha1).digest()).decode()
        assert turn["credential"] == want


async def test_supervisor_monitor_is_hidden_from_resident_and_logged() -> None:
    """A supervisor joins silently: the clerk is told, the resident is not, the log has it."""
    async with live_hall() as hall, clients(3) as (clerk, resident, sup):
        session_id = await _in_session(hall, clerk, resident)
        await sup.connect(hall.url, {"token": await hall.clerk_token("supervisor")})
        await sup.next("welcome")
        joined = await sup.call("monitor.join", {"session_id": session_id})
        assert joined["ok"] and joined["session"]["role"] == "monitor"
        note = await clerk.next("monitor.joined")
        assert note["supervisor"] == "supervisor:supervisor"
        await sup.call("rtc.signal", {"session_id": session_id, "to": "peer",
                                      "description": {"type": "answer", "sdp": SDP}})
        assert (await clerk.next("rtc.signal"))["from"] == "supervisor:supervisor"
        await asyncio.sleep(0.2)
        assert not any(n.startswith("monitor") for n in resident.names())
        assert not any(n == "rtc.signal" for n in resident.names())
        events = await hall.app[keys.STORE].outbox_peek(10_000)
        records = await hall.app[keys.RECORDS].events(ticket_id=session_id)
        assert EventKind.MONITOR_JOIN in [e.kind for e in events + records]


async def test_kiosk_takes_ticket_for_anonymous_resident() -> None:
    """A kiosk device takes a ticket bound to its service point."""
    async with live_hall() as hall, clients(2) as (clerk, kiosk):
        await _clerk(hall, clerk)
        await kiosk.connect(hall.url, {"token": await hall.kiosk_token("XH-001")})
        assert (await kiosk.next("welcome"))["role"] == "kiosk"
        took = await kiosk.call("ticket.take", {"matter_id": MATTER})
        assert took["ticket"]["channel"] == "kiosk"
        ticket = await hall.app[keys.HALL].get_ticket(took["ticket"]["id"])
        assert ticket.service_point_id == "XH-001"


async def test_decline_transfer_callback_and_breaks_over_the_protocol() -> None:
    """Decline passes the offer on; transfer keeps the resident; callbacks and breaks work."""
    async with live_hall() as hall, clients(4) as (c1, c2, resident, caller):
        await _clerk(hall, c1, "clerk01")
        await _clerk(hall, c2, "clerk02")
        await _resident(hall, resident)
        took = await resident.call("ticket.take", {"matter_id": MATTER})
        first = await c1.next("offer.new") if took["ticket"]["clerk_id"] == "clerk01" \
            else await c2.next("offer.new")
        holder, other = (c1, c2) if took["ticket"]["clerk_id"] == "clerk01" else (c2, c1)
        declined = await holder.call("offer.decline", {"ticket_id": first["ticket_id"]})
        assert declined["ok"]
        assert (await holder.next("offer.withdrawn"))["reason"] == "declined"
        second = await other.next("offer.new")
        assert second["ticket_id"] == first["ticket_id"]
        await other.call("offer.accept", {"ticket_id": second["ticket_id"]})
        await resident.next("session.started")
        brk = await holder.call("clerk.break", {"reason": "午休"})
        assert brk["clerk"]["state"] == "on_break"
        moved = await other.call("session.transfer", {"session_id": second["ticket_id"],
                                                      "to_matter": "unemployment_benefit",
                                                      "allow_wait": True, "note": "转失业金"})
        assert moved["ticket"]["state"] == "transferred"
        assert (await resident.next("session.ended"))["reason"] == "transfer"
        again = await holder.call("clerk.available", {})
        assert again["ok"]
        assert (await holder.next("offer.new"))["ticket_id"] == second["ticket_id"]
        extend = await other.call("wrapup.extend", {"seconds": 30})
        assert extend["ok"] and extend["clerk"]["state"] == "wrap_up"
        finished = await other.call("wrapup.finish", {})  # the transfer set its outcome
        assert finished["ok"] and finished["clerk"]["state"] in ("available", "offered")
        await caller.connect(hall.url, {"id_token": await hall.resident_id_token("cb")})
        await caller.next("welcome")
        waiting = await caller.call("ticket.take", {"matter_id": "elderly_care_subsidy",
                                                    "when_unstaffed": "wait"})
        callback = await caller.call("ticket.callback", {"ticket_id": waiting["ticket"]["id"],
                                                         "contact": "13800000000"})
        assert callback["ticket"]["callback"] is True


async def test_chat_reaches_the_peer_is_limited_and_replayed_after_resume() -> None:
    """Chat goes to the other side only, refuses empty or too long text, survives a drop."""
    async with live_hall() as hall, clients(3) as (clerk, resident, back):
        session_id = await _in_session(hall, clerk, resident)
        sent = await resident.call("chat.send", {"session_id": session_id,
                                                 "text": "  请问需要带户口本吗？ "})
        assert sent["ok"] and sent["message"]["text"] == "请问需要带户口本吗？"
        got = await clerk.next("chat.message")
        assert got["message"]["from_role"] == "resident" and got["session_id"] == session_id
        assert "chat.message" not in resident.names()
        for bad in ("", "   ", "字" * 1001):
            refused = await resident.call("chat.send", {"session_id": session_id, "text": bad})
            assert refused["error"]["code"] == "invalid_payload"
        resume_token = resident.welcome["resume_token"]  # type: ignore[attr-defined]
        last_seq = max(d["seq"] for _, d in resident.events if isinstance(d, dict) and "seq" in d)
        await resident.sio.eio.disconnect(abort=True)
        await clerk.next("session.peer", lambda d: d["state"] == "reconnecting")
        await clerk.call("chat.send", {"session_id": session_id, "text": "需要，请带原件"})
        await back.connect(hall.url, {"id_token": await hall.resident_id_token("r1"),
                                      "resume": resume_token, "last_seq": last_seq})
        welcome = await back.next("welcome")
        assert [m["text"] for m in welcome["session"]["chat"]] == ["请问需要带户口本吗？",
                                                                   "需要，请带原件"]
        replayed = await back.next("chat.message")
        assert replayed["message"]["text"] == "需要，请带原件"


async def test_resident_rates_own_session_once_after_it_ends() -> None:
    """Only the resident who held the ticket may rate it, after the session, once."""
    async with live_hall() as hall, clients(3) as (clerk, resident, other):
        session_id = await _in_session(hall, clerk, resident)
        early = await resident.call("session.rate", {"ticket_id": session_id, "score": 5})
        assert early["error"]["code"] == "invalid_state"
        await clerk.call("session.end", {"session_id": session_id})
        await clerk.call("wrapup.finish", {"outcome": "resolved"})
        await resident.next("ticket.update", lambda d: d["ticket"]["state"] == "done")
        await _resident(hall, other, "r2")
        stranger = await other.call("session.rate", {"ticket_id": session_id, "score": 1})
        assert stranger["error"]["code"] == "not_found"
        bad = await resident.call("session.rate", {"ticket_id": session_id, "score": 9})
        assert bad["error"]["code"] == "invalid_payload"
        rated = await resident.call("session.rate", {"ticket_id": session_id, "score": 5,
                                                     "comment": "一次办成，谢谢"})
        assert rated["ok"] and rated["ticket"]["rating"] == 5
        again = await resident.call("session.rate", {"ticket_id": session_id, "score": 4})
        assert again["error"]["code"] == "invalid_state"


async def test_prereview_through_the_protocol_ends_in_a_printable_correction_list() -> None:
    """The clerk marks the checklist; the resident sees it live, gets the result and a link
    to a printable correction list that only that link opens."""
    async with live_hall() as hall, clients(2) as (clerk, resident):
        session_id = await _in_session(hall, clerk, resident)
        ref = {"session_id": session_id}
        early = await clerk.call("prereview.mark", {**ref, "material_id": "id_card",
                                                    "mark": "acceptable"})
        assert early["error"]["code"] == "invalid_state"
        assert (await resident.call("prereview.start", ref))["error"]["code"] == "forbidden"
        started = await clerk.call("prereview.start", ref)
        assert [i["material_id"] for i in started["prereview"]["items"]][:2] == [
            "id_card", "flexible_employment_form"]
        await resident.next("prereview.update")
        for material in ("id_card", "social_security_card"):
            await clerk.call("prereview.mark", {**ref, "material_id": material,
                                                "mark": "acceptable"})
        no_note = await clerk.call("prereview.mark", {**ref, "material_id":
                                                      "flexible_employment_form",
                                                      "mark": "needs_correction"})
        assert no_note["error"]["code"] == "invalid_input"
        assert (await clerk.call("prereview.finish", ref))["error"]["code"] == "invalid_state"
        await clerk.call("prereview.mark", {**ref, "material_id": "flexible_employment_form",
                                            "mark": "needs_correction",
                                            "note": "缺少单位盖章<script>"})
        finished = await clerk.call("prereview.finish", ref)
        assert finished["result"] == "passed_with_corrections"
        result = await resident.next("prereview.result")
        assert result["corrections"][0]["action"] == "fix"
        assert "灵活就业登记表" in result["corrections"][0]["text"]
        async with aiohttp.ClientSession() as http:
            async with http.get(hall.url + result["url"]) as page:
                assert page.status == 200
                assert page.headers["Cache-Control"].startswith("private")
                html = await page.text()
            assert "灵活就业登记表" in html and "需补正" in html
            assert "<svg" in html and 'class="segno"' in html  # the QR code to open it again
            assert "<script>" not in html
            async with http.get(hall.url + "/corrections/not-a-real-token-123") as missing:
                assert missing.status == 404
