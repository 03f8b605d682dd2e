"""A neighbourhood kiosk (/kiosk/<point>) in real Chromium against a real demo hall.

The clerk is a protocol client and, for media, the aiortc clerk of tests/test_browser_rtc.py.
The page exposes its HallClient (``window.hallClient``), its resident flow
(``window.hallFlow``) and its last health report (``window.kioskHealth``) in a demo hall only.
``?idle=<s>`` shortens the privacy timeout, also in a demo hall only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from server import keys
from tests.browserkit import KIOSK, Watched, open_page, wait_until
from tests.signalkit import LiveHall, live_hall
from tests.test_browser_rtc import ClerkSide
from tests.test_page_app import (
    CLERK,
    MATTER,
    TIMEOUT,
    axe_clean,
    clerk_client,
    clerk_uploads,
    frames_in_page,
    no_raw_keys,
    prereview_with_one_correction,
    visible,
)

pytestmark = pytest.mark.browser

POINT = "XH-001"

# Every visible control at least 64 px high and every visible text at least 24 px.
LARGE_TARGETS = """() => {
  const shown = (el) => el.getClientRects().length > 0 && !el.closest('.sr-only')
    && getComputedStyle(el).visibility !== 'hidden';
  const small = [];
  for (const el of document.querySelectorAll('button, a[href], input, select, textarea')) {
    if (!shown(el) || el.classList.contains('skip-link')) continue;
    if (el.type === 'radio' || el.type === 'checkbox') continue;  // covered by their label
    const h = el.getBoundingClientRect().height;
    if (h < 64) small.push(`target ${el.tagName} "${(el.textContent || el.id).trim()}" ${h}px`);
  }
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!node.textContent.trim() || !el || !shown(el) || el.closest('.skip-link')) continue;
    const size = parseFloat(getComputedStyle(el).fontSize);
    if (size < 24) small.push(`text "${node.textContent.trim().slice(0, 30)}" ${size}px`);
  }
  return small;
}"""


async def large(page: Page, where: str) -> None:
    small: list[str] = await page.evaluate(LARGE_TARGETS)
    assert not small, f"too small on {where}: {small}"


def secret(hall: LiveHall) -> str:
    return str(hall.app[keys.KIOSK_KEYS].demo_secret(POINT))


async def open_kiosk(browser: Browser, hall: LiveHall, query: str = "") -> Watched:
    """The kiosk page, its device secret given once in the fragment, on its home screen."""
    watched = await open_page(browser, f"{hall.url}/kiosk/{POINT}{query}#secret={secret(hall)}",
                              viewport=KIOSK)
    await visible(watched.page, "#screen-home")
    return watched


async def to_confirm(page: Page) -> None:
    """Home → device check (the resident heard the tone) → department → matter."""
    await page.click("#home-start")
    await visible(page, "#check-continue")
    await page.click("#speaker-yes")
    await page.click("#check-continue")
    await visible(page, "#screen-dept")
    await page.click("[data-department=hrss]")
    await visible(page, "#screen-matter")
    await page.click(f"[data-matter={MATTER}]")
    await visible(page, "#screen-confirm")


async def _has_text(page: Page, selector: str, text: str) -> bool:
    return text in await page.inner_text(selector)


async def ticket_state(hall: LiveHall, ticket_id: str) -> str:
    return str((await hall.app[keys.HALL].get_ticket(ticket_id)).state.value)


# -- tests -------------------------------------------------------------------------------------


async def test_setup_wrong_then_right_secret_health_and_languages(
        browser: Browser, tmp_path: Path) -> None:
    """Set-up refuses a wrong secret, takes the right one; health is reported; zh/en, axe."""
    async with live_hall() as hall:
        w = await open_page(browser, f"{hall.url}/kiosk/{POINT}", viewport=KIOSK)
        page = w.page
        await visible(page, "#screen-setup")
        point = hall.app[keys.CATALOG].service_points[POINT]
        header = await page.inner_text(".kiosk-point")
        assert point.name in header and point.address in header
        await page.fill("#setup-secret", "not-the-secret")
        await page.click("#setup-form button[type=submit]")
        await visible(page, "#setup-error")
        assert "不正确" in await page.inner_text("#setup-error")
        assert await page.evaluate(f"localStorage.getItem('hall.kiosk.secret.{POINT}')") is None

        await page.fill("#setup-secret", secret(hall))
        await page.click("#setup-form button[type=submit]")
        await visible(page, "#screen-home")
        assert await page.evaluate(f"localStorage.getItem('hall.kiosk.secret.{POINT}')") \
            == secret(hall)
        token = await page.evaluate(f"sessionStorage.getItem('hall.kiosk.token.{POINT}')")
        assert token and "token" in token
        assert await page.evaluate("window.hallClient.participant") == f"kiosk:{POINT}"

        # The kiosk checked its devices on start and told the hall.
        await wait_until(lambda: page.evaluate("!!(window.kioskHealth && window.kioskHealth.ack)"),
                         what="the health report's ack")
        health: dict[str, Any] = await page.evaluate("window.kioskHealth")
        sent = health["sent"]
        assert (sent["camera"], sent["microphone"], sent["document_camera"]) == (
            "ok", "ok", "absent"), sent  # Chromium's fake devices: one camera, one microphone
        assert sent["speaker"] in ("ok", "failed") and sent["agent"].startswith("kiosk-web")
        await _hall_has_health(hall, health)

        await large(page, "home (zh)")
        await axe_clean(page, "home (zh)")
        await no_raw_keys(page)

        # English, same device (the secret stays in localStorage).
        await page.click(".lang-switch")
        await visible(page, "#screen-home")
        assert await page.get_attribute("html", "lang") == "en"
        assert "Welcome" in await page.inner_text("#home-title")
        await large(page, "home (en)")
        await axe_clean(page, "home (en)")
        await no_raw_keys(page)

        # The voice-prompt toggle is off by default and visible.
        assert await page.get_attribute("#voice-toggle", "aria-pressed") == "false"
        await page.click("#voice-toggle")
        assert await page.get_attribute("#voice-toggle", "aria-pressed") == "true"
        w.assert_no_errors()
        await w.context.close()


async def _hall_has_health(hall: LiveHall, health: dict[str, Any]) -> None:
    """The hub took the report: the ack is ok, and the wall shows the kiosk's health."""
    ack = health["ack"]
    assert ack["ok"] is True, ack
    from tests.signalkit import Client

    supervisor = Client()
    reply = await hall.post("/api/auth/login", {"username": "supervisor",
                                                "password": "demo-password-for-tests"})
    await supervisor.connect(hall.url, {"token": reply["token"]})
    try:
        snapshot = (await supervisor.call("wall.snapshot", {}))["snapshot"]
        kiosk = next(k for k in snapshot["kiosks"] if k["id"] == POINT)
        assert kiosk["health"]["camera"] == health["sent"]["camera"], kiosk
        assert kiosk["health"]["document_camera"] == "absent", kiosk
    finally:
        await supervisor.close()


