"""Real Chromium for the page tests: fixtures, page helpers and the accessibility check.

Chromium is Debian's package (``scripts/install-browser.sh`` installs it, with a CJK font, when
missing), driven by Playwright through ``executable_path``; ``playwright install`` is never
used. Fake camera and microphone (``--use-fake-device-for-media-stream``) make real media.

Every browser test module sets ``pytestmark = pytest.mark.browser`` so ``pytest -m browser``
runs exactly them. The fixtures are registered in ``tests/conftest.py``.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Route,
    async_playwright,
)

ROOT = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = ROOT / "scripts" / "install-browser.sh"
CHROMIUM = Path("/usr/bin/chromium")
# The wrapper script prints a harmless warning on every start; the binary does not.
CHROMIUM_BINARY = Path("/usr/lib/chromium/chromium")
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000  # every single wait in a page test

# Viewports: a phone (the app), the kiosk's portrait screen, a desktop (clerk, supervisor).
PHONE = {"width": 390, "height": 844}
KIOSK = {"width": 1080, "height": 1920}
DESKTOP = {"width": 1440, "height": 900}


def ensure_chromium() -> Path:
    """Chromium's executable, installed with the project's own script when it is missing."""
    if not CHROMIUM.exists():
        result = subprocess.run(
            ["sh", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900,
            check=False,
        )
        if not CHROMIUM.exists():
            # Not a skip: a browser test that does not run must not count as passing.
            pytest.fail(
                f"Chromium is not installed and {INSTALL_SCRIPT.name} could not install it "
                f"(exit {result.returncode}):\n{result.stdout}{result.stderr}\n"
                "Install the Debian package `chromium` (apt-get install -y chromium).",
                pytrace=False,
            )
    return CHROMIUM_BINARY if CHROMIUM_BINARY.exists() else CHROMIUM


@pytest.fixture(scope="session")
def chromium() -> Path:
    return ensure_chromium()


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Watched:
    """A page with the errors it raised and the console lines it printed, for assertions."""

    page: Page
    context: BrowserContext
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def assert_no_errors(self) -> None:
        """No uncaught exception in the page (a broken script is a failed test)."""
        assert not self.errors, "page errors:\n" + "\n".join(self.errors)


async def open_page(browser: Browser, url: str, *, viewport: dict[str, int] | None = None,
                    locale: str = "zh-CN") -> Watched:
    """A fresh context (own storage, camera and microphone allowed) with one page at url."""
    context = await browser.new_context(
        viewport=viewport or DESKTOP,  # type: ignore[arg-type]
        locale=locale,
        permissions=["camera", "microphone"],
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    watched = Watched(page, context)
    page.on("pageerror", lambda exc: watched.errors.append(str(exc)))

    def on_console(message: ConsoleMessage) -> None:
        watched.console.append(f"{message.type}: {message.text}")

    page.on("console", on_console)
    await page.goto(url)
    return watched


async def run_axe(page: Page, *, tags: tuple[str, ...] = ("wcag2a", "wcag2aa", "wcag21aa")
                  ) -> list[dict[str, Any]]:
    """axe-core (npm, node_modules) on the page as it is now; returns its violations.

    Evaluated through the DevTools protocol, so the pages' Content-Security-Policy (no inline
    or foreign script) does not have to be relaxed for it.
    """
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run the set-up (npm ci)", pytrace=False)
    await page.evaluate(AXE.read_text(encoding="utf-8") + "\n;undefined")
    result: dict[str, Any] = await page.evaluate(
        "(tags) => axe.run(document, {runOnly: {type: 'tag', values: tags}})", list(tags))
    violations: list[dict[str, Any]] = result["violations"]
    return violations


def serious(violations: list[dict[str, Any]]) -> list[str]:
    """The serious and critical violations, one line each (rule, impact, first targets)."""
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(n["target"]) for n in v["nodes"][:3])
        for v in violations
        if v.get("impact") in ("serious", "critical")
    ]


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 15.0,
                     what: str = "condition") -> None:
    """Poll an async check every 100 ms until it holds; fail naming `what` otherwise."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


RTC_TEST_PAGE = Path(__file__).resolve().parent / "rtc-test.html"


async def open_rtc_test_page(page: Page, hall_url: str, fragment: str = "") -> None:
    """Open tests/rtc-test.html (a page with inline script, driving a HallClient) in the hall's
    origin, so its imports and socket stay same-origin. The hall does not serve it (it ships
    no test pages): the page goes to a hall answer without a CSP (``/healthz``) and its content
    is replaced by the file's. (Answering the URL from Playwright instead would leave the page
    without an address, and Chromium's local network access checks then block its socket.)"""
    async def no_icon(route: Route) -> None:
        await route.fulfill(status=204)  # the JSON answer's favicon.ico: no 404 in the console

    await page.route(f"{hall_url}/favicon.ico", no_icon)
    await page.goto(f"{hall_url}/healthz{fragment}")
    await page.set_content(RTC_TEST_PAGE.read_text(encoding="utf-8"))
