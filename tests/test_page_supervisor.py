"""The supervisor wallboard (/supervisor) in real Chromium against a real demo hall.

The other participants are real too: residents, clerks and kiosks as python-socketio clients
(tests/signalkit.py), and for silent monitoring a browser clerk and a browser resident, each a
``HallClient`` (web/static/js/hall-client.js) in its own browser context, because the clerk's
side of monitoring (offering the supervisor a receive-only leg) lives in hall-client.js.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from server import keys
from signaling.hub_state import embedded
from tests.browserkit import (
    DESKTOP,
    Watched,
    open_page,
    open_rtc_test_page,
    run_axe,
    serious,
    wait_until,
)
from tests.signalkit import PASSWORD, Client, LiveHall, live_hall, matter_of

pytestmark = pytest.mark.browser

WALL = {"width": 1920, "height": 1080}
CLERK = "clerk01"  # serves the hrss department in the demo catalog
DEPT = "hrss"
WAIT_ALERT_S = 4  # HALL_WAIT_ALERT_S: a queue's head waiting this long raises an alert


def hall_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # A records database in a file: on live_hall's default ":memory:" SQLite all sessions
    # share one connection, and the wall's per-second case count then collides with case.file
    # ("cannot start a transaction within a transaction").
    return {"HALL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'hall.db'}",
            "HALL_WAIT_ALERT_S": str(WAIT_ALERT_S), **extra}


@pytest.fixture
async def hall(tmp_path: Path) -> AsyncIterator[LiveHall]:
    async with live_hall(hall_env(tmp_path)) as running:
        yield running


# -- helpers ---------------------------------------------------------------------------------


async def login(page: Page, username: str, password: str = PASSWORD) -> None:
    await page.fill("#login-username", username)
    await page.fill("#login-password", password)
    await page.click("#login-submit")


async def wall_stats(page: Page) -> dict[str, int]:
    stats: dict[str, int] = await page.evaluate("window.wallStats()")
    return stats


async def open_board(browser: Browser, hall: LiveHall, *, lang: str = "zh",
                     viewport: dict[str, int] | None = None) -> Watched:
    """The board, logged in as the demo supervisor, after its first wall."""
    watched = await open_page(browser, f"{hall.url}/supervisor?lang={lang}",
                              viewport=viewport or DESKTOP)
    await login(watched.page, "supervisor")
    await watched.page.wait_for_selector("#wall", state="visible")
    page = watched.page

    async def first_wall() -> bool:
        return (await wall_stats(page))["updates"] >= 1

    await wait_until(first_wall, what="the first wall on the board")
    return watched


def text_is(page: Page, selector: str, expected: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await page.text_content(selector) or "").strip() == expected
    return check


def attr_is(page: Page, selector: str, name: str, expected: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        element = await page.query_selector(selector)
        return element is not None and await element.get_attribute(name) == expected
    return check


def visible(page: Page, selector: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await page.is_visible(selector)
    return check


async def animation(page: Page, selector: str) -> str:
    name: str = await page.eval_on_selector(selector, "e => getComputedStyle(e).animationName")
    return name


async def _hidden(page: Page, selector: str) -> bool:
    return await page.is_hidden(selector)


async def assert_accessible(page: Page, where: str) -> None:
    problems = serious(await run_axe(page))
    assert not problems, f"axe ({where}):\n" + "\n".join(problems)


async def resident(hall: LiveHall, resident_id: str) -> Client:
    client = Client()
    await client.connect(hall.url, {"id_token": await hall.resident_id_token(resident_id)})
    await client.next("welcome")
    return client


async def staff(hall: LiveHall, username: str) -> Client:
    client = Client()
    await client.connect(hall.url, {"token": await hall.clerk_token(username)})
    await client.next("welcome")
    return client


# -- log-in and the board --------------------------------------------------------------------


async def test_login_refuses_wrong_password_and_clerks_then_shows_the_board(
        hall: LiveHall, browser: Browser) -> None:
    """Wrong password and a clerk account are refused (the clerk is not put on duty); the
    supervisor gets the board with the 10 departments from the wall, kept across a reload."""
    watched = await open_page(browser, f"{hall.url}/supervisor")
    page = watched.page
    await page.wait_for_selector("#login-panel", state="visible")
    assert await page.is_hidden("#wall")
    await assert_accessible(page, "log-in")

    await login(page, "supervisor", "not-the-password")
    await wait_until(text_is(page, "#login-error", "用户名或密码错误"), what="wrong password")

    await login(page, CLERK)
    await wait_until(text_is(page, "#login-error",
                             "这不是值班长账号：此页面只供值班长使用，请换用值班长账号登录"),
                     what="the clerk refused")
    assert await page.is_hidden("#wall")
    hub = hall.app[keys.HUB]
    assert embedded(hub).peek(f"clerk:{CLERK}") is None, "a clerk connected from the board"
    assert await page.evaluate("sessionStorage.length") == 0

    await login(page, "supervisor")
    await page.wait_for_selector("#wall", state="visible")

    async def first_wall() -> bool:
        return (await wall_stats(page))["updates"] >= 1

    await wait_until(first_wall, what="the first wall")
    assert await page.locator("#dept-table tbody.sv-dept-group").count() == 10
    names = await page.locator("[data-testid=dept-row] .sv-dept-name").all_text_contents()
    catalog = hall.app[keys.CATALOG]
    assert names == [d.name for d in catalog.departments.values()]
    assert await page.locator("[data-testid=kiosk-cell]").count() == 100
    # Never-seen kiosks are neutral, not offline.
    assert await page.locator("[data-testid=kiosk-cell][data-state=never]").count() == 100
    assert "陈建国" in (await page.text_content("#whoami") or "")
    # The token is in sessionStorage only, never in the address.
    stored = json.loads(await page.evaluate("sessionStorage.getItem('hall.supervisor.auth')"))
    assert stored["role"] == "supervisor" and stored["token"] not in page.url
    await assert_accessible(page, "board")

    # A dropped connection is visible, and the board resumes.
    await page.evaluate("window.hallClient.dropForTest()")
    await page.wait_for_selector("#board-stale", state="visible")
    await page.evaluate("window.hallClient.reconnect()")
    await page.wait_for_selector("#board-stale", state="hidden")
    assert await page.get_attribute("#conn-status", "data-state") == "online"

    # Expanding a department shows its matters.
    hrss = page.locator(f"tbody[data-dept-id={DEPT}]")
    await hrss.locator("button[data-dept-toggle]").click()
    matters = [m for m in catalog.matters.values() if m.department_id == DEPT]
    assert await hrss.locator("tr.sv-matter-row:visible").count() == len(matters)
    assert await hrss.locator("button[data-dept-toggle]").get_attribute("aria-expanded") == "true"

    await page.reload()
    await page.wait_for_selector("#wall", state="visible")
    await wait_until(first_wall, what="the wall after a reload")
    assert await page.is_hidden("#login-panel")

    await page.click("#logout")
    await page.wait_for_selector("#login-panel", state="visible")
    assert await page.evaluate("sessionStorage.getItem('hall.supervisor.auth')") is None
    watched.assert_no_errors()
    await watched.context.close()


async def test_token_is_renewed_before_it_expires(tmp_path: Path, browser: Browser) -> None:
    """The board renews its token with auth.refresh before it expires, so a reload after the
    first token's expiry still opens the board without logging in again."""
    ttl = 8.0
    async with live_hall(hall_env(tmp_path, HALL_TOKEN_TTL_S=str(ttl))) as hall:
        watched = await open_board(browser, hall)
        page = watched.page

        async def stored() -> dict[str, Any]:
            auth: dict[str, Any] = json.loads(
                await page.evaluate("sessionStorage.getItem('hall.supervisor.auth')"))
            return auth

        first = await stored()

        async def renewed() -> bool:
            auth = await stored()
            return bool(auth["token"] != first["token"]
                        and auth["expires_at"] > first["expires_at"])

        await wait_until(renewed, timeout_s=ttl, what="the token renewed before it expired")

        async def first_expired() -> bool:
            now = float(await page.evaluate("Date.now() / 1000"))
            return now > float(first["expires_at"]) + 0.5

        await wait_until(first_expired, what="the first token's expiry")
        await page.reload()
        await page.wait_for_selector("#wall", state="visible")

        async def welcomed() -> bool:
            return bool(await page.evaluate("!!(window.hallClient && window.hallClient.connected"
                                            " && window.hallClient.welcome)"))

        await wait_until(welcomed, what="a fresh connection with the renewed token")
        assert await page.is_hidden("#login-panel")
        watched.assert_no_errors()
        await watched.context.close()


