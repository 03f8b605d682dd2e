"""A whole session across the faces, each in its own browser context of real Chromium.

A resident in the app (phone size), a clerk at the console and a supervisor at the wallboard,
all pages of one real hall, driven through their own controls: ticket, offer, accept, media
flowing both ways (getStats), the resident's screen share, a document uploaded while waiting
and previewed by the clerk, the pre-review checklist, silent monitoring, end, wrap-up, rating.
Then a browser console with the kiosk device agent (aiortc) as the resident: a browser page
and an aiortc peer reach each other through the hall.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Browser, Page

from kiosk.agent import KioskAgent
from kiosk.config import KioskConfig, Secret
from server import keys
from tests.browserkit import DESKTOP, Watched, open_page, run_axe, serious, wait_until
from tests.signalkit import PASSWORD, LiveHall, live_hall
from tests.test_page_app import MATTER, open_app, png_file, take_from_search, visible

pytestmark = pytest.mark.browser


async def _stats(page: Page) -> dict[str, Any]:
    stats: dict[str, Any] = await page.evaluate("window.hallClient.stats()")
    return stats


async def _login(page: Page, username: str) -> None:
    await page.fill("#login-username", username)
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-submit")


async def _clerk_console(browser: Browser, hall: LiveHall) -> Watched:
    clerk = await open_page(browser, hall.url + "/clerk", viewport=DESKTOP)
    await _login(clerk.page, "clerk01")
    await clerk.page.wait_for_selector("#clerk-state[data-state=available]")
    return clerk


async def _no_serious_axe(page: Page, where: str) -> None:
    problems = serious(await run_axe(page))
    assert not problems, f"axe on {where}:\n" + "\n".join(problems)


async def test_resident_clerk_and_supervisor_go_through_a_whole_session(
        browser: Browser) -> None:
    """App resident, clerk console and wallboard together: every step of a session, with
    media, screen share, a document, the checklist, monitoring, wrap-up and the rating."""
    async with live_hall() as hall:
        clerk = await _clerk_console(browser, hall)
        board = await open_page(browser, hall.url + "/supervisor", viewport=DESKTOP)
        await _login(board.page, "supervisor")
        await board.page.wait_for_selector("#wall", state="visible")
        resident = await open_app(browser, hall, "e2e-resident", "李四")
        pages = (clerk, board, resident)
        try:
            # The resident takes a pre-review ticket as 65+ and sends a photo while waiting.
            await take_from_search(resident.page, "灵活就业", elderly=True, kind="pre_review")
            await visible(resident.page, "#screen-waiting")
            await resident.page.set_input_files("#w-file", files=[png_file("身份证.png")])
            await visible(resident.page, "#w-files .file-mine")

            # The clerk is offered it (priority shown) and accepts from the console.
            await clerk.page.wait_for_selector("#offer-card", state="visible")
            number = (await clerk.page.inner_text("#offer-number")).strip()
            assert number == (await resident.page.inner_text("#w-number")).strip()
            await clerk.page.click("#offer-accept")
            await visible(resident.page, "#screen-call")
            await clerk.page.wait_for_selector("#session-view", state="visible")
            ticket_id = (await _stats(clerk.page))["sessionId"]
            assert ticket_id

            # Media flows both ways: each page decodes the other's camera.
            async def both_decode() -> bool:
                return (int((await _stats(clerk.page))["framesDecoded"]) > 10
                        and int((await _stats(resident.page))["framesDecoded"]) > 10)

            await wait_until(both_decode, what="video frames decoded on both pages")

            # The resident shares the screen: the clerk receives a second video stream.
            await resident.page.click("#call-controls .call-share")

            async def clerk_sees_screen() -> bool:
                stats = await _stats(clerk.page)
                return bool(stats["remoteScreenId"]) and stats["videoStreamsReceiving"] >= 2

            await wait_until(clerk_sees_screen, what="the resident's screen at the clerk")
            await clerk.page.wait_for_selector("#stage[data-layout=screen]")

            # The photo sent while waiting is in the clerk's list and previews inline.
            await clerk.page.click("#file-list li[data-file-id] .file-open")
            await clerk.page.wait_for_function(
                "() => { const img = document.querySelector('#file-preview img');"
                " return img && img.naturalWidth > 0; }")

            # Pre-review: every required material acceptable, the resident sees it live.
            await clerk.page.click("#prereview-start")
            await clerk.page.wait_for_selector("#prereview-list li[data-material-id]")
            review = hall.app[keys.CATALOG].matters[MATTER]
            for material in review.materials:
                if material.required:
                    await clerk.page.click(f"#prereview-list li[data-material-id={material.id}]"
                                           " button[data-mark=acceptable]")
                    await visible(resident.page, f"#call-checklist [data-material={material.id}]"
                                                 ".mark-acceptable")
            await clerk.page.click("#prereview-finish")
            await clerk.page.wait_for_selector("#prereview-result[data-result=passed]")

            # The supervisor sees the session and monitors it silently.
            monitor = f"#monitor-{ticket_id}"
            await board.page.wait_for_selector(monitor)
            await board.page.click(monitor)

            async def supervisor_sees() -> bool:
                return int((await _stats(board.page))["monitorFramesDecoded"]) > 5

            await wait_until(supervisor_sees, what="frames at the monitoring supervisor")
            await clerk.page.wait_for_selector("#monitor-indicator", state="visible")
            await _no_serious_axe(board.page, "the wallboard while monitoring")
            await board.page.click("#monitor-leave")
            await clerk.page.wait_for_selector("#monitor-indicator", state="hidden")
            resident_events = [name for name, _ in (await _stats(resident.page))["events"]]
            assert not [e for e in resident_events if e.startswith("monitor")]

            # The clerk ends; wrap-up with the outcome; the console is available again.
            await clerk.page.click("#btn-end")
            await clerk.page.click("#confirm-ok")
            await clerk.page.wait_for_selector("#wrapup-view", state="visible")
            await clerk.page.check("#outcome-pre_review_passed")
            await clerk.page.click("#wrapup-finish")
            await clerk.page.wait_for_selector("#clerk-state[data-state=available]")

            # The resident sees the result and rates the session.
            await visible(resident.page, "#screen-after")
            await resident.page.click("#after-rating .star:nth-child(6)")  # legend is child 1
            await resident.page.click("#after-rating button[type=submit]")
            await visible(resident.page, "#after-rating .rated")
            ticket = await hall.app[keys.HALL].get_ticket(ticket_id)
            assert (ticket.state, ticket.outcome, ticket.rating) == (
                "done", "pre_review_passed", 5)

            # The wallboard counted the answered ticket.
            await board.page.wait_for_function(
                "() => document.querySelector('#tile-answered').textContent.includes('1')")
            for watched in pages:
                watched.assert_no_errors()
        finally:
            for watched in pages:
                await watched.context.close()


async def test_browser_console_and_aiortc_kiosk_agent_reach_each_other(
        browser: Browser) -> None:
    """The kiosk device agent (aiortc) takes a ticket; the clerk's browser console accepts;
    video frames flow both ways between the browser and the aiortc peer."""
    async with live_hall() as hall:
        clerk = await _clerk_console(browser, hall)
        secret = hall.app[keys.KIOSK_KEYS].demo_secret("XH-001")
        agent = KioskAgent(KioskConfig(url=hall.url, service_point_id="XH-001",
                                       secret=Secret(secret)))
        try:
            await agent.start()
            await agent.take_ticket(MATTER)
            await clerk.page.wait_for_selector("#offer-card", state="visible")
            await clerk.page.click("#offer-accept")

            async def both_ways() -> bool:
                decoded = (await _stats(clerk.page))["framesDecoded"]
                return decoded > 10 and agent.frames_received > 10

            await wait_until(both_ways, timeout_s=20, what="frames browser<->aiortc")
            assert agent.frames_sent > 0
            clerk.assert_no_errors()
        finally:
            await agent.close()
            await clerk.context.close()
