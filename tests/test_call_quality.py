"""The call funnel and call quality (``call.report``, docs/protocol.md): real sockets, real
aiortc peers, the real kiosk agent, and one real Chromium page.

A kiosk (kiosk/, aiortc) and an aiortc clerk meet through the hall; the kiosk agent reports
its stages and stats by itself, the clerk's test client reports its own from its aiortc
connection's ``getStats()``. Bad reports are refused and change nothing; when the session
ends, exactly one ``call_quality`` event reaches the records database, and ``/metrics`` shows
the funnel moved. Embedded and Redis mode (the summary lives in the shared hub state).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser

from kiosk.call_quality import summarize
from rooms.events import EventKind, HallEvent
from server import keys
from signaling import protocol as p
from signaling.hub_state import HubState, MemoryHubState
from signaling.redis_hub_state import RedisHubState
from tests.redisproc import RedisServer, drop_prefix, new_prefix
from tests.rtcpeer import HallClient
from tests.signalkit import LiveHall, hall_backend, live_hall
from tests.test_kiosk_agent import (
    kiosk_config,
    media_flows,
    running,
    start_session,
)

TIMEOUT = 15.0


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {TIMEOUT} s")
        await asyncio.sleep(0.05)


async def quality(hall: LiveHall, session_id: str) -> dict[str, dict[str, Any]]:
    return await hall.app[keys.HUB].state.quality_get(session_id)


async def logged(hall: LiveHall, ticket_id: str) -> list[HallEvent]:
    """The ticket's events in the records database (what the writer has moved so far)."""
    return await hall.app[keys.RECORDS].events(ticket_id=ticket_id, limit=10_000)


