"""The resident's correction list after a pre-review: a printable page behind an
unguessable link (shown as a link or QR code at the kiosk)."""

from __future__ import annotations

import segno
from aiohttp import web

from rooms.errors import HallError
from rooms.prereview import template_context
from server import keys
from server.pages import PAGE_HEADERS


async def correction_list(request: web.Request) -> web.Response:
    review_id = request.match_info["review_id"]
    if not 8 <= len(review_id) <= 64:
        raise web.HTTPNotFound(text="no such correction list")
    try:
        stored = await request.app[keys.PREREVIEWS].get(review_id)
    except HallError:
        raise web.HTTPNotFound(text="no such correction list") from None
    catalog = request.app[keys.CATALOG]
    review = stored.review
    matter = catalog.matters.get(review.matter_id)
    if matter is None:
        raise web.HTTPNotFound(text="the matter of this pre-review no longer exists")
    hall = request.app[keys.HALL]
    try:
        number = (await hall.get_ticket(review.ticket_id)).number
    except HallError:
        number = review.ticket_id  # live state is gone (restart): the id still identifies it
    # The printed link and its QR come from the configured public URL, never from the
    # request's Host header (a forged Host would print someone else's address on the paper).
    # The QR is made here: template_context inserts it unescaped.
    lookup_url = f"{request.app[keys.SETTINGS].public_url}/corrections/{review_id}"
    qr_svg = segno.make(lookup_url, error="m").svg_inline(scale=4, title="扫码查看补正清单")
    context = template_context(review, matter, hall_name=catalog.hall_name,
                               ticket_number=number, lookup_url=lookup_url, qr_svg=qr_svg)
    html = request.app[keys.TEMPLATES].get_template("correction_list.html").render(**context)
    # The pages' CSP and headers (Referrer-Policy no-referrer: the URL is the key, never leak
    # it onwards); private, as the list is personal data.
    return web.Response(text=html, content_type="text/html", charset="utf-8",
                        headers={**PAGE_HEADERS, "Cache-Control": "private, no-store"})