async def test_queue_and_session_appear_live_in_english(hall: LiveHall, browser: Browser) -> None:
    """A resident's ticket raises its department's and matter's waiting count without a
    reload; a clerk accepting it shows the session in progress and counts it answered (en)."""
    watched = await open_board(browser, hall, lang="en", viewport=WALL)
    page = watched.page
    assert (await page.text_content("#departments-heading") or "").strip() == (
        "Queues by department")
    catalog = hall.app[keys.CATALOG]
    names = await page.locator("[data-testid=dept-row] .sv-dept-name").all_text_contents()
    assert names == [d.name_en for d in catalog.departments.values()]
    matter_id = matter_of(hall, CLERK)
    dept_row = f"tr[data-dept-id={DEPT}]"
    matter_row = f"tr[data-matter-id={matter_id}]"
    await page.locator(f"{dept_row} button[data-dept-toggle]").click()
    assert (await page.text_content("#tile-answered") or "").strip() == "0"

    someone = await resident(hall, "r-wall-1")
    clerk: Client | None = None
    try:
        taken = await someone.call("ticket.take", {"matter_id": matter_id,
                                                   "when_unstaffed": "wait"})
        assert taken["ok"], taken
        ticket = taken["ticket"]
        await wait_until(text_is(page, f"{dept_row} [data-testid=dept-waiting]", "1"),
                         what="the department's waiting count")
        await wait_until(text_is(page, f"{matter_row} [data-testid=matter-waiting]", "1"),
                         what="the matter's waiting count")
        await wait_until(text_is(page, "#tile-waiting", "1"), what="the waiting tile")

        # The oldest wait ticks on the page between pushes...
        wait_text = f"{dept_row} .sv-wait-text"
        readings: list[tuple[int, str]] = []

        async def ticks_without_push() -> bool:
            readings.append(((await wall_stats(page))["updates"],
                             await page.text_content(wait_text) or ""))
            return any(u == readings[-1][0] and t != readings[-1][1] for u, t in readings[:-1])

        await wait_until(ticks_without_push, what="the oldest wait ticking between pushes")
        # ...and past HALL_WAIT_ALERT_S it is marked in colour and in words, with an alert.
        await wait_until(visible(page, f"{dept_row} .sv-over-badge"), what="the over-limit mark")
        assert (await page.text_content(f"{dept_row} .sv-over-badge") or "").strip() == (
            "Over limit")
        alert = f"[data-testid=alert-item][data-key='oldest_wait:{matter_id}']"
        await page.wait_for_selector(alert)
        assert await page.get_attribute(alert, "data-active") == "true"

        clerk = await staff(hall, CLERK)
        offer = await clerk.next("offer.new", lambda p: p["ticket_id"] == ticket["id"])
        accepted = await clerk.call("offer.accept", {"ticket_id": offer["ticket_id"]})
        assert accepted["ok"], accepted
        row = f"tr[data-session-id='{ticket['id']}']"
        await page.wait_for_selector(row)
        assert (await page.text_content(f"{row} th") or "").strip() == ticket["number"]
        assert "王芳" in (await page.text_content(row) or "")
        await wait_until(text_is(page, "#tile-answered", "1"), what="answered today")
        await wait_until(text_is(page, f"{dept_row} [data-testid=dept-waiting]", "0"),
                         what="the queue to empty")
        await wait_until(text_is(page, "#tile-clerks-in-session", "1"), what="clerk in session")
        await wait_until(attr_is(page, alert, "data-active", "false"), what="the alert cleared")
        await wait_until(lambda: _hidden(page, f"{dept_row} .sv-over-badge"),
                         what="the over-limit mark gone")
        await assert_accessible(page, "board, English, with a session")
    finally:
        await someone.close()
        if clerk is not None:
            await clerk.close()
    watched.assert_no_errors()
    await watched.context.close()


