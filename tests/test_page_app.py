"""The resident's page in 随申办 (/app) in real Chromium against a real demo hall.

The clerk is real too: a protocol client (tests/rtcpeer.HallClient) and, where media matters,
the aiortc clerk of tests/test_browser_rtc.py (``ClerkSide``: it offers, answers the page's ICE
restarts from a fresh connection, and counts the frames it receives from the page's fake
camera). The page exposes its HallClient as ``window.hallClient`` in a demo hall, which is how
these tests read its getStats() and drop its socket.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, FilePayload, Page

from server import keys
from tests.browserkit import PHONE, Watched, open_page, run_axe, serious, wait_until
from tests.rtcpeer import HallClient, Payload
from tests.signalkit import LiveHall, live_hall
from tests.test_browser_rtc import ClerkSide

pytestmark = pytest.mark.browser

CLERK = "clerk01"
MATTER = "flexible_employment_registration"  # hrss (clerk01), consultation and pre-review
TIMEOUT = 15.0
# A snake_case word on screen is a string key that was never translated.
RAW_KEY = re.compile(r"\b[a-z]+(?:_[a-z]+)+\b")


# -- helpers (the kiosk tests use them too) ----------------------------------------------------


def png() -> bytes:
    """A valid 2x2 PNG (the hall decides a file's type from its content)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + b"\xff\x80\x00" * 2 for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def png_file(name: str) -> FilePayload:
    return {"name": name, "mimeType": "image/png", "buffer": png()}


async def visible(page: Page, selector: str) -> None:
    await page.wait_for_selector(selector, state="visible")


async def no_raw_keys(page: Page) -> None:
    """Every visible string is translated (a missing key would show the key itself)."""
    text = await page.inner_text("body")
    assert not RAW_KEY.findall(text), RAW_KEY.findall(text)


async def axe_clean(page: Page, where: str) -> None:
    problems = serious(await run_axe(page))
    assert not problems, f"axe on {where}:\n" + "\n".join(problems)


async def clerk_client(hall: LiveHall, username: str = CLERK) -> HallClient:
    client = HallClient(username)
    await client.connect(hall.url, {"token": await hall.clerk_token(username)}, timeout=TIMEOUT)
    return client


async def http(hall: LiveHall, method: str, path: str, token: str,
               data: Any = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.request(
            method, hall.url + path, data=data,
            headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status, await response.json()


async def clerk_uploads(hall: LiveHall, token: str, ticket_id: str, name: str) -> Payload:
    form = aiohttp.FormData()
    form.add_field("file", png(), filename=name, content_type="image/png")
    status, body = await http(hall, "POST", f"/api/tickets/{ticket_id}/files", token, form)
    assert status == 201, body
    return body["file"]  # type: ignore[no-any-return]


async def prereview_with_one_correction(clerk: HallClient, session_id: str) -> Payload:
    """The clerk marks every required material acceptable but the first (needs correction),
    then finishes; returns the finish ack."""
    ack = await clerk.ok("prereview.start", {"session_id": session_id})
    required = [i for i in ack["prereview"]["items"] if i["required"]]
    for n, item in enumerate(required):
        mark: dict[str, Any] = {"session_id": session_id, "material_id": item["material_id"],
                                "mark": "acceptable"}
        if n == 0:
            mark.update(mark="needs_correction", note="复印件不清晰，请带原件")
        await clerk.ok("prereview.mark", mark)
    return await clerk.ok("prereview.finish", {"session_id": session_id})


async def frames_in_page(page: Page) -> int:
    stats: dict[str, Any] = await page.evaluate("window.hallClient.stats()")
    return int(stats["framesDecoded"])


async def open_app(browser: Browser, hall: LiveHall, resident_id: str, name: str,
                   lang: str = "zh") -> Watched:
    """The app opened by 随申办 with the resident's identity token in the fragment."""
    id_token = await hall.resident_id_token(resident_id, name)
    watched = await open_page(browser, f"{hall.url}/app?lang={lang}#id_token={id_token}",
                              viewport=PHONE)
    await visible(watched.page, "#screen-pick")
    return watched


async def take_from_search(page: Page, query: str, *, elderly: bool = False,
                           kind: str | None = None) -> None:
    await page.fill("#search-input", query)
    await page.click(f"#search-results [data-matter={MATTER}]")
    await visible(page, "#screen-matter")
    if kind:
        await page.check(f"#take-kinds input[value={kind}]")
    if elderly:
        await page.check("#take-elderly")
    await page.click("#take-submit")


# -- tests -------------------------------------------------------------------------------------


async def test_demo_sign_in_browse_search_and_materials_in_both_languages(
        browser: Browser, tmp_path: Path) -> None:
    """Demo sign-in, departments → matters, zh/en search, materials; both languages, axe."""
    async with live_hall() as hall:
        w = await open_page(browser, f"{hall.url}/app", viewport=PHONE)
        page = w.page
        await visible(page, "#signin-demo")
        assert await page.is_hidden("#signin-none")
        await page.fill("#signin-name", "张三")
        await page.fill("#signin-id", "r-app-browse")
        await page.click("#signin-form button[type=submit]")
        await visible(page, "#screen-pick")
        assert "张三" in await page.inner_text("#pick-greeting")
        catalog = hall.app[keys.CATALOG]
        assert await page.locator("#dept-list button").count() == len(catalog.departments)
        await axe_clean(page, "pick (zh)")

        await page.click("[data-department=hrss]")
        await visible(page, "#dept-matters")
        hrss = [m for m in catalog.matters.values() if m.department_id == "hrss"]
        assert await page.locator("#dept-matter-list button").count() == len(hrss)

        # Instant search over Chinese and English names.
        await page.fill("#search-input", "灵活就业")
        await visible(page, f"#search-results [data-matter={MATTER}]")
        assert await page.is_hidden("#dept-matters")
        await page.fill("#search-input", "flexible employ")
        await visible(page, f"#search-results [data-matter={MATTER}]")
        await page.fill("#search-input", "")
        await visible(page, "#dept-matters")

        await page.click(f"#dept-matter-list [data-matter={MATTER}]")
        await visible(page, "#screen-matter")
        matter = catalog.matters[MATTER]
        materials = page.locator("#matter-materials .material")
        assert await materials.count() == len(matter.materials)
        first = matter.materials[0]
        assert first.name in await materials.nth(0).inner_text()
        assert first.description in await materials.nth(0).inner_text()
        assert await page.locator("#matter-materials .tag-required").count() == sum(
            1 for m in matter.materials if m.required)
        await visible(page, "#take-kinds")  # both kinds: the resident chooses
        await visible(page, "#matter-queue")
        await axe_clean(page, "matter detail (zh)")
        await no_raw_keys(page)
        w.assert_no_errors()
        await w.context.close()

        # English: the same screens, no key left untranslated.
        en = await open_app(browser, hall, "r-app-browse-en", "Alex", lang="en")
        assert await en.page.get_attribute("html", "lang") == "en"
        assert "Choose a matter" in await en.page.inner_text("#pick-title")
        await en.page.fill("#search-input", "residence")
        await en.page.locator("#search-results button").first.click()
        await visible(en.page, "#screen-matter")
        assert "Documents to prepare" in await en.page.inner_text("#screen-matter")
        await no_raw_keys(en.page)
        await axe_clean(en.page, "matter detail (en)")
        en.assert_no_errors()
        await en.context.close()


async def test_unstaffed_refusal_offers_wait_or_callback_reload_restores_and_leave(
        browser: Browser, tmp_path: Path) -> None:
    """No clerk on duty: the refusal offers wait/callback; the wait survives a reload; leave."""
    async with live_hall() as hall:
        w = await open_app(browser, hall, "r-app-wait", "王五")
        page = w.page
        await take_from_search(page, "灵活就业")
        await visible(page, "#refusal")
        assert "没有帮办在岗" in await page.inner_text("#refusal-text")
        await visible(page, "#refusal-wait")
        await visible(page, "#refusal-callback")

        # "Call me back" needs a number; with one, the ticket waits as a callback request.
        await page.fill("#refusal-phone", "13800001234")
        await page.click("#refusal-callback button[type=submit]")
        await visible(page, "#screen-waiting")
        number = (await page.inner_text("#w-number")).strip()
        participant = await page.evaluate("window.hallClient.participant")
        hall_core = hall.app[keys.HALL]
        ticket_id = await page.evaluate("window.hallFlow.ticket.id")
        ticket = await hall_core.get_ticket(ticket_id)
        assert ticket.callback_contact == "13800001234" and ticket.number == number
        assert participant == "resident:r-app-wait"
        await wait_until(lambda: _text_has(page, "#w-status", "回电"), what="callback status")
        await wait_until(lambda: _text_has(page, "#w-position", "第 1 位"), what="position")
        await axe_clean(page, "waiting")

        # A reload puts the resident back on the waiting screen with the same ticket.
        await page.reload()
        await visible(page, "#screen-waiting")
        assert (await page.inner_text("#w-number")).strip() == number
        await wait_until(lambda: _text_has(page, "#w-position", "第 1 位"),
                         what="position after reload")

        # Leaving asks first; "cancel" keeps the ticket, "leave" ends it.
        await page.click("#w-leave")
        await page.click("dialog.confirm-dialog .btn:not(.btn-danger)")
        assert (await hall_core.get_ticket(ticket_id)).state.value == "waiting"
        await page.click("#w-leave")
        await page.click("dialog.confirm-dialog .btn-danger")
        await visible(page, "#screen-pick")

        async def abandoned() -> bool:
            return (await hall_core.get_ticket(ticket_id)).state.value == "abandoned"

        await wait_until(abandoned, what="the ticket to be abandoned")

        # "Wait anyway" joins the queue without a clerk on duty.
        await take_from_search(page, "灵活就业")
        await page.click("#refusal-wait")
        await visible(page, "#screen-waiting")
        await wait_until(lambda: _text_has(page, "#w-status", "暂无帮办在岗"),
                         what="the unstaffed notice")
        w.assert_no_errors()
        await w.context.close()


async def _text_has(page: Page, selector: str, text: str) -> bool:
    return text in await page.inner_text(selector)


async def test_session_media_chat_files_and_reconnect(browser: Browser,
                                                      tmp_path: Path) -> None:
    """A call with an aiortc clerk: frames both ways, chat both ways, files, drop and back."""
    async with live_hall() as hall:
        clerk_token = await hall.clerk_token(CLERK)
        clerk = ClerkSide(await clerk_client(hall))
        w = await open_app(browser, hall, "r-app-call", "李四")
        page = w.page
        try:
            # Identity from the fragment: kept in sessionStorage, gone from the address bar.
            assert "#" not in page.url and "id_token" not in page.url
            assert await page.evaluate("!!sessionStorage.getItem('hall.app.id_token')")

            await take_from_search(page, "灵活就业", elderly=True)
            offer = await clerk.client.wait_for("offer.new", timeout=TIMEOUT)
            assert offer["priority"] == "elderly" and offer["matter_id"] == MATTER
            ticket_id = offer["ticket_id"]
            await visible(page, "#screen-waiting")
            assert (await page.inner_text("#w-number")).strip() == offer["number"]

            # A photo of a document, sent while waiting (the offer is still open).
            await page.set_input_files("#w-file", files=[png_file("身份证.png")])
            await visible(page, "#w-files .file-mine")

            await clerk.client.ok("offer.accept", {"ticket_id": ticket_id}, timeout=TIMEOUT)
            session = (await clerk.client.wait_for("session.started", timeout=TIMEOUT))["session"]
            clerk.start(session)
            await clerk.offer()
            await visible(page, "#screen-call")
            assert "王芳" in await page.inner_text("#call-peer")

            # Media: the page decodes the clerk's video; the clerk gets the page's camera.
            async def page_frames() -> bool:
                return await frames_in_page(page) >= 10

            async def clerk_frames() -> bool:
                clerk.check()
                return clerk.frames >= 10

            await wait_until(page_frames, what="10 frames decoded in the page")
            await wait_until(clerk_frames, what="10 frames from the page at the clerk")
            stats = await page.evaluate("window.hallClient.stats()")
            assert stats["videoStreamsReceiving"] >= 1 and stats["framesSent"] > 0, stats

            # The file sent while waiting is the clerk's to see now.
            status, listing = await http(hall, "GET", f"/api/tickets/{ticket_id}/files",
                                         clerk_token)
            assert status == 200 and [f["filename"] for f in listing["files"]] == ["身份证.png"]
            # A file from the clerk arrives in the page (file.added).
            await clerk_uploads(hall, clerk_token, ticket_id, "guide.png")
            await visible(page, "#call-files .file-theirs")
            assert "guide.png" in await page.inner_text("#call-files")
            # ...and the resident can still send one during the call.
            await page.set_input_files("#c-file", files=[png_file("户口簿.png")])
            added = await clerk.client.wait_for(
                "file.added", lambda p: p["file"]["filename"] == "户口簿.png", timeout=TIMEOUT)
            assert added["ticket_id"] == ticket_id

            # Chat both ways.
            await page.fill("#call-chat .chat-input", "您好，我想咨询灵活就业")
            await page.click("#call-chat .chat-form button")
            said = await clerk.client.wait_for("chat.message", timeout=TIMEOUT)
            assert said["message"]["text"] == "您好，我想咨询灵活就业"
            await clerk.client.ok("chat.send", {"session_id": ticket_id, "text": "请出示身份证"})
            await wait_until(lambda: _text_has(page, "#call-chat .chat-log", "请出示身份证"),
                             what="the clerk's chat message")

            # The clerk's checklist, live.
            await clerk.client.ok("prereview.start", {"session_id": ticket_id})
            await clerk.client.ok("prereview.mark", {"session_id": ticket_id,
                                                     "material_id": "id_card",
                                                     "mark": "acceptable"})
            await visible(page, "#call-checklist [data-material=id_card].mark-acceptable")
            await axe_clean(page, "call")

            # The socket drops: a visible banner, the clerk told; back after the resume.
            await page.evaluate("window.hallClient.dropForTest()")
            await visible(page, "#call-reconnecting")
            await clerk.client.wait_for("session.peer", lambda p: p["state"] == "reconnecting",
                                        timeout=TIMEOUT)
            await page.evaluate("window.hallClient.reconnect()")
            await clerk.client.wait_for("session.peer", lambda p: p["state"] == "back",
                                        timeout=TIMEOUT)
            await page.wait_for_selector("#call-reconnecting", state="hidden")
            await visible(page, "#screen-call")
            clerk.check()
            w.assert_no_errors()
        finally:
            await clerk.close()
            await w.context.close()


async def test_after_the_call_result_rating_and_unresolved_report(browser: Browser,
                                                                  tmp_path: Path) -> None:
    """After the call: result and correction link, rating once, 办不成事 report, my reports."""
    async with live_hall() as hall:
        clerk = await clerk_client(hall)
        w = await open_app(browser, hall, "r-app-after", "赵六")
        page = w.page
        try:
            await take_from_search(page, "灵活就业", kind="pre_review")
            offer = await clerk.wait_for("offer.new", timeout=TIMEOUT)
            ticket_id = offer["ticket_id"]
            await clerk.ok("offer.accept", {"ticket_id": ticket_id})
            await visible(page, "#screen-call")

            finished = await prereview_with_one_correction(clerk, ticket_id)
            assert finished["result"] == "passed_with_corrections", finished
            await visible(page, "#call-checklist .result-passed_with_corrections")
            await clerk.ok("session.end", {"session_id": ticket_id})
            await visible(page, "#screen-after")
            await visible(page, "#after-result .corrections li")
            link = page.locator("#after-result a.result-link")
            assert await link.get_attribute("href") == finished["url"]
            await clerk.ok("wrapup.finish", {"outcome": "pre_review_corrections"})

            # Rating: once, 4 stars with a comment; recorded on the ticket.
            await page.click("#after-rating .star:nth-child(5)")  # legend is child 1
            await page.fill("#after-rating textarea", "帮办很耐心")
            await page.click("#after-rating button[type=submit]")
            await visible(page, "#after-rating .rated")
            assert (await hall.app[keys.HALL].get_ticket(ticket_id)).rating == 4

            # 办不成事: a report about this matter and ticket, then "my reports".
            await page.click("#after-case-open")
            await page.fill("#after-case textarea", "补正材料要求不清楚，跑了两次")
            await page.click("#after-case button[type=submit]")
            await visible(page, "#after-case .case-filed")
            await axe_clean(page, "after")

            # A reload keeps the aftermath (the result and the rating given).
            await page.reload()
            await visible(page, "#screen-after")
            await visible(page, "#after-result .corrections li")
            await visible(page, "#after-rating .rated")

            await page.click("#after-cases")
            await visible(page, "#cases-list .case-item")
            listing = await page.inner_text("#cases-list")
            assert "已受理" in listing and "灵活就业登记" in listing
            await page.click("#cases-back")
            await visible(page, "#screen-after")
            await page.click("#after-again")
            await visible(page, "#screen-pick")
            await no_raw_keys(page)
            w.assert_no_errors()
        finally:
            await clerk.close()
            await w.context.close()