async def test_ticket_call_with_aiortc_clerk_and_after(browser: Browser, tmp_path: Path) -> None:
    """65+ ticket, a call with frames both ways, chat, files, result, rating, report, wipe."""
    async with live_hall() as hall:
        clerk_token = await hall.clerk_token(CLERK)
        clerk = ClerkSide(await clerk_client(hall))
        w = await open_kiosk(browser, hall)
        page = w.page
        try:
            await to_confirm(page)
            await page.click("[data-elderly=yes]")
            await page.click("[data-kind=pre_review]")
            await large(page, "confirm")
            await page.click("#confirm-take")
            offer = await clerk.client.wait_for("offer.new", timeout=TIMEOUT)
            assert offer["priority"] == "elderly" and offer["kind"] == "pre_review", offer
            ticket_id = offer["ticket_id"]
            await visible(page, "#screen-waiting")
            assert (await page.inner_text("#w-number")).strip() == offer["number"]
            await large(page, "waiting")
            await axe_clean(page, "waiting")

            await clerk.client.ok("offer.accept", {"ticket_id": ticket_id}, timeout=TIMEOUT)
            session = (await clerk.client.wait_for("session.started", timeout=TIMEOUT))["session"]
            clerk.start(session)
            await clerk.offer()
            await visible(page, "#screen-call")

            async def page_frames() -> bool:
                return await frames_in_page(page) >= 10

            async def clerk_frames() -> bool:
                clerk.check()
                return clerk.frames >= 10

            await wait_until(page_frames, what="10 frames decoded at the kiosk")
            await wait_until(clerk_frames, what="10 frames from the kiosk at the clerk")
            # One camera only: no "show a document" (sharing the main camera again is useless).
            assert await page.is_hidden("#call-controls .call-share")

            # Chat: a quick phrase goes to the clerk; the clerk's answer shows.
            await page.click("#call-chat .phrase >> nth=1")
            said = await clerk.client.wait_for("chat.message", timeout=TIMEOUT)
            assert said["message"]["text"] == "我听不清"
            await clerk.client.ok("chat.send", {"session_id": ticket_id, "text": "我大声一点"})
            await wait_until(lambda: _has_text(page, "#call-chat .chat-log", "我大声一点"),
                             what="the clerk's chat message")
            await clerk_uploads(hall, clerk_token, ticket_id, "form.png")
            await visible(page, "#call-files .file-theirs")
            await large(page, "call")

            finished = await prereview_with_one_correction(clerk.client, ticket_id)
            await visible(page, "#call-checklist .result-passed_with_corrections")
            await clerk.client.ok("session.end", {"session_id": ticket_id})
            await visible(page, "#screen-after")
            await visible(page, "#after-result .corrections li")

            # The correction list opens in its own window, to print (it carries its QR code).
            async with w.context.expect_page() as popup_info:
                await page.click("#after-print")
            popup = await popup_info.value
            await popup.wait_for_load_state()
            assert popup.url == hall.url + finished["url"]
            await popup.close()

            await page.click("#after-rating .star >> nth=4")
            await page.click("#after-rating button[type=submit]")
            await visible(page, "#after-rating .rated")

            async def rated() -> bool:
                return (await hall.app[keys.HALL].get_ticket(ticket_id)).rating == 5

            await wait_until(rated, what="the rating in the hall")

            # 办不成事 from a kiosk: anonymous, with a claim code shown large.
            await page.click("#after-case-open")
            await page.click("#after-case .case-preset >> nth=0")
            await page.click("#after-case button[type=submit]")
            await visible(page, "#after-case .claim-code")
            code = (await page.inner_text("#after-case .claim-code")).strip()
            assert len(code) >= 6, code
            await large(page, "after")
            await axe_clean(page, "after")
            await no_raw_keys(page)

            # "Finish": nothing of this resident is left on the page.
            await page.click("#after-finish")
            await visible(page, "#screen-home")
            body = await page.evaluate("document.body.textContent")
            for trace in (code, offer["number"], "我大声一点", "form.png", "复印件不清晰"):
                assert trace not in body, trace
            assert await page.evaluate("window.hallFlow.phase") == "none"
            clerk.check()
            w.assert_no_errors()
        finally:
            await clerk.close()
            await w.context.close()