# -- silent monitoring -----------------------------------------------------------------------


CLERK_PAGE_SETUP = """async (token) => {
  const { HallClient } = await import('/static/js/hall-client.js');
  const client = new HallClient({ credentials: { token } });
  window.clerk = client;
  window.offers = [];
  client.on('offer.new', (offer) => window.offers.push(offer));
  const welcome = await client.connect();
  return welcome.participant;
}"""


async def event_names(page: Page, client: str) -> list[str]:
    names: list[str] = await page.evaluate(
        f"window.{client}.counters.events.map(([name]) => name)")
    return names


async def test_monitor_joins_silently_and_leaves(hall: LiveHall, browser: Browser) -> None:
    """Monitor shows the resident's and the clerk's video (frames decoded); the clerk is told,
    the resident never; Leave sends monitor.leave; the panel closes when the session ends."""
    board = await open_board(browser, hall)
    page = board.page
    clerk_ctx = await browser.new_context(permissions=["camera", "microphone"])
    resident_ctx = await browser.new_context(permissions=["camera", "microphone"])
    try:
        clerk_page = await clerk_ctx.new_page()
        await open_rtc_test_page(clerk_page, hall.url)
        participant = await clerk_page.evaluate(CLERK_PAGE_SETUP, await hall.clerk_token(CLERK))
        assert participant == f"clerk:{CLERK}"

        resident_page = await resident_ctx.new_page()
        id_token = await hall.resident_id_token("r-monitored", "李四")
        await open_rtc_test_page(resident_page, hall.url, f"#id_token={id_token}")
        await resident_page.evaluate("window.hallReady")
        taken = await resident_page.evaluate(
            "m => window.hallRtc.call('ticket.take', {matter_id: m, when_unstaffed: 'wait'})",
            matter_of(hall, CLERK))
        assert taken["ok"], taken
        ticket_id = taken["ticket"]["id"]

        async def offered() -> bool:
            return bool(await clerk_page.evaluate("window.offers.length"))

        await wait_until(offered, what="the offer at the clerk")
        accepted = await clerk_page.evaluate(
            "id => window.clerk.call('offer.accept', {ticket_id: id})", ticket_id)
        assert accepted["ok"], accepted

        async def media_flows() -> bool:
            resident_stats = await resident_page.evaluate("window.hallRtc.stats()")
            clerk_stats = await clerk_page.evaluate("window.clerk.stats()")
            return bool(resident_stats["framesDecoded"] > 0 and clerk_stats["framesDecoded"] > 0)

        await wait_until(media_flows, what="media between the clerk and the resident")

        button = f"#monitor-{ticket_id}"
        await page.wait_for_selector(button)
        await page.click(button)
        await page.wait_for_selector("#monitor-panel", state="visible")
        note = await page.text_content("#monitor-note") or ""
        assert "居民不会收到任何提示" in note

        async def monitor_frames() -> bool:
            stats = await page.evaluate("window.hallClient.stats()")
            return bool(stats["monitorFramesDecoded"] > 0)

        await wait_until(monitor_frames, what="frames decoded in the monitor panel")

        async def both_videos_play() -> bool:
            sizes: list[int] = await page.evaluate(
                "['resident', 'clerk'].map(r => document.getElementById("
                "`monitor-video-${r}`).videoWidth)")
            return all(size > 0 for size in sizes)

        await wait_until(both_videos_play, what="the resident's and the clerk's video")
        live = await hall.app[keys.HUB].state.session_find(ticket_id)
        assert live is not None and live.monitors == {"supervisor:supervisor"}, live
        assert "monitor.joined" in await event_names(clerk_page, "clerk")
        await assert_accessible(page, "monitor panel open")
        # The monitors count on the board follows the hub.
        await wait_until(text_is(page, f"tr[data-session-id='{ticket_id}'] "
                                       "[data-testid=session-monitors]", "1"),
                         what="the monitors count")

        await page.click("#monitor-leave")
        await page.wait_for_selector("#monitor-panel", state="hidden")

        async def clerk_told_left() -> bool:
            return "monitor.left" in await event_names(clerk_page, "clerk")

        await wait_until(clerk_told_left, what="monitor.left at the clerk")
        assert live.monitors == set()

        # Again, and this time the session ends under the supervisor: the panel closes itself.
        await page.click(button)
        await page.wait_for_selector("#monitor-panel", state="visible")
        await wait_until(lambda: _monitors(hall, ticket_id, 1), what="the second join")
        ended = await clerk_page.evaluate(
            "id => window.clerk.call('session.end', {session_id: id})", ticket_id)
        assert ended["ok"], ended
        await page.wait_for_selector("#monitor-panel", state="hidden")
        await page.wait_for_selector(button, state="detached")

        resident_events = await event_names(resident_page, "hallRtc")
        assert "session.ended" in resident_events
        assert not [e for e in resident_events if e.startswith("monitor")], resident_events
    finally:
        await clerk_ctx.close()
        await resident_ctx.close()
    board.assert_no_errors()
    await board.context.close()