async def stage_count(hall: LiveHall, stage: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(hall.url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    found = re.search(rf'^hall_call_stage_seconds_count\{{stage="{stage}"\}} (\S+)$', text,
                      re.MULTILINE)
    assert found, text[:2000]
    return float(found.group(1))


async def refused(client: HallClient, payload: dict[str, Any], code: str) -> None:
    ack = await client.call("call.report", payload)
    assert ack["ok"] is False and ack["error"]["code"] == code, (payload, ack)


@pytest.mark.usefixtures(hall_backend.__name__)
async def test_a_kiosk_call_is_reported_and_logged_once() -> None:
    async with live_hall() as hall, running(kiosk_config(hall)) as agent:
        before = await stage_count(hall, "first_frame")
        clerk, peer = await start_session(hall, agent)
        sid = str(peer.session_id)
        await media_flows(agent, peer)

        # The kiosk agent reports its funnel and a first stats summary by itself.
        async def kiosk_reported() -> bool:
            side = (await quality(hall, sid)).get("resident", {})
            return "first_frame" in side.get("stages", {}) and side.get("samples", 0) >= 1

        await until(kiosk_reported, "kiosk call.report with first_frame and stats")
        kiosk_side = (await quality(hall, sid))["resident"]
        assert kiosk_side["role"] == "kiosk" and kiosk_side["failure"] is None
        stages = kiosk_side["stages"]
        assert stages["signaling"] <= stages["ice_connected"] <= stages["first_frame"] < 15_000
        assert kiosk_side["candidate_type"] in ("host", "srflx", "prflx", "relay")
        assert kiosk_side["frames_decoded"] > 0

        # The clerk reports from its own aiortc connection.
        for at_ms, stage in ((120, "signaling"), (480, "ice_connected"), (700, "first_frame")):
            await clerk.ok("call.report", {"session_id": sid, "stage": stage, "at_ms": at_ms})
        stats, _ = summarize(dict(await peer.pc.getStats()), None, time.monotonic())
        stats.update(candidate_type="host", freezes=1, frames_decoded=peer.frames_received,
                     rtt_ms=40.0, bitrate_kbps=800.0)
        await clerk.ok("call.report", {"session_id": sid, "stats": stats})
        await clerk.ok("call.report", {"session_id": sid,
                                       "stats": {"rtt_ms": 60, "bitrate_kbps": 400.5}})
        good = await quality(hall, sid)

        # Bad reports: refused with a stable code, and nothing changes.
        bad: list[dict[str, Any]] = [
            {"session_id": sid, "stage": "ringing"},
            {"session_id": sid, "stage": "first_frame", "at_ms": -1},
            {"session_id": sid, "stage": "first_frame", "at_ms": p.MAX_CALL_AT_MS + 1},
            {"session_id": sid, "stage": "first_frame", "at_ms": 1.5},
            {"session_id": sid, "stage": "failed"},
            {"session_id": sid, "stage": "signaling", "failure": "ice_failed"},
            {"session_id": sid, "stage": "failed", "failure": "gremlins"},
            {"session_id": sid},
            {"session_id": sid, "stats": {"rtt_ms": 60_001}},
            {"session_id": sid, "stats": {"loss_ratio": 1.5}},
            {"session_id": sid, "stats": {"jitter_ms": -0.1}},
            {"session_id": sid, "stats": {"bitrate_kbps": "800"}},
            {"session_id": sid, "stats": {"freezes": True}},
            {"session_id": sid, "stats": {"candidate_type": "tcp"}},
            {"session_id": sid, "stats": {"rtt_ms": 1, "mos": 4.2}},
            {"session_id": sid, "stats": {"rtt_ms": math.nan}},  # not even JSON
            {"session_id": sid, "stats": {"rtt_ms": math.inf}},
        ]
        for payload in bad:
            await refused(clerk, payload, "invalid_payload")
        with pytest.raises(p.ProtocolError):  # past JSON too: the schema refuses NaN itself
            p.parse(p.CallReport, {"session_id": sid, "stats": {"jitter_ms": math.nan}})
        intruder = HallClient("intruder")
        try:
            await intruder.connect(hall.url, {"id_token": await hall.resident_id_token("r-x")})
            await refused(intruder, {"session_id": sid, "stage": "failed",
                                     "failure": "ice_failed"}, "not_found")
            await refused(intruder, {"session_id": "T-none", "stage": "signaling"}, "not_found")
        finally:
            await intruder.close()
        supervisor = HallClient("supervisor")
        try:
            await supervisor.connect(hall.url, {"token": await hall.clerk_token("supervisor")})
            await refused(supervisor, {"session_id": sid, "stage": "signaling"}, "forbidden")
        finally:
            await supervisor.close()
        assert await quality(hall, sid) == good

        assert await stage_count(hall, "first_frame") == before + 1  # one per call
        await clerk.ok("session.end", {"session_id": sid})
        await clerk.wait_for("session.ended", timeout=TIMEOUT)
        # Just ended: a report is refused, and no summary is left behind.
        await refused(clerk, {"session_id": sid, "stats": {"rtt_ms": 10}}, "invalid_state")

        async def summary_gone() -> bool:  # logged, then dropped by the process that closed it
            return await quality(hall, sid) == {}

        await until(summary_gone, "the summary dropped after the session ended")
        await clerk.ok("wrapup.finish", {"outcome": "resolved"})

        async def done_logged() -> bool:
            return EventKind.DONE in [e.kind for e in await logged(hall, sid)]

        await until(done_logged, "the ticket's done event in the records database")
        rows = [e for e in await logged(hall, sid) if e.kind == EventKind.CALL_QUALITY]
        assert len(rows) == 1, rows
        row = rows[0]
        assert row.clerk_id == "clerk01" and row.service_point_id == "XH-001"
        assert row.data["outcome"] == "connected"
        resident, clerk_row = row.data["resident"], row.data["clerk"]
        assert resident["role"] == "kiosk" and resident["failure"] is None
        assert set(resident["stages"]) == {"signaling", "ice_connected", "first_frame"}
        assert clerk_row["stages"] == {"signaling": 120, "ice_connected": 480,
                                       "first_frame": 700}
        assert clerk_row["samples"] == 2 and clerk_row["candidate_type"] == "host"
        assert clerk_row["rtt_ms"] == {"mean": 50.0, "max": 60.0}
        assert clerk_row["bitrate_kbps"] == {"mean": 600.25, "min": 400.5}
        assert clerk_row["freezes"] == 1
        await clerk.close()


async def test_a_failed_call_is_told_from_one_left_early() -> None:
    """A technical failure is logged with its code and the stage it stopped before; a call
    left before it was up has missing stages and no failure."""
    async with live_hall() as hall, running(kiosk_config(hall)) as agent:
        clerk, peer = await start_session(hall, agent)
        sid = str(peer.session_id)
        await clerk.ok("call.report", {"session_id": sid, "stage": "signaling"})
        await clerk.ok("call.report", {"session_id": sid, "stage": "failed",
                                       "failure": "ice_failed", "at_ms": 30_000})
        # A second failure of the same side keeps the first.
        await clerk.ok("call.report", {"session_id": sid, "stage": "failed",
                                       "failure": "timeout", "at_ms": 31_000})
        side = (await quality(hall, sid))["clerk"]
        assert side["stages"]["signaling"] >= 0  # no at_ms: the hall's clock since the accept
        assert side["failure"] == {"code": "ice_failed", "before": "ice_connected",
                                   "at_ms": 30_000}
        await clerk.ok("session.end", {"session_id": sid})

        async def row_logged() -> bool:
            return any(e.kind == EventKind.CALL_QUALITY for e in await logged(hall, sid))

        await until(row_logged, "the call_quality event")
        row = next(e for e in await logged(hall, sid) if e.kind == EventKind.CALL_QUALITY)
        assert row.data["outcome"] == "failed"
        assert row.data["clerk"]["failure"]["code"] == "ice_failed"
        await clerk.close()

    from signaling.call_quality import apply, empty, event_data
    left, _, _ = apply(empty("resident"), stage="signaling", at_ms=300, failure=None,
                       stats=None)
    assert event_data({"resident": left})["outcome"] == "incomplete"
    assert event_data({"resident": left})["clerk"] is None


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_the_summary_lives_only_with_its_session(kind: str,
                                                       request: pytest.FixtureRequest) -> None:
    """Both hub states: a side's summary is stored while the session is live, refused once
    it is closed (a late report leaves nothing behind), and dropped."""
    state: HubState
    prefix = new_prefix()
    if kind == "memory":
        state = MemoryHubState(("XH-001",))
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        state = RedisHubState(server.url, ("XH-001",), prefix=prefix)
    await state.open()
    try:
        assert await state.quality_put("T1", "clerk", {"reports": 1}) is False  # not live
        await state.session_open("T1", "resident:r1", "clerk:c1")
        assert await state.quality_put("T1", "clerk", {"reports": 1}) is True
        assert await state.quality_put("T1", "resident", {"reports": 2}) is True
        assert await state.quality_get("T1") == {"clerk": {"reports": 1},
                                                 "resident": {"reports": 2}}
        if kind == "redis":  # another process of the same hall sees the same summaries
            other = RedisHubState(server.url, ("XH-001",), prefix=prefix, process_id="p2")
            await other.open()
            try:
                assert await other.quality_get("T1") == await state.quality_get("T1")
            finally:
                await other.close()
        await state.session_close("T1")
        assert await state.quality_put("T1", "clerk", {"reports": 9}) is False
        assert (await state.quality_get("T1"))["clerk"] == {"reports": 1}
        await state.quality_drop("T1")
        assert await state.quality_get("T1") == {}
    finally:
        await state.close()
        if kind == "redis":
            drop_prefix(server.url, prefix)


# -- one real Chromium page ----------------------------------------------------------------------


@pytest.mark.browser
async def test_the_page_reports_first_frame_and_stats(browser: Browser) -> None:
    """hall-client.js (the resident's page, in Chromium with fake media) reports its funnel
    up to first_frame and a getStats summary; the hall keeps them and logs them once."""
    from tests.test_browser_rtc import live_session, media_both_ways

    async with live_hall() as hall, live_session(hall, browser) as live:
        await media_both_ways(live, "quality")

        async def page_reported() -> bool:
            side = (await quality(hall, live.session_id)).get("resident", {})
            return "first_frame" in side.get("stages", {}) and side.get("samples", 0) >= 1

        try:
            await until(page_reported, "the page's call.report with first_frame and stats")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await live.diagnostics()}") from exc
        side = (await quality(hall, live.session_id))["resident"]
        assert side["role"] == "resident" and side["failure"] is None
        stages = side["stages"]
        assert stages["signaling"] <= stages["ice_connected"] <= stages["first_frame"] < 15_000
        assert side["candidate_type"] in ("host", "srflx", "prflx", "relay")
        assert side["frames_decoded"] > 0
        assert side["rtt_ms"]["n"] >= 1 and side["loss_ratio"]["max"] <= 1
        await live.clerk.client.ok("session.end", {"session_id": live.session_id})

        async def row_logged() -> bool:
            return any(e.kind == EventKind.CALL_QUALITY
                       for e in await logged(hall, live.session_id))

        await until(row_logged, "the call_quality event")
        row = next(e for e in await logged(hall, live.session_id)
                   if e.kind == EventKind.CALL_QUALITY)
        assert set(row.data["resident"]["stages"]) == {"signaling", "ice_connected",
                                                       "first_frame"}
        assert row.data["clerk"] is None and row.data["outcome"] == "connected"
