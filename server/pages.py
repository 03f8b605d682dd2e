"""The hall's four faces: the app resident page, the kiosk, the clerk console and the supervisor
wallboard, plus the browser libraries they load (served by the hall itself: no CDN).

Pages are jinja2 templates extending ``base.html``. Every text a page shows comes from
``web/i18n/<page>.toml`` (and ``common.toml``): a ``[zh]`` and an ``[en]`` table with the same
keys. Chinese is the default; ``?lang=en`` (or ``?lang=zh``) switches and is remembered in a
cookie. The strings of the chosen language are also handed to the page's script as JSON, so
server-rendered and script-rendered text come from one place.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

import web as web_assets  # the project's templates/static package, not aiohttp.web
from server import keys

I18N_DIR = Path(web_assets.__file__).parent / "i18n"
LANGUAGES = ("zh", "en")
DEFAULT_LANGUAGE = "zh"
LANG_COOKIE = "hall_lang"
PAGES = ("app", "kiosk", "clerk", "supervisor")

# Browser libraries, by the name the pages import them under, and where the npm package that
# the project's set-up installs (package.json, `npm ci`) keeps them. An allow-list: nothing
# else under node_modules is reachable.
VENDOR_FILES = {
    "socket.io.esm.min.js": "socket.io-client/dist/socket.io.esm.min.js",
    "socket.io.min.js": "socket.io-client/dist/socket.io.min.js",
    "pdf.min.mjs": "pdfjs-dist/build/pdf.min.mjs",
    "pdf.worker.min.mjs": "pdfjs-dist/build/pdf.worker.min.mjs",
}

# Folders of data files pdf.js fetches by name: character maps (Chinese PDFs whose fonts are
# not embedded) and the standard PDF fonts.
VENDOR_DIRS = {
    "pdfjs-cmaps": "pdfjs-dist/cmaps",
    "pdfjs-fonts": "pdfjs-dist/standard_fonts",
}
_VENDOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# The pages run no inline script and load nothing from elsewhere. `blob:` is for previews of
# shared files and snapshots made in the page; `data:` for the QR codes' inline images.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "media-src 'self' blob:",
    "frame-src 'self' blob:",
    "worker-src 'self' blob:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Pages carry no personal data when served (that arrives over the socket), but a kiosk's
    # page must never come back from a cache after a reset either.
    "Cache-Control": "no-store",
    # Camera, microphone and screen capture for this origin only; nothing else.
    "Permissions-Policy": "camera=(self), microphone=(self), display-capture=(self), "
                          "geolocation=(), payment=(), usb=()",
}


def default_vendor_dir() -> Path:
    """``node_modules`` at the root of the source tree the hall runs from."""
    return Path(web_assets.__file__).resolve().parent.parent / "node_modules"


@functools.cache
def load_strings(page: str) -> dict[str, dict[str, str]]:
    """``{lang: {key: text}}`` for a page, common strings included; both languages complete."""
    merged: dict[str, dict[str, str]] = {lang: {} for lang in LANGUAGES}
    for name in ("common", page):
        path = I18N_DIR / f"{name}.toml"
        if not path.exists():
            continue
        with path.open("rb") as handle:
            data = tomllib.load(handle)
        for lang in LANGUAGES:
            table = data.get(lang, {})
            if not isinstance(table, dict):
                raise ValueError(f"{path}: [{lang}] must be a table")
            merged[lang].update({str(k): str(v) for k, v in table.items()})
    missing = set(merged["zh"]) ^ set(merged["en"])
    if missing:
        raise ValueError(f"i18n for page {page!r}: keys in one language only: {sorted(missing)}")
    return merged


def choose_language(request: web.Request) -> tuple[str, bool]:
    """The language of this request, and whether it was just chosen (to remember it)."""
    asked = request.query.get("lang")
    if asked in LANGUAGES:
        return asked, True
    remembered = request.cookies.get(LANG_COOKIE)
    if remembered in LANGUAGES:
        return remembered, False
    return DEFAULT_LANGUAGE, False


class Strings(dict[str, str]):
    """A page's strings for a template: a missing key fails loudly (tests render every page)."""

    def __missing__(self, key: str) -> str:
        raise KeyError(f"no i18n string {key!r}")

    def __call__(self, key: str, **values: Any) -> str:
        text = self[key]
        return text.format(**values) if values else text