async def _monitors(hall: LiveHall, session_id: str, n: int) -> bool:
    live = await hall.app[keys.HUB].state.session_find(session_id)
    return live is not None and len(live.monitors) == n


# -- kiosks ----------------------------------------------------------------------------------


async def test_kiosk_health_failure_and_offline_raise_alerts(hall: LiveHall,
                                                             browser: Browser) -> None:
    """A kiosk reporting a failed camera shows online with the failure and a (flashing, spoken)
    alert; the problems and street filters work; when it disconnects it shows offline with an
    offline alert, which does not flash for a viewer who prefers reduced motion."""
    board = await open_board(browser, hall)
    page = board.page
    cell = "[data-kiosk-id='XH-001']"
    kiosk = Client()
    await kiosk.connect(hall.url, {"token": await hall.kiosk_token("XH-001")})
    await kiosk.next("welcome")
    try:
        await wait_until(attr_is(page, cell, "data-state", "online"), what="the kiosk online")
        reply = await kiosk.call("kiosk.health", {"camera": "failed", "microphone": "ok",
                                                  "speaker": "ok", "document_camera": "absent"})
        assert reply["ok"], reply
        await wait_until(attr_is(page, f"{cell} [data-device=camera]", "data-health", "failed"),
                         what="the camera failure on the kiosk")
        assert await page.get_attribute(f"{cell} [data-device=document_camera]",
                                        "data-health") == "absent"
        assert "摄像头：故障" in (await page.text_content(cell) or "")
        health_alert = "[data-testid=alert-item][data-key='kiosk_health:XH-001']"
        await page.wait_for_selector(health_alert)
        # A new alert flashes (an animation), briefly: the class goes after a few seconds.
        assert await animation(page, health_alert) == "sv-flash"
        assert await page.get_attribute(health_alert, "data-active") == "true"
        assert "摄像头" in (await page.text_content(health_alert) or "")

        async def announced() -> bool:
            said = await page.text_content("#alert-announcer") or ""
            return "XH-001" in said
        await wait_until(announced, what="the alert announced")

        await page.check("#kiosk-problems")
        assert await page.locator("[data-testid=kiosk-cell]:visible").count() == 1
        await page.uncheck("#kiosk-problems")
        await page.select_option("#kiosk-street", "tianping")
        street_points = [p for p in hall.app[keys.CATALOG].service_points.values()
                         if p.street_id == "tianping"]
        assert await page.locator("[data-testid=kiosk-cell]:visible").count() == len(
            street_points)
        await page.select_option("#kiosk-street", "")
        # From now on the viewer prefers reduced motion: new alerts are marked without moving.
        await page.emulate_media(reduced_motion="reduce")
    finally:
        await kiosk.close()
    # Offline the moment its connection is gone (no resume grace for presence).
    await wait_until(attr_is(page, cell, "data-state", "offline"), what="the kiosk offline")
    offline_alert = "[data-testid=alert-item][data-key='kiosk_offline:XH-001']"
    await page.wait_for_selector(offline_alert)
    assert await page.get_attribute(offline_alert, "class") == "sv-alert sv-flash"
    assert await animation(page, offline_alert) == "none"
    # The device alert is over (the offline one says it all); the row stays, marked cleared.
    await wait_until(attr_is(page, health_alert, "data-active", "false"),
                     what="the device alert cleared")
    # Newest first.
    first = await page.get_attribute("#alert-list > li:first-child", "data-key")
    assert first == "kiosk_offline:XH-001"
    await assert_accessible(page, "alerts and kiosks")
    board.assert_no_errors()
    await board.context.close()


