"""The four pages over HTTP (no browser): languages, strings, headers, vendored libraries.

What a browser does with them is in tests/test_page_*.py; here is what the server promises:
every page renders in Chinese and English with no missing string (also none used by its
scripts), carries the security headers, and loads nothing from anywhere but the hall.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.config import Settings
from server.pages import (
    I18N_DIR,
    LANG_COOKIE,
    PAGES,
    VENDOR_FILES,
    load_strings,
)

SECRET = "s" * 32
STATIC = Path(__file__).resolve().parent.parent / "web" / "static"
PAGE_URLS = {"app": "/app", "kiosk": "/kiosk/XH-001", "clerk": "/clerk",
             "supervisor": "/supervisor"}
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    app = create_app(Settings(data_dir=tmp_path, secret_key=SECRET), demo=True)
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.mark.parametrize("page", PAGES)
async def test_page_renders_chinese_by_default(client: Client, page: str) -> None:
    """A page without a language choice is Chinese, with its script and stylesheet."""
    response = await client.get(PAGE_URLS[page])
    assert response.status == 200
    html = await response.text()
    assert '<html lang="zh-CN">' in html
    assert f'src="/static/js/{page}.js"' in html
    assert f'href="/static/css/{page}.css"' in html


@pytest.mark.parametrize("page", PAGES)
async def test_english_is_chosen_and_remembered(client: Client, page: str) -> None:
    """?lang=en renders English and sets a cookie; the next visit without it stays English."""
    response = await client.get(PAGE_URLS[page] + "?lang=en")
    assert response.status == 200
    assert '<html lang="en">' in await response.text()
    assert response.cookies[LANG_COOKIE].value == "en"
    again = await client.get(PAGE_URLS[page])
    assert '<html lang="en">' in await again.text()


@pytest.mark.parametrize("page", PAGES)
async def test_page_headers_forbid_foreign_content(client: Client, page: str) -> None:
    """Pages carry a strict CSP (own origin only, no inline script) and are never cached."""
    response = await client.get(PAGE_URLS[page])
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("page", PAGES)
async def test_everything_a_page_loads_is_served_by_the_hall(client: Client, page: str) -> None:
    """Every src/href of a page is a path on the hall that answers 200 (no CDN)."""
    html = await (await client.get(PAGE_URLS[page])).text()
    assert "http://" not in html and "https://" not in html
    links = re.findall(r'(?:src|href)="(/[^"#?]*)', html)
    assert links
    for link in links:
        if link.startswith(("/app", "/kiosk", "/clerk", "/supervisor")):
            continue  # the language switch links to the page itself
        assert (await client.get(link)).status == 200, link


def _module_graph(entry: Path) -> list[Path]:
    """The ES modules a page's script imports, transitively (static imports of /static/js)."""
    seen: list[Path] = []
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.append(path)
        source = path.read_text(encoding="utf-8")
        for spec in re.findall(r'''(?:import|from)\s*\(?\s*["'](/static/js/[^"']+|\./[^"']+)["']''',
                               source):
            target = STATIC / spec.removeprefix("/static/") if spec.startswith("/") \
                else path.parent / spec
            todo.append(target.resolve())
    return seen


@pytest.mark.parametrize("page", PAGES)
def test_every_string_a_script_uses_exists_in_both_languages(page: str) -> None:
    """Each t("key") in the page's modules is a key of its strings, in zh and in en."""
    strings = load_strings(page)
    assert set(strings["zh"]) == set(strings["en"])
    modules = _module_graph(STATIC / "js" / f"{page}.js")
    assert modules, f"no script for {page}"
    missing = {}
    for module in modules:
        keys_used = set(re.findall(r'''\bt\(\s*["']([A-Za-z0-9_.]+)["']''',
                                   module.read_text(encoding="utf-8")))
        absent = sorted(k for k in keys_used if k not in strings["zh"])
        if absent:
            missing[module.name] = absent
    assert not missing, f"strings missing for {page}: {missing}"


def test_i18n_files_have_both_languages_with_the_same_keys() -> None:
    """Every web/i18n file has [zh] and [en] tables with exactly the same keys."""
    import tomllib

    for path in sorted(I18N_DIR.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        assert set(data) == {"zh", "en"}, path.name
        assert set(data["zh"]) == set(data["en"]), path.name


async def test_unknown_kiosk_point_is_not_found(client: Client) -> None:
    """A kiosk page for a service point not in the catalog is a 404."""
    assert (await client.get("/kiosk/XH-999")).status == 404


async def test_kiosk_page_names_its_service_point(client: Client) -> None:
    """The kiosk page shows the name of its service point (from the catalog)."""
    from server import keys

    point = client.app[keys.CATALOG].service_points["XH-001"]
    assert point.name in await (await client.get("/kiosk/XH-001")).text()


@pytest.mark.parametrize("name", sorted(VENDOR_FILES))
async def test_vendored_libraries_come_from_node_modules(client: Client, name: str) -> None:
    """Each allow-listed browser library is served as JavaScript from the npm install."""
    response = await client.get(f"/vendor/{name}")
    assert response.status == 200
    assert response.content_type == "text/javascript"
    assert len(await response.read()) > 1000


async def test_only_allow_listed_libraries_are_served(client: Client) -> None:
    """Nothing else under node_modules is reachable, also not by a relative path."""
    for path in ("/vendor/package.json", "/vendor/..%2Fpackage.json",
                 "/vendor/axe.min.js", "/vendor/socket.io.js"):
        assert (await client.get(path)).status == 404, path


async def test_pdf_data_files_are_served_by_plain_name(client: Client) -> None:
    """pdf.js's character maps and fonts are reachable by name, and nothing beside them."""
    cmap = await client.get("/vendor/pdfjs-cmaps/UniGB-UCS2-H.bcmap")
    assert cmap.status == 200 and len(await cmap.read()) > 100
    assert (await client.get("/vendor/pdfjs-fonts/FoxitFixed.pfb")).status == 200
    for path in ("/vendor/pdfjs-cmaps/..%2F..%2Fpackage.json", "/vendor/pdfjs-cmaps/.hidden",
                 "/vendor/elsewhere/LICENSE"):
        assert (await client.get(path)).status == 404, path


async def test_missing_libraries_answer_a_clear_503(tmp_path: Path) -> None:
    """Without the npm install the hall still runs; the library route says what is missing."""
    settings = Settings(data_dir=tmp_path, secret_key=SECRET, vendor_dir=tmp_path / "none")
    app = create_app(settings, demo=True)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/vendor/socket.io.esm.min.js")
        assert response.status == 503
        assert "npm ci" in await response.text()
        assert (await client.get("/healthz")).status == 200