async def test_idle_timeout_wipes_and_never_interrupts_a_call(browser: Browser,
                                                              tmp_path: Path) -> None:
    """?idle=4 (demo): "still there?" then the ticket is left; idle screens wipe; calls don't."""
    async with live_hall() as hall:
        w = await open_kiosk(browser, hall, "?idle=4")
        page = w.page
        # No clerk on duty: the kiosk offers to wait anyway (or a callback, with a keypad).
        await to_confirm(page)
        await page.click("#confirm-take")
        await visible(page, "#refusal-wait")
        await page.click("#refusal-keypad .key >> nth=0")
        assert await page.input_value("#refusal-phone") == "1"
        await page.click("#refusal-wait")
        await visible(page, "#screen-waiting")
        ticket_id = await page.evaluate("window.hallFlow.ticket.id")
        number = (await page.inner_text("#w-number")).strip()

        # No touch: the countdown shows, then the ticket is left and the screen wiped.
        await visible(page, "#still-there")
        assert "秒" in await page.inner_text("#still-text")
        await visible(page, "#screen-home")

        async def left() -> bool:
            return await ticket_state(hall, ticket_id) == "abandoned"

        await wait_until(left, what="the ticket to be left")
        assert number not in await page.evaluate("document.body.textContent")

        # Any other screen: back home after the timeout too.
        await page.click("#home-report")
        await visible(page, "#screen-dept")
        await visible(page, "#screen-home")

        # A session is never interrupted by the idle timer.
        clerk = await clerk_client(hall)
        try:
            await to_confirm(page)
            await page.click("#confirm-take")
            offer = await clerk.wait_for("offer.new", timeout=TIMEOUT)
            await clerk.ok("offer.accept", {"ticket_id": offer["ticket_id"]})
            await visible(page, "#screen-call")
            await asyncio.sleep(5)  # longer than the idle timeout, without a touch
            assert await page.is_visible("#screen-call")
            assert not await page.is_visible("#still-there")
            assert await ticket_state(hall, offer["ticket_id"]) == "in_session"
        finally:
            await clerk.close()
        w.assert_no_errors()
        await w.context.close()