# -- 办不成事 cases ----------------------------------------------------------------------------


async def test_case_is_listed_and_assigned_started_resolved_from_the_board(
        hall: LiveHall, browser: Browser) -> None:
    """A resident's 办不成事 report appears in the list; its escalation raises an alert and marks
    it overdue; the supervisor assigns, starts and resolves it from the board (a note is
    required); the hall's case state follows."""
    board = await open_board(browser, hall)
    page = board.page
    someone = await resident(hall, "r-case-1")
    # Another supervisor account: a second "supervisor" connection would replace the board's.
    supervisor = await staff(hall, "supervisor_hrss")
    try:
        filed = await someone.call("case.file", {
            "matter_id": matter_of(hall, CLERK),
            "description": "材料要求前后不一致，跑了两次没办成"})
        assert filed["ok"], filed
        case = filed["case"]
        await page.click("#cases-refresh")
        item = f"li[data-case-id='{case['id']}']"
        await page.wait_for_selector(item)
        assert case["number"] in (await page.text_content(item) or "")
        assert await page.get_attribute(item, "data-state") == "open"
        assert await page.is_hidden(f"{item} .sv-case-overdue")

        # Its deadline passes: the hall's sweep escalates it, the board raises an alert and
        # lists it as overdue (first).
        assert await hall.app[keys.HUB].sweep_cases(now=float(case["deadline"]) + 1) == 1
        alert = "[data-testid=alert-item][data-kind=case_escalated]"
        await page.wait_for_selector(alert)
        assert case["number"] in (await page.text_content(alert) or "")
        await wait_until(visible(page, f"{item} .sv-case-overdue"), what="the overdue badge")
        assert await page.get_attribute("#case-list > li:first-child", "data-case-id") == (
            case["id"])

        async def state_in_hall(expected: str) -> bool:
            reply = await supervisor.call("case.list", {})
            states = {c["id"]: c["state"] for c in reply.get("cases", [])}
            return states.get(case["id"]) == expected

        await page.select_option(f"{item} [data-testid=case-assign-to]", f"dept:{DEPT}")
        await page.click(f"{item} [data-testid=case-assign]")
        await wait_until(attr_is(page, item, "data-state", "assigned"), what="assigned on board")
        await wait_until(lambda: state_in_hall("assigned"), what="assigned in the hall")

        await page.click(f"{item} [data-testid=case-start]")
        await wait_until(attr_is(page, item, "data-state", "in_progress"), what="started")
        await wait_until(lambda: state_in_hall("in_progress"), what="in progress in the hall")

        await page.click(f"{item} [data-testid=case-resolve]")
        await wait_until(text_is(page, f"{item} [data-testid=case-error]", "办结需要填写说明"),
                         what="the note required")
        await page.fill(f"{item} [data-testid=case-note]", "已与区人社局核对材料清单并回复居民")
        await page.click(f"{item} [data-testid=case-resolve]")
        await wait_until(attr_is(page, item, "data-state", "resolved"), what="resolved on board")
        await wait_until(lambda: state_in_hall("resolved"), what="resolved in the hall")
        await assert_accessible(page, "cases")
    finally:
        await someone.close()
        await supervisor.close()
    board.assert_no_errors()
    await board.context.close()


