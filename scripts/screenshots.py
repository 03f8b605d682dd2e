"""Screenshots of every page at phone, kiosk and desktop sizes, for review (`make screenshots`).

Starts a demo hall on a free loopback port in this process (embedded mode, a throw-away data
directory), drives Debian's Chromium with Playwright (fake camera and microphone) and writes
PNGs named ``<page>-<state>-<size>.png`` into the directory given (default
``artifacts/screenshots``). Each page is shot as a new user first meets it and, where it has
one, in its working state (signed in, board live, waiting in the queue).

Usage: .venv/bin/python scripts/screenshots.py [OUTPUT_DIR]
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from playwright.async_api import Page, async_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server import keys  # noqa: E402
from server.app import create_app  # noqa: E402
from server.config import Settings  # noqa: E402
from tests.browserkit import CHROMIUM_ARGS, DESKTOP, KIOSK, PHONE, ensure_chromium  # noqa: E402

PASSWORD = "screenshots-demo-password"
SIZES = {"phone": PHONE, "kiosk": KIOSK, "desktop": DESKTOP}


@dataclass(frozen=True)
class Scene:
    """One page in one state: how to get there from a fresh browser context."""

    page: str
    state: str
    path: str
    prepare: Callable[[Page, str, web.Application], Awaitable[None]] | None = None


async def _settle(page: Page) -> None:
    await page.wait_for_load_state("networkidle")
    await page.wait_for_timeout(400)  # let pushes and fonts land before the shot


async def _login(page: Page, username: str) -> None:
    await page.fill("#login-username", username)
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-submit")


async def clerk_signed_in(page: Page, base: str, app: web.Application) -> None:
    await _login(page, "clerk01")
    await page.wait_for_selector("#clerk-state", state="visible")


async def supervisor_signed_in(page: Page, base: str, app: web.Application) -> None:
    await _login(page, "supervisor")
    await page.wait_for_selector("#wall", state="visible")


async def app_signed_in(page: Page, base: str, app: web.Application) -> None:
    async with aiohttp.ClientSession() as http, http.post(
        base + "/api/dev/resident-token", json={"resident_id": "shot-1", "name": "张三"}
    ) as response:
        token = (await response.json())["id_token"]
    await page.goto(f"{base}/app#id_token={token}")
    await page.reload()  # the first goto only changed the fragment of the open page
    await page.wait_for_selector("#screen-pick", state="visible")


async def kiosk_provisioned(page: Page, base: str, app: web.Application) -> None:
    secret = app[keys.KIOSK_KEYS].demo_secret("XH-001")
    await page.goto(f"{base}/kiosk/XH-001#secret={secret}")
    await page.reload()  # the first goto only changed the fragment of the open page
    await page.wait_for_selector("#screen-home", state="visible")


SCENES = [
    Scene("landing", "start", "/"),
    Scene("app", "start", "/app"),
    Scene("app", "signed-in", "/app", app_signed_in),
    Scene("kiosk", "setup", "/kiosk/XH-001"),
    Scene("kiosk", "home", "/kiosk/XH-001", kiosk_provisioned),
    Scene("clerk", "login", "/clerk"),
    Scene("clerk", "console", "/clerk", clerk_signed_in),
    Scene("supervisor", "login", "/supervisor"),
    Scene("supervisor", "board", "/supervisor", supervisor_signed_in),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def main(out_dir: Path, chromium: Path, data_dir: Path) -> int:
    port = _free_port()
    settings = Settings.from_env({
        "HALL_DATA_DIR": str(data_dir), "HALL_DEMO_PASSWORD": PASSWORD,
        "HALL_DATABASE_URL": f"sqlite+aiosqlite:///{data_dir}/records.sqlite3",
        "HALL_PORT": str(port),
    })
    app = create_app(settings, demo=True)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    written = failed = 0
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
            for scene in SCENES:
                for size, viewport in SIZES.items():
                    context = await browser.new_context(
                        viewport=viewport,  # type: ignore[arg-type]
                        permissions=["camera", "microphone"], locale="zh-CN")
                    page = await context.new_page()
                    name = f"{scene.page}-{scene.state}-{size}.png"
                    try:
                        await page.goto(base + scene.path)
                        if scene.prepare is not None:
                            await scene.prepare(page, base, app)
                        await _settle(page)
                        await page.screenshot(path=str(out_dir / name), full_page=False)
                        written += 1
                        print(f"wrote {out_dir / name}")
                    except Exception as exc:  # one broken scene must not hide the others
                        failed += 1
                        print(f"FAILED {name}: {exc}", file=sys.stderr)
                    finally:
                        await context.close()
            await browser.close()
    finally:
        await runner.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"{written} screenshots in {out_dir}, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "artifacts" / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    browser_path = ensure_chromium()
    scratch = Path(tempfile.mkdtemp(prefix="hall-shots-"))
    sys.exit(asyncio.run(main(target, browser_path, scratch)))