def render_page(request: web.Request, page: str, *, title_key: str = "title",
                config: Mapping[str, Any] | None = None, **context: Any) -> web.Response:
    """Render ``<page>.html`` with its strings, its script's config, and the page headers."""
    lang, chosen = choose_language(request)
    strings = Strings(load_strings(page)[lang])
    other = "en" if lang == "zh" else "zh"
    base_config = {
        "page": page,
        "lang": lang,
        "demo": request.app[keys.DEMO_PASSWORD] is not None,
        "hall_name": request.app[keys.CATALOG].hall_name,
    }
    base_config.update(config or {})
    template = request.app[keys.TEMPLATES].get_template(f"{page}.html")
    html = template.render(
        page=page,
        lang=lang,
        html_lang="zh-CN" if lang == "zh" else "en",
        t=strings,
        title=strings[title_key],
        other_lang=other,
        other_lang_url=str(request.rel_url.update_query(lang=other)),
        # Embedded in <script type="application/json">: escape "<" so that no text can close
        # the element early.
        strings_json=_json_for_script(dict(strings)),
        config_json=_json_for_script(base_config),
        **context,
    )
    response = web.Response(text=html, content_type="text/html", charset="utf-8",
                            headers=PAGE_HEADERS)
    if chosen:
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="Lax",
                            httponly=True, path="/")
    return response


def _json_for_script(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")


# -- the four pages --------------------------------------------------------------------------------


async def app_page(request: web.Request) -> web.Response:
    """The resident's page inside 随申办 (phone first)."""
    return render_page(request, "app")


async def kiosk_page(request: web.Request) -> web.Response:
    """A service point's kiosk screen; the point must exist in the catalog."""
    catalog = request.app[keys.CATALOG]
    point = catalog.service_points.get(request.match_info["point_id"])
    if point is None:
        raise web.HTTPNotFound(text="no such service point")
    street = catalog.streets.get(point.street_id)
    return render_page(request, "kiosk", point=point, street=street, config={
        "service_point": {"id": point.id, "name": point.name, "address": point.address,
                          "street": street.name if street else None},
    })


async def clerk_page(request: web.Request) -> web.Response:
    """The clerk console (desktop)."""
    return render_page(request, "clerk")


async def supervisor_page(request: web.Request) -> web.Response:
    """The supervisor wallboard (desktop or a wall screen)."""
    return render_page(request, "supervisor")


# -- vendored browser libraries -------------------------------------------------------------------


async def vendor_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    relative = VENDOR_FILES.get(name)
    if relative is None:
        raise web.HTTPNotFound(text="no such library")
    path = request.app[keys.VENDOR_DIR] / relative
    if not path.is_file():
        raise web.HTTPServiceUnavailable(
            text=f"browser library {name} is not installed: run the set-up (npm ci)")
    content_type = "text/javascript" if name.endswith((".js", ".mjs")) else None
    headers = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
    response = web.FileResponse(path, headers=headers)
    if content_type:
        response.content_type = content_type
    return response


async def vendor_data(request: web.Request) -> web.FileResponse:
    """A data file of a vendored library's folder (pdf.js cmaps and fonts), by plain name."""
    folder = VENDOR_DIRS.get(request.match_info["folder"])
    name = request.match_info["name"]
    if folder is None or not _VENDOR_NAME.match(name):
        raise web.HTTPNotFound(text="no such file")
    path = request.app[keys.VENDOR_DIR] / folder / name
    if not path.is_file():
        raise web.HTTPNotFound(text="no such file")
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400",
                                           "X-Content-Type-Options": "nosniff"})


def missing_vendor_files(vendor_dir: Path) -> list[str]:
    return [name for name, rel in VENDOR_FILES.items() if not (vendor_dir / rel).is_file()]


def setup_pages(app: web.Application) -> None:
    app.router.add_get("/app", app_page, name="app_page")
    app.router.add_get("/kiosk/{point_id}", kiosk_page, name="kiosk_page")
    app.router.add_get("/clerk", clerk_page, name="clerk_page")
    app.router.add_get("/supervisor", supervisor_page, name="supervisor_page")
    app.router.add_get("/vendor/{name}", vendor_file, name="vendor")
    app.router.add_get("/vendor/{folder}/{name}", vendor_data, name="vendor_data")