# -- memory ---------------------------------------------------------------------------------


async def kiosk_clients(hall: LiveHall, points: list[str]) -> list[Client]:
    tokens = await asyncio.gather(*(hall.kiosk_token(p) for p in points))
    kiosks = [Client() for _ in points]
    await asyncio.gather(*(k.connect(hall.url, {"token": tok}) for k, tok in zip(kiosks, tokens,
                                                                                   strict=True)))
    return kiosks


async def test_a_day_of_updates_does_not_grow_the_page(hall: LiveHall, browser: Browser) -> None:
    """~100 wall updates past the alert cap keep the DOM node count within 5% (and within the
    capped alert history of the first wall's count), and the JS heap after a forced GC within
    a loose bound."""
    # Pushes every 50 ms instead of every second (HubConfig has no HALL_ setting for it).
    hub = hall.app[keys.HUB]
    hub.config = dataclasses.replace(hub.config, wall_interval_s=0.05)
    board = await open_board(browser, hall)
    page = board.page
    cdp = await page.context.new_cdp_session(page)
    initial = await wall_stats(page)  # after the first wall: no alert yet

    async def updates() -> int:
        return (await wall_stats(page))["updates"]

    async def changed(since: int) -> None:
        async def check() -> bool:
            return await updates() > since
        await wait_until(check, what="a wall update")

    # Fill the alert history past its cap: 40 kiosks come and go three times (120 alerts).
    points = [f"XH-{n:03d}" for n in range(1, 41)]
    for _ in range(3):
        kiosks = await kiosk_clients(hall, points)
        await wait_until(attr_is(page, "[data-kiosk-id='XH-040']", "data-state", "online"),
                         what="40 kiosks online")
        before = await updates()
        await asyncio.gather(*(k.close() for k in kiosks))
        await changed(before)
    await wait_until(attr_is(page, "[data-kiosk-id='XH-040']", "data-state", "offline"),
                     what="40 kiosks offline")
    assert (await wall_stats(page))["alerts"] == 100

    async def heap() -> int:
        await cdp.send("HeapProfiler.collectGarbage")
        usage: dict[str, Any] = await cdp.send("Runtime.getHeapUsage")
        return int(usage["usedSize"])

    # Two tickets at a time, taken in turn by 12 residents: each takes about 4 in the run,
    # within the per-resident ticket.take budget (5 a minute, docs/protocol.md).
    residents = [await resident(hall, f"r-mem-{i}") for i in range(12)]
    matter_id = matter_of(hall, CLERK)
    held: dict[int, tuple[int, str]] = {}  # slot -> (resident, ticket id)
    takes = 0
    flapping = await kiosk_clients(hall, ["XH-100"])
    try:
        first = await wall_stats(page)
        heap_before = await heap()
        for step in range(100):
            before = await updates()
            who = step % 2
            if step % 10 == 5:
                # A kiosk drops (a new offline alert at the cap) or comes back.
                if flapping:
                    await flapping.pop().close()
                else:
                    flapping = await kiosk_clients(hall, ["XH-100"])
            elif who in held:
                holder, ticket_id = held.pop(who)
                left = await residents[holder].call("ticket.leave", {"ticket_id": ticket_id})
                assert left["ok"], left
            else:
                holder = takes % len(residents)
                takes += 1
                taken = await residents[holder].call("ticket.take", {"matter_id": matter_id,
                                                                     "when_unstaffed": "wait"})
                assert taken["ok"], taken
                held[who] = (holder, taken["ticket"]["id"])
            await changed(before)
        last = await wall_stats(page)
        heap_after = await heap()
    finally:
        for client in residents + flapping:
            await client.close()
    print(f"[memory] updates {first['updates']} -> {last['updates']}, DOM nodes "
          f"{initial['domNodes']} (first wall) / {first['domNodes']} (alert history full) -> "
          f"{last['domNodes']}, alerts {first['alerts']} -> "
          f"{last['alerts']}, JS heap after GC {heap_before} -> {heap_after} bytes")
    assert last["updates"] - first["updates"] >= 100
    assert last["alerts"] == 100
    assert abs(last["domNodes"] - first["domNodes"]) <= first["domNodes"] * 0.05, (first, last)
    # Everything the page ever added beyond the first wall is the capped alert history
    # (an alert row is 5 elements).
    assert last["domNodes"] <= initial["domNodes"] + 100 * 5, (initial, last)
    assert heap_after <= heap_before * 1.3 + 1_000_000, (heap_before, heap_after)
    board.assert_no_errors()
    await board.context.close()
